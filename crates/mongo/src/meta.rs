//! What a MongoDB backup records: the snapshot's `source_meta` (JSON,
//! [`BackupMeta`]) and, beside each collection's documents, its options
//! and indexes ([`CollectionMeta`], one BSON document). FORMAT.md §13.

use mongodb::bson::{self, Document, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Version of [`BackupMeta`] and [`CollectionMeta`].
pub const MONGO_META_VERSION: u32 = 1;

/// A position in the oplog: a BSON timestamp (seconds, increment).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpTime {
    /// Seconds since the epoch.
    pub t: u32,
    /// Order within the second.
    pub i: u32,
}

impl OpTime {
    /// As a BSON timestamp.
    pub fn to_bson(self) -> Timestamp {
        Timestamp {
            time: self.t,
            increment: self.i,
        }
    }
}

impl From<Timestamp> for OpTime {
    fn from(ts: Timestamp) -> Self {
        OpTime {
            t: ts.time,
            i: ts.increment,
        }
    }
}

impl std::fmt::Display for OpTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.t, self.i)
    }
}

impl std::str::FromStr for OpTime {
    type Err = Error;
    /// `SECS:INC`.
    fn from_str(s: &str) -> Result<Self> {
        s.split_once(':')
            .and_then(|(t, i)| {
                Some(OpTime {
                    t: t.parse().ok()?,
                    i: i.parse().ok()?,
                })
            })
            .ok_or_else(|| Error::InvalidArgument(format!("{s:?}: expected SECS:INC")))
    }
}

/// The `source_meta` of a backup snapshot ([`crate::KIND_BACKUP`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupMeta {
    /// [`MONGO_META_VERSION`].
    pub version: u32,
    /// The hosts of the URI (never its credentials).
    pub hosts: Vec<String>,
    /// The replica set's name (`None`: a standalone server, whose backup
    /// is consistent per collection only).
    pub set_name: Option<String>,
    /// The newest oplog entry before the first read.
    pub start: Option<OpTime>,
    /// The point a restore reaches: the newest entry of the oplog stored
    /// with the backup (`oplog.bson`); `start` when none was written.
    pub consistent: Option<OpTime>,
    /// Entries in `oplog.bson`.
    pub oplog_entries: u64,
    /// What was read, per database.
    pub databases: Vec<DatabaseSummary>,
    /// Documents read in all.
    pub documents: u64,
    /// Bytes of BSON read in all.
    pub bytes: u64,
    /// Users stored (`databases/admin/system.users.bson`).
    pub users: u64,
    /// Roles stored (`databases/admin/system.roles.bson`).
    pub roles: u64,
    /// When the dump began.
    pub started: jiff::Timestamp,
    /// When the dump ended.
    pub finished: jiff::Timestamp,
}

/// One database of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseSummary {
    /// Its name.
    pub name: String,
    /// Its collections and views.
    pub collections: Vec<CollectionSummary>,
}

/// One collection or view of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionSummary {
    /// Its name.
    pub name: String,
    /// `collection`, `view` or `timeseries`.
    pub kind: String,
    /// Documents read.
    pub documents: u64,
    /// Bytes of BSON read.
    pub bytes: u64,
}

/// A collection's definition, stored beside its documents as
/// `<collection>.metadata.bson`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CollectionMeta {
    /// [`MONGO_META_VERSION`] (a BSON int32).
    pub v: i32,
    /// The collection's name.
    pub name: String,
    /// `collection`, `view` or `timeseries` (from `listCollections`).
    #[serde(rename = "type")]
    pub kind: String,
    /// `listCollections`' `options`: what `create` takes (capped, size,
    /// validator, collation, viewOn and pipeline, timeseries, clusteredIndex,
    /// ...).
    pub options: Document,
    /// `listIndexes`' specifications, `_id_` included.
    pub indexes: Vec<Document>,
}

impl CollectionMeta {
    /// The stored bytes.
    ///
    /// # Errors
    /// Documents BSON cannot encode (never for what a server returned).
    pub fn encode(&self) -> Result<Vec<u8>> {
        bson::to_vec(self)
            .map_err(|e| Error::InvalidArgument(format!("collection {}: {e}", self.name)))
    }

