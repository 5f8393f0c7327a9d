//! Snapshots: the last object a backup writes, naming its root tree.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::{BlobId, SnapshotId};

/// Current snapshot encoding version.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Figures recorded with a snapshot.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotStats {
    /// Bytes read from the sources.
    pub total_bytes: u64,
    /// Chunks in the sources.
    pub total_chunks: u64,
    /// Chunks not already in the repository.
    pub new_chunks: u64,
    /// Plaintext bytes of the new chunks.
    pub new_bytes: u64,
    /// Bytes written to storage (packs, index, snapshot excluded).
    pub stored_bytes: u64,
    /// Packs written.
    pub packs_written: u64,
    /// Wall-clock duration of the backup in seconds.
    pub duration_secs: f64,
}

/// The plaintext of a tombstone: a snapshot object a prune created under
/// an expired session's name, so that session can never commit
/// (FORMAT.md §10). Listings skip it.
pub const TOMBSTONE: &[u8] = b"{\"expired\":true}";

/// A snapshot object that cannot be read (damaged, of an unknown version,
/// misnamed): listings leave it out and report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamagedSnapshot {
    /// The object's name under `snapshots/`.
    pub name: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Every readable snapshot, and the snapshot objects that are not.
#[derive(Clone, Debug, Default)]
pub struct SnapshotListing {
    /// Readable snapshots, oldest first.
    pub snapshots: Vec<SnapshotEntry>,
    /// Objects that did not read, by name.
    pub damaged: Vec<DamagedSnapshot>,
}

/// A snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Encoding version.
    pub version: u32,
    /// When the backup was taken (or the time given with `--time`).
    pub time: jiff::Timestamp,
    /// Host name.
    pub hostname: String,
    /// User name.
    pub username: String,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// What was backed up (stream names, paths, database names, ...).
    pub paths: Vec<String>,
    /// Which adapter produced it (`stream`, `fs`, `postgres`, ...).
    pub source_kind: String,
    /// Adapter-specific metadata, opaque to the engine.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub source_meta: serde_json::Value,
    /// The root tree blob.
    pub tree: BlobId,
    /// Figures of the backup.
    pub stats: SnapshotStats,
    /// Program that wrote it.
    pub program_version: String,
}

impl Snapshot {
    /// Whether `other` is this snapshot or a copy of it in another
    /// repository ([`crate::Repository::copy_snapshot`] keeps these
    /// fields; ids and tree ids differ between repositories): what makes
    /// copying a set of snapshots again copy only the new ones.
    pub fn same_origin(&self, other: &Snapshot) -> bool {
        self.time == other.time
            && self.hostname == other.hostname
            && self.username == other.username
            && self.paths == other.paths
            && self.tags == other.tags
            && self.source_kind == other.source_kind
    }

    /// Serializes the snapshot (the sealed object's plaintext).
    pub fn encode(&self) -> Vec<u8> {
        #[allow(clippy::expect_used)]
        serde_json::to_vec(self).expect("snapshot serializes")
    }

    /// Parses a snapshot's plaintext.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `object`; [`Error::UnsupportedVersion`].
    pub fn decode(bytes: &[u8], object: &str) -> Result<Self> {
        let s: Snapshot = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(object, format!("snapshot does not decode: {e}")))?;
        if s.version != SNAPSHOT_VERSION {
            return Err(Error::UnsupportedVersion {
                object: object.to_string(),
                found: s.version,
                oldest: SNAPSHOT_VERSION,
                newest: SNAPSHOT_VERSION,
            });
        }
        Ok(s)
    }
}

/// A snapshot with its id.
#[derive(Clone, Debug)]
pub struct SnapshotEntry {
    /// Id (object name).
    pub id: SnapshotId,
    /// Content.
    pub snapshot: Snapshot,
}

/// Resolves a user's snapshot reference among `snapshots`: a full id, a
/// unique prefix of at least 4 hex digits, or `latest`.
///
/// # Errors
/// [`Error::SnapshotNotFound`], [`Error::AmbiguousSnapshot`],
/// [`Error::InvalidArgument`].
pub fn resolve<'a>(snapshots: &'a [SnapshotEntry], reference: &str) -> Result<&'a SnapshotEntry> {
    if reference == "latest" {
        return snapshots
            .iter()
            .max_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)))
            .ok_or_else(|| Error::SnapshotNotFound {
                reference: reference.to_string(),
            });
    }
    let ids: Vec<SnapshotId> = snapshots.iter().map(|e| e.id).collect();
    let id = match_prefix(&ids, reference)?;
    snapshots
        .iter()
        .find(|e| e.id == id)
        .ok_or_else(|| Error::Internal("matched id vanished".into()))
}

/// The one id among `ids` that a full id or unique prefix (4+ hex digits)
/// names. `latest` is not handled here: it needs the snapshots' times.
///
/// # Errors
/// [`Error::SnapshotNotFound`], [`Error::AmbiguousSnapshot`],
/// [`Error::InvalidArgument`] for a reference that is not hex or too short.
pub fn match_prefix(ids: &[SnapshotId], reference: &str) -> Result<SnapshotId> {
    let prefix = reference.to_ascii_lowercase();
    if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(format!(
            "snapshot reference {reference:?}: give `latest` or at least 4 hex digits of an id"
        )));
    }
    let mut matches = ids.iter().filter(|id| id.to_hex().starts_with(&prefix));
    let first = matches.next().ok_or_else(|| Error::SnapshotNotFound {
        reference: reference.to_string(),
    })?;
    let rest = matches.count();
    if rest > 0 {
        return Err(Error::AmbiguousSnapshot {
            prefix: reference.to_string(),
            count: rest + 1,
        });
    }
    Ok(*first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_resolve_uniquely_or_fail_clearly() {
        let mut a = [0u8; 32];
        a[0] = 0xab;
        a[1] = 0xcd;
        let mut b = a;
        b[2] = 0x01;
        let ids = [SnapshotId(a), SnapshotId(b), SnapshotId([0xff; 32])];
        assert_eq!(match_prefix(&ids, "ffff").unwrap(), ids[2]);
        assert_eq!(
            match_prefix(&ids, "ABCD01").unwrap(),
            ids[1],
            "case-insensitive"
        );
        assert_eq!(
            match_prefix(&ids, &ids[0].to_hex()).unwrap(),
            ids[0],
            "full id"
        );
        assert!(matches!(
            match_prefix(&ids, "abcd"),
            Err(Error::AmbiguousSnapshot { count: 2, .. })
        ));
        assert!(matches!(
            match_prefix(&ids, "1234"),
            Err(Error::SnapshotNotFound { .. })
        ));
        assert!(matches!(
            match_prefix(&ids, "abc"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            match_prefix(&ids, "zzzz"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            match_prefix(&[], "abcd"),
            Err(Error::SnapshotNotFound { .. })
        ));
    }
}
