//! [`CachedBackend`]: a local, disposable copy of a repository's metadata
//! (index segments, snapshots and tree packs), so that listing snapshots,
//! `ls`, `diff`, planning a restore and an unchanged backup read nothing
//! from remote storage but listings.
//!
//! Every cached object is immutable in the repository (named by a random
//! id or by its contents), so a cached copy is never stale; it can only
//! be gone from the repository, which the next listing of its kind
//! notices (the copy is dropped). Each file ends in a BLAKE3 hash of its
//! contents: a damaged copy is dropped and read again from the store, so
//! a bad local disk is never reported as a corrupt repository. Objects
//! are still authenticated by the engine after they leave the cache.
//!
//! Writes go to the store first, then to the cache (write-through).

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{Backend, ObjectInfo, StorageError};
use crate::format::BlobType;
use crate::format::ObjectKind;

const HASH_LEN: usize = 32;

/// Caches metadata of the backend it wraps in a local directory.
#[derive(Debug)]
pub struct CachedBackend {
    inner: Arc<dyn Backend>,
    dir: PathBuf,
    /// Tree packs whose cached copy this process checked whole (or wrote):
    /// later reads take only the range they need, not the whole pack and
    /// its hash again for every tree.
    checked: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// The cache keeps whole objects of these kinds (tree packs as packs).
fn cached_kind(kind: ObjectKind) -> bool {
    matches!(
        kind,
        ObjectKind::Index | ObjectKind::Snapshot | ObjectKind::Pack
    )
}

impl CachedBackend {
    /// Caches `inner`'s metadata under `dir` (created when missing; use one
    /// directory per repository).
    pub fn new(inner: Arc<dyn Backend>, dir: impl Into<PathBuf>) -> Self {
        CachedBackend {
            inner,
            dir: dir.into(),
            checked: Default::default(),
        }
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, kind: ObjectKind, name: &str) -> Option<PathBuf> {
        // Names are hex ids; anything else is not cached.
        let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric());
        (cached_kind(kind) && plain).then(|| self.dir.join(kind.dir()).join(name))
    }

    async fn load(&self, kind: ObjectKind, name: &str) -> Option<Bytes> {
        let file = self.file(kind, name)?;
        blocking(move || {
            let mut data = std::fs::read(&file).ok()?;
            let split = data.len().checked_sub(HASH_LEN)?;
            if blake3::hash(&data[..split]).as_bytes() != &data[split..] {
                let _ = std::fs::remove_file(&file);
                return None;
            }
            data.truncate(split);
            Some(Bytes::from(data))
        })
        .await
        .flatten()
    }

    fn is_checked(&self, pack: &str) -> bool {
        self.checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(pack)
    }

    fn mark_checked(&self, pack: &str) {
        self.checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pack.to_string());
    }

    /// `range` of a cached tree pack: read alone once the copy was checked
    /// whole by this process, else the whole copy is checked first.
    async fn load_pack_range(&self, name: &str, range: Range<u64>) -> Option<Bytes> {
        if !self.is_checked(name) {
            let whole = self.load(ObjectKind::Pack, name).await?;
            self.mark_checked(name);
            return Some(slice(&whole, range));
        }
        let file = self.file(ObjectKind::Pack, name)?;
        blocking(move || {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(&file).ok()?;
            let len = f.metadata().ok()?.len().checked_sub(HASH_LEN as u64)?;
            let (start, end) = (range.start.min(len), range.end.min(len));
            f.seek(SeekFrom::Start(start)).ok()?;
            let mut buf = vec![0u8; (end.max(start) - start) as usize];
            f.read_exact(&mut buf).ok()?;
            Some(Bytes::from(buf))
        })
        .await
        .flatten()
    }

    async fn save(&self, kind: ObjectKind, name: &str, data: Bytes) {
        let Some(file) = self.file(kind, name) else {
            return;
        };
        // A cache that cannot be written costs time, never correctness.
        let _ = blocking(move || -> std::io::Result<()> {
            let dir = file.parent().unwrap_or(Path::new("."));
            super::private::create_dir_all(dir)?;
            let mut tmp = tempfile_in(dir)?;
            use std::io::Write;
            tmp.1.write_all(&data)?;
            tmp.1.write_all(blake3::hash(&data).as_bytes())?;
            std::fs::rename(&tmp.0, &file)
        })
        .await;
    }

    async fn forget(&self, kind: ObjectKind, name: &str) {
        if let Some(file) = self.file(kind, name) {
            let _ = blocking(move || std::fs::remove_file(file)).await;
        }
    }

    /// Drops cached objects of `kind` that the store no longer lists.
    async fn prune(&self, kind: ObjectKind, listed: &[ObjectInfo]) {
        if !cached_kind(kind) {
            return;
        }
        let dir = self.dir.join(kind.dir());
        let listed: std::collections::HashSet<String> =
            listed.iter().map(|o| o.name.clone()).collect();
        let _ = blocking(move || -> std::io::Result<()> {
            for e in std::fs::read_dir(&dir)? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                if !listed.contains(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            Ok(())
        })
        .await;
    }
}

/// A new temporary file in `dir` (removed by the rename, or left for the
/// next prune of the cache to drop).
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag).map_err(std::io::Error::other)?;
    let path = dir.join(format!(".tmp-{}", hex::encode(tag)));
    let file = super::private::create_new(&path)?;
    Ok((path, file))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

fn slice(data: &Bytes, range: Range<u64>) -> Bytes {
    let len = data.len() as u64;
    let start = range.start.min(len) as usize;
    let end = range.end.min(len) as usize;
    data.slice(start..end.max(start))
}

#[async_trait::async_trait]
impl Backend for CachedBackend {
    fn location(&self) -> &str {
        self.inner.location()
    }

    async fn put(&self, kind: ObjectKind, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.inner.put(kind, name, data.clone()).await?;
        if kind != ObjectKind::Pack {
            self.save(kind, name, data).await;
        }
        Ok(())
    }

    async fn get(&self, kind: ObjectKind, name: &str) -> Result<Bytes, StorageError> {
        if kind == ObjectKind::Pack {
            return self.inner.get(kind, name).await;
        }
        if let Some(hit) = self.load(kind, name).await {
            return Ok(hit);
        }
        let data = self.inner.get(kind, name).await?;
        self.save(kind, name, data.clone()).await;
        Ok(data)
    }

    async fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        self.inner.get_range(kind, name, range).await
    }

    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        let listed = self.inner.list(kind).await?;
        self.prune(kind, &listed).await;
        Ok(listed)
    }

    async fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        self.inner.delete(kind, name).await?;
        self.forget(kind, name).await;
        Ok(())
    }

    async fn put_pack(&self, name: &str, data: Bytes, class: BlobType) -> Result<(), StorageError> {
        self.inner.put_pack(name, data.clone(), class).await?;
        if class == BlobType::Tree {
            self.save(ObjectKind::Pack, name, data).await;
            self.mark_checked(name);
        }
        Ok(())
    }

    async fn get_pack_range(
        &self,
        name: &str,
        range: Range<u64>,
        class: BlobType,
    ) -> Result<Bytes, StorageError> {
        if class != BlobType::Tree {
            return self.inner.get_pack_range(name, range, class).await;
        }
        if let Some(hit) = self.load_pack_range(name, range.clone()).await {
            return Ok(hit);
        }
        // Tree packs are small and read many times: keep the whole pack.
        let whole = self.inner.get(ObjectKind::Pack, name).await?;
        let part = slice(&whole, range);
        self.save(ObjectKind::Pack, name, whole).await;
        self.mark_checked(name);
        Ok(part)
    }
}