    /// Decodes stored bytes, checking the version.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `what`.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Self> {
        let meta: CollectionMeta =
            bson::from_slice(bytes).map_err(|e| Error::Corrupt(format!("{what}: {e}")))?;
        if u32::try_from(meta.v).ok() != Some(MONGO_META_VERSION) {
            return Err(Error::Corrupt(format!(
                "{what}: version {} (this build reads {MONGO_META_VERSION})",
                meta.v
            )));
        }
        if !matches!(meta.kind.as_str(), "collection" | "view" | "timeseries") {
            return Err(Error::Corrupt(format!(
                "{what}: unknown type {:?}",
                meta.kind
            )));
        }
        Ok(meta)
    }
}

impl BackupMeta {
    /// Decodes a snapshot's `source_meta`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the snapshot.
    pub fn from_value(value: &serde_json::Value, snapshot: &str) -> Result<Self> {
        let meta: BackupMeta = serde_json::from_value(value.clone())
            .map_err(|e| Error::Corrupt(format!("snapshot {snapshot}: MongoDB metadata: {e}")))?;
        if meta.version != MONGO_META_VERSION {
            return Err(Error::Corrupt(format!(
                "snapshot {snapshot}: MongoDB metadata version {} (this build reads {MONGO_META_VERSION})",
                meta.version
            )));
        }
        Ok(meta)
    }
}

/// The `source_meta` of an oplog slice snapshot ([`crate::KIND_OPLOG`]):
/// every oplog entry of a replica set after `after` up to `last`, as the
/// follower archived them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceMeta {
    /// [`MONGO_META_VERSION`].
    pub version: u32,
    /// The replica set.
    pub set_name: String,
    /// The hosts of the URI the follower read.
    pub hosts: Vec<String>,
    /// The entry archived before this slice's first (the previous slice's
    /// `last`, or a backup's `consistent`): nothing lies between. `None`
    /// for a slice after a gap.
    pub after: Option<OpTime>,
    /// Its first entry.
    pub first: OpTime,
    /// Its last entry.
    pub last: OpTime,
    /// Entries stored.
    pub entries: u64,
    /// Bytes of BSON stored.
    pub bytes: u64,
    /// The oplog had rolled over past the resume point: the entries after
    /// `last_archived` and before `first_available` are lost.
    pub gap: Option<Gap>,
    /// When the follower read the first entry.
    pub started: jiff::Timestamp,
    /// When it committed the slice.
    pub finished: jiff::Timestamp,
}

/// Entries lost between two archived ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The newest entry archived before it.
    pub last_archived: OpTime,
    /// The oldest entry the server still had.
    pub first_available: OpTime,
}

impl SliceMeta {
    /// Decodes a snapshot's `source_meta`.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the snapshot.
    pub fn from_value(value: &serde_json::Value, snapshot: &str) -> Result<Self> {
        let meta: SliceMeta = serde_json::from_value(value.clone()).map_err(|e| {
            Error::Corrupt(format!("snapshot {snapshot}: oplog slice metadata: {e}"))
        })?;
        if meta.version != MONGO_META_VERSION {
            return Err(Error::Corrupt(format!(
                "snapshot {snapshot}: oplog slice metadata version {} (this build reads {MONGO_META_VERSION})",
                meta.version
            )));
        }
        if meta.first > meta.last || meta.after.is_some_and(|a| a >= meta.first) {
            return Err(Error::Corrupt(format!(
                "snapshot {snapshot}: oplog slice from {} to {} after {:?} is out of order",
                meta.first, meta.last, meta.after
            )));
        }
        Ok(meta)
    }

    /// The position from which this slice holds every entry up to `last`:
    /// `after`, or after a gap its first entry.
    pub fn covers_from(&self) -> OpTime {
        self.after.unwrap_or(self.first)
    }
}

#[cfg(test)]
mod golden {
    use super::*;
    use mongodb::bson::doc;

