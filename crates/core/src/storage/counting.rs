//! [`CountingBackend`]: counts the requests and bytes that reach the
//! backend it wraps, per operation.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{Backend, ObjectInfo, StorageError};
use crate::format::BlobType;
use crate::format::ObjectKind;

/// Requests made through a [`CountingBackend`], failed ones included.
///
/// One `put` is one request here even when the store sends a large pack in
/// several parts; one `list` is one request even when the store pages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RequestCounts {
    /// Objects stored.
    pub put: u64,
    /// Bytes stored.
    pub put_bytes: u64,
    /// Whole-object and range reads.
    pub get: u64,
    /// Bytes read.
    pub get_bytes: u64,
    /// Listings.
    pub list: u64,
    /// Deletes.
    pub delete: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.put + self.get + self.list + self.delete
    }

    /// The requests made since `earlier`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            put: self.put - earlier.put,
            put_bytes: self.put_bytes - earlier.put_bytes,
            get: self.get - earlier.get,
            get_bytes: self.get_bytes - earlier.get_bytes,
            list: self.list - earlier.list,
            delete: self.delete - earlier.delete,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    put: AtomicU64,
    put_bytes: AtomicU64,
    get: AtomicU64,
    get_bytes: AtomicU64,
    list: AtomicU64,
    delete: AtomicU64,
}

/// Counts what passes through to `inner`; see [`CountingBackend::counts`].
#[derive(Debug)]
pub struct CountingBackend {
    inner: Arc<dyn Backend>,
    counters: Counters,
}

impl CountingBackend {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        CountingBackend {
            inner,
            counters: Counters::default(),
        }
    }

    /// The requests made so far.
    pub fn counts(&self) -> RequestCounts {
        let c = &self.counters;
        RequestCounts {
            put: c.put.load(Ordering::Relaxed),
            put_bytes: c.put_bytes.load(Ordering::Relaxed),
            get: c.get.load(Ordering::Relaxed),
            get_bytes: c.get_bytes.load(Ordering::Relaxed),
            list: c.list.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
        }
    }

    fn stored(&self, len: usize) {
        self.counters.put.fetch_add(1, Ordering::Relaxed);
        self.counters
            .put_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
    }

    fn read(&self, r: Result<Bytes, StorageError>) -> Result<Bytes, StorageError> {
        self.counters.get.fetch_add(1, Ordering::Relaxed);
        if let Ok(b) = &r {
            self.counters
                .get_bytes
                .fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        r
    }
}

#[async_trait::async_trait]
impl Backend for CountingBackend {
    fn location(&self) -> &str {
        self.inner.location()
    }

    async fn put(&self, kind: ObjectKind, name: &str, data: Bytes) -> Result<(), StorageError> {
        self.stored(data.len());
        self.inner.put(kind, name, data).await
    }

    async fn get(&self, kind: ObjectKind, name: &str) -> Result<Bytes, StorageError> {
        self.read(self.inner.get(kind, name).await)
    }

    async fn get_range(
        &self,
        kind: ObjectKind,
        name: &str,
        range: Range<u64>,
    ) -> Result<Bytes, StorageError> {
        self.read(self.inner.get_range(kind, name, range).await)
    }

    async fn list(&self, kind: ObjectKind) -> Result<Vec<ObjectInfo>, StorageError> {
        self.counters.list.fetch_add(1, Ordering::Relaxed);
        self.inner.list(kind).await
    }

    async fn delete(&self, kind: ObjectKind, name: &str) -> Result<(), StorageError> {
        self.counters.delete.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(kind, name).await
    }

    async fn put_pack(&self, name: &str, data: Bytes, class: BlobType) -> Result<(), StorageError> {
        self.stored(data.len());
        self.inner.put_pack(name, data, class).await
    }

    async fn get_pack_range(
        &self,
        name: &str,
        range: Range<u64>,
        class: BlobType,
    ) -> Result<Bytes, StorageError> {
        self.read(self.inner.get_pack_range(name, range, class).await)
    }
}
