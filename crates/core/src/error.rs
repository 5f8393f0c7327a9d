//! The one error type of the engine.
//!
//! Every variant that concerns stored data names the object (`packs/ab/ab12…`,
//! `snapshots/…`, `config`, `keys/…`) so that an operator can find it.

use std::io;

/// Errors from the engine. Non-exhaustive: new failure kinds may be added.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No key slot could be unlocked with the given password or key file.
    #[error(
        "wrong password or key file: no key slot of the repository accepts it ({tried} slot(s) tried)"
    )]
    WrongPassword {
        /// How many slots were tried.
        tried: usize,
    },
    /// No slot tried accepts the credential, and some were not tried: their
    /// KDF asks for more than the open allows.
    #[error(
        "wrong password or key file: no key slot tried accepts it ({tried} slot(s) tried); not tried, as their key derivation costs more than `key add` would choose (anyone who can write to the storage can add a slot): {skipped}. If one of them is yours, name it with --key-id"
    )]
    CostlySlotsSkipped {
        /// How many slots were tried.
        tried: usize,
        /// The slots left untried, with their costs.
        skipped: String,
    },
    /// The repository has no key slots at all.
    #[error("the repository at {location} has no key slots (keys/ is empty or missing)")]
    NoKeySlots {
        /// Repository location.
        location: String,
    },
    /// There is no repository (no `config` object) at the location.
    #[error("no repository at {location}: the object `config` does not exist")]
    NoRepository {
        /// Repository location.
        location: String,
    },
    /// `init` found an existing repository.
    #[error("a repository already exists at {location}")]
    AlreadyInitialized {
        /// Repository location.
        location: String,
    },
    /// An object uses a format version this build cannot read.
    #[error(
        "{object}: unsupported format version {found} (this build reads versions {oldest} to {newest}); upgrade tessera"
    )]
    UnsupportedVersion {
        /// Object name.
        object: String,
        /// Version found in the object.
        found: u32,
        /// Oldest version this build reads.
        oldest: u32,
        /// Newest version this build reads.
        newest: u32,
    },
    /// A stored object failed authentication or could not be decoded.
    #[error("{object} is corrupt: {reason}")]
    Corrupt {
        /// Object name, e.g. `packs/ab/ab12…` or `packs/ab/ab12… blob 1f2e…`.
        object: String,
        /// What was wrong.
        reason: String,
    },
    /// The object needed is not in the repository.
    #[error("{object} is missing from the repository")]
    Missing {
        /// Object name.
        object: String,
    },
    /// A blob is referenced but absent from the index.
    #[error("blob {blob} is not in the index (referenced by {referrer})")]
    BlobNotIndexed {
        /// Blob id (hex).
        blob: String,
        /// What referenced it.
        referrer: String,
    },
    /// A snapshot reference did not resolve.
    #[error("no snapshot matches {reference:?}")]
    SnapshotNotFound {
        /// The reference as given.
        reference: String,
    },
    /// A snapshot prefix matched more than one snapshot.
    #[error("snapshot prefix {prefix:?} is ambiguous: it matches {count} snapshots")]
    AmbiguousSnapshot {
        /// The prefix.
        prefix: String,
        /// How many matched.
        count: usize,
    },
    /// A stream name is not in the snapshot.
    #[error("the snapshot has no stream named {name:?} (its root tree {tree} lists: {available})")]
    StreamNotFound {
        /// The snapshot's root tree (short id).
        tree: String,
        /// The names it does hold, comma-separated.
        available: String,
        /// The name asked for.
        name: String,
    },
    /// A prune expired this write session (it stayed open longer than the
    /// lease); nothing it wrote is named by a snapshot.
    #[error(
        "write session {session} was expired by a concurrent prune (it stayed open longer than the lease): no snapshot was written; run the backup again"
    )]
    SessionExpired {
        /// The session (short id).
        session: String,
    },
    /// Prune found something that makes deleting unsafe; it deleted nothing.
    #[error("prune stopped, nothing was deleted: {0}")]
    PruneStopped(String),
    /// Another process's garbage-collection round stops this operation.
    #[error("{0}")]
    GcBusy(String),
    /// A key-management operation was refused.
    #[error("{0}")]
    KeyRefused(String),
    /// Invalid argument or configuration.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The storage backend failed.
    #[error("storage error on {object}: {source}")]
    Storage {
        /// Object name (or prefix for listings).
        object: String,
        /// Underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading the input or writing the output failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: io::Error,
    },
    /// An internal invariant broke (a bug); the message says which.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// [`Error::Corrupt`] naming `object` (for adapters' stored metadata too).
    pub fn corrupt(object: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Corrupt {
            object: object.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result alias used throughout the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;