    /// FORMAT.md §13: the exact bytes of each layout, v1. Never edit the
    /// expected text; add fields at the end.
    #[test]
    fn golden_v1_mongo_metadata() {
        let coll = CollectionMeta {
            v: 1,
            name: "users".into(),
            kind: "collection".into(),
            options: doc! {"capped": true, "size": 4096_i64},
            indexes: vec![doc! {"v": 2, "key": {"_id": 1}, "name": "_id_"}],
        };
        let bytes = coll.encode().unwrap();
        assert_eq!(
            hex(&bytes),
            concat!(
                "9500000010760001000000026e616d6500060000007573657273000274797065",
                "000b000000636f6c6c656374696f6e00036f7074696f6e73001c000000086361",
                "7070656400011273697a650000100000000000000004696e6465786573003600",
                "00000330002e00000010760002000000036b6579000e000000105f6964000100",
                "000000026e616d6500050000005f69645f00000000",
            )
        );
        assert_eq!(CollectionMeta::decode(&bytes, "x").unwrap(), coll);

        let meta = BackupMeta {
            version: 1,
            hosts: vec!["db1:27017".into()],
            set_name: Some("rs0".into()),
            start: Some(OpTime {
                t: 1_700_000_000,
                i: 1,
            }),
            consistent: Some(OpTime {
                t: 1_700_000_009,
                i: 3,
            }),
            oplog_entries: 7,
            databases: vec![DatabaseSummary {
                name: "app".into(),
                collections: vec![CollectionSummary {
                    name: "users".into(),
                    kind: "collection".into(),
                    documents: 2,
                    bytes: 64,
                }],
            }],
            documents: 2,
            bytes: 64,
            users: 1,
            roles: 0,
            started: "2026-12-04T10:00:00Z".parse().unwrap(),
            finished: "2026-12-04T10:00:09.5Z".parse().unwrap(),
        };
        let text = r#"{"version":1,"hosts":["db1:27017"],"set_name":"rs0","start":{"t":1700000000,"i":1},"consistent":{"t":1700000009,"i":3},"oplog_entries":7,"databases":[{"name":"app","collections":[{"name":"users","kind":"collection","documents":2,"bytes":64}]}],"documents":2,"bytes":64,"users":1,"roles":0,"started":"2026-12-04T10:00:00Z","finished":"2026-12-04T10:00:09.5Z"}"#;
        assert_eq!(serde_json::to_string(&meta).unwrap(), text);
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(BackupMeta::from_value(&value, "s").unwrap(), meta);

        let slice = SliceMeta {
            version: 1,
            set_name: "rs0".into(),
            hosts: vec!["db1:27017".into()],
            after: Some(OpTime {
                t: 1_700_000_009,
                i: 3,
            }),
            first: OpTime {
                t: 1_700_000_010,
                i: 1,
            },
            last: OpTime {
                t: 1_700_000_070,
                i: 2,
            },
            entries: 12,
            bytes: 3456,
            gap: None,
            started: "2026-12-04T10:00:10Z".parse().unwrap(),
            finished: "2026-12-04T10:01:10Z".parse().unwrap(),
        };
        let text = r#"{"version":1,"set_name":"rs0","hosts":["db1:27017"],"after":{"t":1700000009,"i":3},"first":{"t":1700000010,"i":1},"last":{"t":1700000070,"i":2},"entries":12,"bytes":3456,"gap":null,"started":"2026-12-04T10:00:10Z","finished":"2026-12-04T10:01:10Z"}"#;
        assert_eq!(serde_json::to_string(&slice).unwrap(), text);
        let value: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(SliceMeta::from_value(&value, "s").unwrap(), slice);
        let after_gap = r#"{"version":1,"set_name":"rs0","hosts":["db1:27017"],"after":null,"first":{"t":1700000500,"i":1},"last":{"t":1700000560,"i":1},"entries":3,"bytes":300,"gap":{"last_archived":{"t":1700000070,"i":2},"first_available":{"t":1700000500,"i":1}},"started":"2026-12-04T10:08:20Z","finished":"2026-12-04T10:09:20Z"}"#;
        let value: serde_json::Value = serde_json::from_str(after_gap).unwrap();
        let m = SliceMeta::from_value(&value, "s").unwrap();
        assert_eq!(m.covers_from(), m.first);
        assert_eq!(serde_json::to_string(&m).unwrap(), after_gap);
        let mut bad = slice.clone();
        bad.after = Some(bad.first);
        let e = SliceMeta::from_value(&serde_json::to_value(&bad).unwrap(), "s1").unwrap_err();
        assert!(e.to_string().contains("out of order"), "{e}");
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn bad_collection_metadata_is_named() {
        let mut m = CollectionMeta {
            v: 2,
            name: "c".into(),
            kind: "collection".into(),
            options: Document::new(),
            indexes: Vec::new(),
        };
        let e = CollectionMeta::decode(&m.encode().unwrap(), "app/c.metadata.bson").unwrap_err();
        assert!(
            e.to_string().contains("app/c.metadata.bson: version 2"),
            "{e}"
        );
        m.v = 1;
        m.kind = "table".into();
        let e = CollectionMeta::decode(&m.encode().unwrap(), "x").unwrap_err();
        assert!(e.to_string().contains("unknown type"), "{e}");
        assert!(CollectionMeta::decode(b"\x05\0\0\0", "x").is_err());
    }
}
