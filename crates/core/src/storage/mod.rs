//! Storage backends: a narrow, async, object-safe trait keyed by object kind
//! and name, and its implementation over `object_store`.
//!
//! # Contract of [`Backend`]
//! - `put` is **create-only and atomic**: it either stores the complete
//!   object under a name that did not exist, or fails with
//!   [`StorageError::AlreadyExists`]; a reader never sees a partial object,
//!   and a crash mid-put leaves no object under that name. When `put`
//!   returns `Ok`, the object is durable (local disk: file and directory
//!   fsynced).
//! - `get`/`get_range` return exactly the stored bytes or
//!   [`StorageError::NotFound`].
//! - `list` returns every object of a kind that is completely stored, in no
//!   particular order. It may be run concurrently with puts; objects put
//!   after the listing began may or may not be included.
//! - `delete` of a missing object is not an error (idempotent).
//! - All methods may be called concurrently from many tasks.

pub mod conformance;

use std::fmt::Debug;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::Error;
use crate::format::ObjectKind;

/// Errors a backend reports; callers act on `NotFound` and `AlreadyExists`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The object does not exist.
    #[error("{object} does not exist")]
    NotFound {
        /// Object name.
        object: String,
    },
    /// A create-only put found the name taken.
    #[error("{object} already exists")]
    AlreadyExists {
        /// Object name.
        object: String,
    },
    /// Anything else (I/O, network, permissions, full disk).
    #[error("{object}: {source}")]
    Other {
        /// Object name or prefix.
        object: String,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::NotFound { object } => Error::Missing { object },
            StorageError::AlreadyExists { ref object } => Error::Storage {
                object: object.clone(),
                source: Box::new(e),
            },
            StorageError::Other { object, source } => Error::Storage { object, source },
        }
    }
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The name within its kind (the hex id; `config` for the config).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When the storage stored it, by the storage's own clock (the only
    /// clock the GC protocol consults, and only for leases).
    pub modified: Option<jiff::Timestamp>,
}

/// Where a repository's objects live. See the module docs for the contract.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + Debug + 'static {
    /// Human-readable location (path or URL), for messages.
    fn location(&self) -> &str;

    /// Stores a new object; fails with `AlreadyExists` if the name is taken.
    async fn put(&self, kind: ObjectKind, name: &str, data: Bytes) -> Result<(), StorageError>;

    /// Reads a whole object.
    async fn get(&self, kind: ObjectKind, name: &str) -> Result<Bytes, StorageError>;

    /// Reads `range` of an object.
    async fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError>;

    /// Lists the complete objects of a kind.
    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError>;

    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError>;
}

/// A [`Backend`] over any `object_store` store.
#[derive(Debug)]
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    location: String,
    /// The directory of a local store: range reads go straight to the file
    /// (see [`read_local_range`]).
    local_root: Option<std::path::PathBuf>,
}

impl ObjectStoreBackend {
    /// Wraps a store; `location` is used in messages.
    pub fn new(store: Arc<dyn ObjectStore>, location: impl Into<String>) -> Self {
        ObjectStoreBackend {
            store,
            location: location.into(),
            local_root: None,
        }
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
            std::fs::create_dir_all(dir).map_err(|e| other(Box::new(e)))?;
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
        let path = Self::path(kind, name);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.store
            .put_opts(&path, PutPayload::from_bytes(data), opts)
            .await
            .map(|_| ())
            .map_err(|e| Self::map_err(&path, e))
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

/// Reads `range` of a local file into a buffer that is not zeroed first
/// (`object_store`'s local store zeroes it, then copies into it: a page
/// fault and a memset per page of every pack read). A file shorter than
/// the range gives the bytes it has; callers check the length.
fn read_local_range(file: &FsPath, range: Range<u64>) -> std::io::Result<Bytes> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file)?;
    f.seek(SeekFrom::Start(range.start))?;
    let len = range.end - range.start;
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(usize::MAX));
    f.take(len).read_to_end(&mut buf)?;
    Ok(Bytes::from(buf))
}

/// Opens the backend a repository location names: `memory://`, `file://PATH`
/// or a plain path. With `create`, a missing local directory is created
/// (for `init`); without, it is reported as [`Error::NoRepository`].
///
/// # Errors
/// [`Error::InvalidArgument`] for an unsupported scheme; storage errors for a
/// directory that cannot be created.
pub fn open_location(location: &str, create: bool) -> Result<Arc<dyn Backend>, Error> {
    if location == "memory://" || location == "memory:" {
        return Ok(Arc::new(ObjectStoreBackend::memory()));
    }
    let path = match location.split_once("://") {
        Some(("file", rest)) => rest,
        Some((scheme, _)) => {
            return Err(Error::InvalidArgument(format!(
                "repository location {location:?}: scheme {scheme}:// is not supported by this build (use a path, file:// or memory://)"
            )));
        }
        None => location,
    };
    if path.is_empty() {
        return Err(Error::InvalidArgument("empty repository location".into()));
    }
    match ObjectStoreBackend::local(FsPath::new(path), create) {
        Ok(b) => Ok(Arc::new(b)),
        Err(StorageError::NotFound { .. }) => Err(Error::NoRepository {
            location: location.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}
