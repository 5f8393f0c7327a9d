//! # tessera-postgres
//!
//! PostgreSQL for Tessera: physical base backups streamed from a running
//! server, a WAL archive behind `archive_command`/`restore_command`,
//! point-in-time restores that configure recovery (and can prove it worked
//! by starting the restored cluster), WAL-aware retention and logical dumps.
//!
//! Everything is stored as ordinary snapshots of the engine, told apart by
//! their `source_kind`:
//! - [`KIND_BASE`]: a base backup; its tree holds the data directory as
//!   `pg_basebackup` streamed it ([`base`]).
//! - [`KIND_WAL`]: a batch of archived WAL files, one stream each
//!   ([`archive`]).
//! - [`KIND_DUMP`]: `pg_dump` custom-format streams, one per database
//!   ([`dump`]).
//!
//! Each base backup and WAL batch records the cluster's *system
//! identifier* (from `pg_control`): WAL names restart at
//! `000000010000000000000001` in every cluster, so one repository can hold
//! many clusters only if their archives are kept apart by it.
//!
//! ```
//! use tessera_postgres::wal::{Lsn, WalKind, WalName, segment_name};
//!
//! let lsn: Lsn = "0/3000028".parse().unwrap();
//! let name = segment_name(1, lsn, 16 << 20);
//! assert_eq!(name, "000000010000000000000003");
//! assert_eq!(WalName::parse(&name).unwrap().kind, WalKind::Segment);
//! ```

pub mod base;
pub mod daemon;
pub mod dump;
pub mod recovery;
pub mod retention;
mod tar_source;
mod tools;
pub mod wal;
pub mod wal_archive;

pub use tools::PgTools;

/// Decoders' entry points for the fuzz targets.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::tar_source::scan as tar_stream;
}

/// `source_kind` of base backup snapshots.
pub const KIND_BASE: &str = "pg-base";
/// `source_kind` of WAL archive snapshots.
pub const KIND_WAL: &str = "pg-wal";
/// `source_kind` of logical dump snapshots.
pub const KIND_DUMP: &str = "pg-dump";

/// Errors of the PostgreSQL adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The repository failed (storage, corruption, wrong password, ...).
    #[error(transparent)]
    Repository(#[from] tessera_core::Error),
    /// A bad argument or input.
    #[error("{0}")]
    InvalidArgument(String),
    /// Reading or writing a local file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A PostgreSQL program failed.
    #[error("{program} failed: {detail}")]
    Tool {
        /// The program (`pg_basebackup`, `psql`, ...).
        program: String,
        /// Exit status and what it printed.
        detail: String,
    },
    /// A WAL file of that name is archived with different content.
    #[error("WAL file {name} is already archived with different content (system {system})")]
    Conflict {
        /// The WAL file name.
        name: String,
        /// The system identifier.
        system: u64,
    },
    /// The archive has no WAL file of that name.
    #[error("WAL file {name} of system {system} is not in the archive")]
    NotArchived {
        /// The WAL file name.
        name: String,
        /// The system identifier.
        system: u64,
    },
    /// A base backup could not be completed.
    #[error("base backup incomplete: {0}")]
    Incomplete(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Serializes a system identifier as a decimal string (JSON numbers lose
/// precision above 2^53), for `#[serde(with)]`.
mod system_id_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// The snapshot `paths` entry of a cluster: groups its snapshots.
pub fn cluster_path(system: u64) -> String {
    format!("postgres:{system}")
}

#[cfg(test)]
mod golden {
    use crate::base::{BaseBackupMeta, PgFileMeta};
    use crate::wal_archive::{WalBatchMeta, WalFileMeta};

    /// FORMAT.md §11: the exact JSON of each layout, v1. Never edit the
    /// expected text; add fields at the end.
    #[test]
    fn golden_v1_postgres_metadata() {
        let base = BaseBackupMeta {
            system_id: 7_710_963_794_031_532_661,
            version_num: 150_010,
            timeline: 1,
            start_lsn: "0/1C000028".parse().unwrap(),
            stop_lsn: "0/1C000100".parse().unwrap(),
            start_wal: "00000001000000000000001C".into(),
            stop_wal: "00000001000000000000001C".into(),
            wal_segment_size: 16 << 20,
            data_checksums: true,
            start_time: "2026-11-22T12:00:14Z".parse().unwrap(),
            stop_time: "2026-11-22T12:00:15.5Z".parse().unwrap(),
        };
        let text = r#"{"system_id":"7710963794031532661","version_num":150010,"timeline":1,"start_lsn":"0/1C000028","stop_lsn":"0/1C000100","start_wal":"00000001000000000000001C","stop_wal":"00000001000000000000001C","wal_segment_size":16777216,"data_checksums":true,"start_time":"2026-11-22T12:00:14Z","stop_time":"2026-11-22T12:00:15.5Z"}"#;
        assert_eq!(serde_json::to_string(&base).unwrap(), text);
        assert_eq!(serde_json::from_str::<BaseBackupMeta>(text).unwrap(), base);

        let batch = WalBatchMeta {
            system_id: 1,
            files: vec![WalFileMeta {
                name: "00000002.history".into(),
                size: 42,
                blake3: "ab".repeat(32),
            }],
        };
        let text = format!(
            r#"{{"system_id":"1","files":[{{"name":"00000002.history","size":42,"blake3":"{}"}}]}}"#,
            "ab".repeat(32)
        );
        assert_eq!(serde_json::to_string(&batch).unwrap(), text);
        assert_eq!(serde_json::from_str::<WalBatchMeta>(&text).unwrap(), batch);

        let file = PgFileMeta {
            mode: 0o600,
            uid: 101,
            gid: 104,
            mtime: 1_795_000_000,
            link: None,
        };
        let text = r#"{"mode":384,"uid":101,"gid":104,"mtime":1795000000}"#;
        assert_eq!(serde_json::to_string(&file).unwrap(), text);
        assert_eq!(serde_json::from_str::<PgFileMeta>(text).unwrap(), file);
        let link = PgFileMeta {
            link: Some("/srv/ts".into()),
            ..file
        };
        assert!(
            serde_json::to_string(&link)
                .unwrap()
                .ends_with(r#","link":"/srv/ts"}"#)
        );
    }
}
