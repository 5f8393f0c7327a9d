//! # tessera-core
//!
//! The engine of Tessera: a content-addressed, deduplicating, encrypted
//! backup repository over pluggable storage.
//!
//! Data path: a byte stream is cut into chunks by keyed FastCDC; each chunk
//! is named by the keyed BLAKE3 hash of its content, deduplicated against
//! the index, compressed with zstd when that helps, sealed with
//! XChaCha20-Poly1305 and appended to a pack. Packs are uploaded, then an
//! index segment describing them, then a tree blob listing the streams, then
//! the snapshot object: a crash at any point leaves a valid repository.
//! `docs/FORMAT.md` specifies every stored byte.
//!
//! ```
//! use std::sync::Arc;
//! use tessera_core::{blocking, BackupOptions, Credential, InitOptions, KdfParams, ObjectStoreBackend, StreamSource};
//!
//! # fn main() -> Result<(), tessera_core::Error> {
//! let backend = Arc::new(ObjectStoreBackend::memory());
//! let password = Credential::password("correct horse");
//! let options = InitOptions { kdf: KdfParams::insecure_fast(), ..Default::default() };
//! let repo = blocking::Repository::init(backend, &password, options)?;
//!
//! let data = b"hello, tessera".repeat(1000);
//! let summary = repo.backup(vec![StreamSource::new("greeting", std::io::Cursor::new(data.clone()))], BackupOptions::default())?;
//!
//! let mut restored = Vec::new();
//! repo.restore_stream(&summary.snapshot, "greeting", &mut restored)?;
//! assert_eq!(restored, data);
//! # Ok(()) }
//! ```

pub mod blob;
pub mod blocking;
pub mod check_record;
pub mod chunker;
pub mod config;
pub mod format;
pub mod gc;
pub mod host;
pub mod id;
pub mod index;
pub mod key;
pub mod keyring;
pub mod pack;
pub mod retention;
pub mod sealed;
pub mod session;
pub mod snapshot;
pub mod storage;
pub mod tree;

mod backup;
mod check;
mod copy;
mod error;
mod prune;
mod repair;
mod repo;
mod restore;
mod span;
mod stats;

pub use backup::{
    BackupOptions, BackupProgress, BackupSummary, Block, Content, Entry, KnownBlobs, OnStored,
    StoredTree, StreamSource, validate_stream_name,
};
pub use check::{CheckOptions, CheckReport, ReadData};
pub use chunker::ChunkerParams;
pub use config::RepoConfig;
pub use copy::{REPAIRED_TAG, RepairedSnapshot};
pub use error::{Error, Result};
pub use format::ObjectKind;
pub use id::{BlobId, KeySlotId, PackId, SnapshotId};
pub use key::{Credential, KdfParams, KeySlot, UnlockOptions};
pub use prune::{PlannedPack, PruneOptions, PruneReport, RestorePlan};
pub use repair::RepairIndexReport;
pub use repo::{InitOptions, KeyInfo, Repository};
pub use snapshot::{DamagedSnapshot, Snapshot, SnapshotEntry, SnapshotListing, SnapshotStats};
pub use stats::RepoStats;
pub use storage::{
    Backend, CachedBackend, CountingBackend, FaultPlan, FaultyBackend, ObjectStoreBackend,
    RequestCounts, RetryPolicy, RetryingBackend, StorageClass, StorageError, open_location,
};
pub use tree::{Meta, Node, NodeKind, Tree};
