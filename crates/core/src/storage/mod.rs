//! Storage backends: a narrow, async, object-safe trait keyed by object kind
//! and name, its implementation over `object_store`, and decorators that
//! wrap any backend: retries ([`RetryingBackend`]), request counting
//! ([`CountingBackend`]), a local metadata cache ([`CachedBackend`]) and
//! fault injection for tests and benchmarks ([`FaultyBackend`]).
//!
//! # Contract of [`Backend`]
//! - `put` is **create-only and atomic**: it either stores the complete
//!   object under a name that did not exist, or fails with
//!   [`StorageError::AlreadyExists`]; a reader never sees a partial object,
//!   and a crash mid-put leaves no object under that name. When `put`
//!   returns `Ok`, the object is durable (local disk: file and directory
//!   fsynced). A put whose exact bytes are already stored under the name
//!   (a retry after a lost reply) may report success.
//! - `put_pack` stores a pack; its [`BlobType`] lets a backend place data
//!   packs in a cold storage class. Pack names are random 256-bit ids, so a
//!   backend may store large packs by multipart upload, which is atomic but
//!   not create-only on every store.
//! - `get`/`get_range` return exactly the stored bytes or
//!   [`StorageError::NotFound`]; `get_pack_range` likewise, and lets a cache
//!   keep tree packs.
//! - `list` returns every object of a kind that is completely stored, in no
//!   particular order. It may be run concurrently with puts; objects put
//!   after the listing began may or may not be included.
//! - `delete` of a missing object is not an error (idempotent).
//! - Errors worth retrying are [`StorageError::Transient`]; everything else
//!   is final.
//! - All methods may be called concurrently from many tasks.
//!
//! Decorators forward every method, including the provided ones, to the
//! backend they wrap.

mod cache;
pub mod conformance;
mod counting;
mod fault;
mod mmap;
mod object;
pub mod private;
mod retry;

use std::fmt::Debug;
use std::ops::Range;
use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::Error;
use crate::format::BlobType;
use crate::format::ObjectKind;

pub use cache::CachedBackend;
pub use counting::{CountingBackend, RequestCounts};
pub use fault::{FaultPlan, FaultyBackend};
pub use object::{ObjectStoreBackend, StorageClass};
pub use retry::{RetryPolicy, RetryingBackend};

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
    /// A failure worth retrying (a dropped connection, a timeout, a 5xx
    /// the store's own retries did not get past).
    #[error("{object}: {source} (transient)")]
    Transient {
        /// Object name or prefix.
        object: String,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
            StorageError::Transient { object, source } | StorageError::Other { object, source } => {
                Error::Storage { object, source }
            }
        }
    }
}

impl StorageError {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StorageError::Transient { .. })
    }

    /// An error of kind `Other` for `object`.
    pub fn other(
        object: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        StorageError::Other {
            object: object.into(),
            source: source.into(),
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

    /// Stores a new pack holding blobs of `class` (see the module docs).
    async fn put_pack(&self, name: &str, data: Bytes, class: BlobType) -> Result<(), StorageError> {
        let _ = class;
        self.put(ObjectKind::Pack, name, data).await
    }

    /// Reads `range` of a pack holding blobs of `class`.
    async fn get_pack_range(
        &self,
        name: &str,
        range: Range<u64>,
        class: BlobType,
    ) -> Result<Bytes, StorageError> {
        let _ = class;
        self.get_range(ObjectKind::Pack, name, range).await
    }
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
