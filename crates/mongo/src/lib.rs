//! # tessera-mongo
//!
//! MongoDB for Tessera: logical backups of every database and collection
//! streamed as BSON straight into the engine (no dump files on disk), with
//! collection options, indexes, users and roles beside the data; on a
//! replica set the oplog written during the dump is stored too, so a
//! restore reaches one consistent point, as `mongodump --oplog` and
//! `mongorestore --oplogReplay` do.
//!
//! A backup is an ordinary snapshot of the engine of kind [`KIND_BACKUP`]
//! (FORMAT.md §13):
//! ```text
//! databases/<db>/<collection>.bson            the documents, one after another
//! databases/<db>/<collection>.metadata.bson   options and indexes (CollectionMeta)
//! oplog.bson                                  replica sets: the entries written during the dump
//! ```
//! Each collection is one stream cut by the repository's chunker, so an
//! unchanged collection costs nothing the next time, and a changed one
//! only the chunks around its changes.
//!
//! ```
//! use tessera_mongo::names::{escape, unescape};
//!
//! assert_eq!(escape("logs/2026"), "logs%2F2026");
//! assert_eq!(unescape("logs%2F2026").as_deref(), Some("logs/2026"));
//! ```

pub mod backup;
pub mod bson_stream;
pub mod catalog;
mod client;
pub mod follow;
pub mod meta;
pub mod names;
pub mod oplog;
pub mod replay;
pub mod restore;

pub use backup::{BackupOptions, MongoBackup, backup};
pub use catalog::{Catalog, PitrPlan};
pub use client::{Connection, connect};
pub use follow::{FollowEvent, FollowOptions, FollowReport, follow};
pub use meta::{BackupMeta, CollectionMeta, OpTime, SliceMeta};
pub use restore::{RestoreOptions, RestoreReport, restore, restore_to};

/// Decoders' entry points for the fuzz targets.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::bson_stream::split_all as bson_stream;
    pub use crate::meta::{BackupMeta, CollectionMeta, SliceMeta};
    pub use crate::replay::{Change, Op, apply_diff};
    pub use mongodb::bson;
}

/// `source_kind` of backup snapshots.
pub const KIND_BACKUP: &str = "mongo";
/// `source_kind` of the oplog follower's slices.
pub const KIND_OPLOG: &str = "mongo-oplog";

/// The snapshot's directory of databases.
pub const DATABASES: &str = "databases";
/// The stream of oplog entries written during the dump.
pub const OPLOG: &str = "oplog.bson";
/// Suffix of a collection's documents.
pub const DATA_SUFFIX: &str = ".bson";
/// Suffix of a collection's definition.
pub const META_SUFFIX: &str = ".metadata.bson";

/// Errors of the MongoDB adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The repository failed (storage, corruption, wrong password, ...).
    #[error(transparent)]
    Repository(#[from] tessera_core::Error),
    /// A bad argument or input.
    #[error("{0}")]
    InvalidArgument(String),
    /// The server refused or failed a request, or went away.
    #[error("{what}: {source}")]
    Mongo {
        /// What was being done (naming server, database, collection).
        what: String,
        /// The driver's error.
        source: mongodb::error::Error,
    },
    /// Stored MongoDB data that cannot be read back.
    #[error("{0}")]
    Corrupt(String),
    /// The oplog does not reach back far enough (it rolled over).
    #[error("{0}")]
    Gap(String),
    /// A restore would overwrite data (and `--drop` was not given).
    #[error("{0}")]
    NotEmpty(String),
}

impl Error {
    pub(crate) fn mongo(what: impl Into<String>) -> impl FnOnce(mongodb::error::Error) -> Self {
        let what = what.into();
        move |source| Error::Mongo { what, source }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
