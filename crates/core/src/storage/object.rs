//! [`ObjectStoreBackend`]: the [`Backend`] over any `object_store` store
//! (local directory, memory, S3-compatible, GCS, Azure).

use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions,
    PutPayload, WriteMultipart,
};

use super::{Backend, ObjectInfo, StorageError};
use crate::format::BlobType;
use crate::format::ObjectKind;

/// Packs larger than this go up by multipart upload (remote stores only).
const MULTIPART_THRESHOLD: usize = 8 * 1024 * 1024;
/// Part size of multipart uploads (S3's minimum is 5 MiB).
const MULTIPART_PART: usize = 8 * 1024 * 1024;
/// Parts of one pack uploaded at once.
const MULTIPART_CONCURRENCY: usize = 4;

/// A storage class (tier) for data packs, as the store names it:
/// `GLACIER_IR`, `STANDARD_IA`, `DEEP_ARCHIVE` (S3), `COLDLINE` (GCS),
/// `Cool`, `Archive` (Azure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageClass(pub String);

impl std::fmt::Display for StorageClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A [`Backend`] over any `object_store` store.
#[derive(Debug)]
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    location: String,
    /// The directory of a local store: range reads go straight to the file
    /// (see [`read_local_range`]).
    local_root: Option<std::path::PathBuf>,
    /// Storage class of data packs; `None` keeps the store's default.
    data_class: Option<StorageClass>,
}

impl ObjectStoreBackend {
    /// Wraps a store; `location` is used in messages.
    pub fn new(store: Arc<dyn ObjectStore>, location: impl Into<String>) -> Self {
        ObjectStoreBackend {
            store,
            location: location.into(),
            local_root: None,
            data_class: None,
        }
    }

    /// Stores data packs in `class` (metadata stays in the default class).
    ///
    /// # Errors
    /// [`StorageError::Other`] for a local directory, which has no classes.
    pub fn with_data_class(mut self, class: StorageClass) -> Result<Self, StorageError> {
        if self.local_root.is_some() {
            return Err(StorageError::other(
                self.location.clone(),
                format!("a local directory has no storage classes (asked for {class})"),
            ));
        }
        self.data_class = Some(class);
        Ok(self)
    }

    /// The storage class data packs are written with, if not the default.
    pub fn data_class(&self) -> Option<&StorageClass> {
        self.data_class.as_ref()
    }

    /// A create-only put found the name taken. On a remote store that may
    /// be our own earlier attempt, whose reply was lost and which the
    /// store's client retried: the same bytes there mean success.
    async fn taken(&self, path: &Path, data: &Bytes) -> Result<(), StorageError> {
        let taken = StorageError::AlreadyExists {
            object: path.to_string(),
        };
        if self.local_root.is_some() {
            return Err(taken);
        }
        match self.store.get(path).await {
            Ok(r) => match r.bytes().await {
                Ok(stored) if stored == *data => Ok(()),
                _ => Err(taken),
            },
            Err(_) => Err(taken),
        }
    }

    async fn put_multipart(
        &self,
        path: &Path,
        data: Bytes,
        attributes: Attributes,
    ) -> Result<(), StorageError> {
        let opts = PutMultipartOptions {
            attributes,
            ..Default::default()
        };
        let upload = self
            .store
            .put_multipart_opts(path, opts)
            .await
            .map_err(|e| Self::map_err(path, e))?;
        let mut write = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART);
        for part in data.chunks(MULTIPART_PART) {
            write
                .wait_for_capacity(MULTIPART_CONCURRENCY)
                .await
                .map_err(|e| Self::map_err(path, e))?;
            write.put(data.slice_ref(part));
        }
        write
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| Self::map_err(path, e))
    }

    /// A backend in process memory (tests; `memory://`).
    pub fn memory() -> Self {
        Self::new(Arc::new(object_store::memory::InMemory::new()), "memory://")
    }

    /// A backend in a local directory, created if missing when `create`.
    /// Writes are fsynced (file and parent directories) before `put` returns.
    ///
    /// # Errors
    /// When the directory cannot be created or opened.
    pub fn local(dir: &FsPath, create: bool) -> Result<Self, StorageError> {
        let shown = dir.display().to_string();
        let other = |e: Box<dyn std::error::Error + Send + Sync>| StorageError::Other {
            object: shown.clone(),
            source: e,
        };
        if create {
            super::private::create_dir_all(dir).map_err(|e| other(Box::new(e)))?;
        } else if !dir.is_dir() {
            return Err(StorageError::NotFound { object: shown });
        }
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| other(Box::new(e)))?
            .with_fsync(true);
        let mut backend = Self::new(Arc::new(fs), shown);
        backend.local_root = Some(dir.to_path_buf());
        Ok(backend)
    }

    async fn put_with(
        &self,
        kind: ObjectKind,
        name: &str,
        data: Bytes,
        attributes: Attributes,
    ) -> Result<(), StorageError> {
        let path = Self::path(kind, name);
        let opts = PutOptions {
            mode: PutMode::Create,
            attributes,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(data.clone()), opts)
            .await
        {
            Ok(_) => {
                if let Some(root) = self.local_root.clone() {
                    let object = std::path::PathBuf::from(path.as_ref());
                    let _ = tokio::task::spawn_blocking(move || {
                        super::private::restrict_object(&root, &object)
                    })
                    .await;
                }
                Ok(())
            }
            Err(object_store::Error::AlreadyExists { .. }) => self.taken(&path, &data).await,
            Err(e) => Err(Self::map_err(&path, e)),
        }
    }

    fn path(kind: ObjectKind, name: &str) -> Path {
        Path::from(kind.object_name(name))
    }

    fn map_err(object: &Path, e: object_store::Error) -> StorageError {
        let object = object.to_string();
        match e {
            object_store::Error::NotFound { .. } => StorageError::NotFound { object },
            object_store::Error::AlreadyExists { .. } => StorageError::AlreadyExists { object },
            other => StorageError::Other {
                object,
                source: Box::new(other),
            },
        }
    }
}

#[async_trait::async_trait]
impl Backend for ObjectStoreBackend {
    fn location(&self) -> &str {
        &self.location
    }

    async fn put(&self, kind: ObjectKind, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.put_with(kind, name, data, Attributes::new()).await
    }

    async fn put_pack(&self, name: &str, data: Bytes, class: BlobType) -> Result<(), StorageError> {
        let mut attributes = Attributes::new();
        if let (BlobType::Data, Some(c)) = (class, &self.data_class) {
            attributes.insert(Attribute::StorageClass, c.0.clone().into());
        }
        if self.local_root.is_none() && data.len() > MULTIPART_THRESHOLD {
            // Random pack names never collide: create-only adds nothing.
            let path = Self::path(ObjectKind::Pack, name);
            return self.put_multipart(&path, data, attributes).await;
        }
        self.put_with(ObjectKind::Pack, name, data, attributes)
            .await
    }

    async fn get(&self, kind: ObjectKind, name: &str) -> Result<Bytes, StorageError> {
        let path = Self::path(kind, name);
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| Self::map_err(&path, e))?;
        result.bytes().await.map_err(|e| Self::map_err(&path, e))
    }

    async fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        let path = Self::path(kind, name);
        if range.is_empty() {
            // Stores disagree on empty ranges; answer uniformly, but still
            // report a missing object.
            self.store
                .head(&path)
                .await
                .map_err(|e| Self::map_err(&path, e))?;
            return Ok(Bytes::new());
        }
        if let Some(root) = &self.local_root {
            let file = root.join(path.as_ref());
            let shown = path.to_string();
            return tokio::task::spawn_blocking(move || read_local_range(&file, range))
                .await
                .map_err(|e| StorageError::Other {
                    object: shown.clone(),
                    source: Box::new(e),
                })?
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => StorageError::NotFound { object: shown },
                    _ => StorageError::Other {
                        object: shown,
                        source: Box::new(e),
                    },
                });
        }
        self.store
            .get_range(&path, range)
            .await
            .map_err(|e| Self::map_err(&path, e))
    }

    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        if kind == ObjectKind::Config {
            let path = Self::path(kind, "");
            return match self.store.head(&path).await {
                Ok(meta) => Ok(vec![ObjectInfo {
                    name: "config".into(),
                    size: meta.size,
                    modified: storage_time(&meta),
                }]),
                Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
                Err(e) => Err(Self::map_err(&path, e)),
            };
        }
        let prefix = Path::from(kind.dir());
        let metas: Vec<_> = self
            .store
            .list(Some(&prefix))
            .try_collect()
            .await
            .map_err(|e| Self::map_err(&prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_string();
                // The object must sit exactly where `object_name` puts it.
                (Self::path(kind, &name) == m.location).then(|| ObjectInfo {
                    name,
                    size: m.size,
                    modified: storage_time(&m),
                })
            })
            .collect())
    }

    async fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        let path = Self::path(kind, name);
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Self::map_err(&path, e)),
        }
    }
}

fn storage_time(meta: &object_store::ObjectMeta) -> Option<jiff::Timestamp> {
    let t = meta.last_modified;
    jiff::Timestamp::new(t.timestamp(), t.timestamp_subsec_nanos() as i32).ok()
}

/// Reads `range` of a local file. Ranges of at least [`MAP_AT_LEAST`]
/// that the file holds whole are memory-mapped ([`super::mmap`]); smaller
/// ones are read into a buffer that is not zeroed first (`object_store`'s
/// local store zeroes it, then copies into it). A file shorter than the
/// range gives the bytes it has; callers check the length.
fn read_local_range(file: &FsPath, range: Range<u64>) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file)?;
    let len = range.end - range.start;
    if len >= MAP_AT_LEAST && f.metadata()?.len() >= range.end {
        return super::mmap::map_range(&f, range);
    }
    f.seek(SeekFrom::Start(range.start))?;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(usize::MAX));
    f.take(len).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// Smallest range read through a memory map: below it, setting up and
/// tearing down the mapping costs more than the copy it saves.
const MAP_AT_LEAST: u64 = 256 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ranges_mapped_or_read_give_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pack");
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&file, &data).unwrap();
        // Mapped (large, not page-aligned at either end), read (small).
        for range in [4097..(2 << 20) + 5, 1..(1 << 20), 100..200, 0..(3 << 20)] {
            let got = read_local_range(&file, range.clone()).unwrap();
            assert_eq!(&got[..], &data[range.start as usize..range.end as usize]);
        }
        // A file shorter than the range gives what it has (never a map
        // past its end); the caller reports the short read.
        let end = (3u64 << 20) + MAP_AT_LEAST;
        let got = read_local_range(&file, (1 << 20)..end).unwrap();
        assert_eq!(&got[..], &data[1 << 20..]);
        assert!(read_local_range(&dir.path().join("none"), 0..10).is_err());
    }
}
