//! What a VM snapshot records (`docs/FORMAT.md`, "VM snapshots"): the
//! snapshot's `source_meta` ([`VmMeta`]) and each disk node's `meta`
//! ([`DiskMeta`]), which is also valid file metadata of the fs adapter, so
//! `tessera ls` and `dump` read a disk as a sparse file.

use serde::{Deserialize, Serialize};
use tessera_core::Meta;

/// Version of [`VmMeta`].
pub const VM_META_VERSION: u32 = 1;

/// The snapshot's `source_meta`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmMeta {
    /// Layout version ([`VM_META_VERSION`]).
    pub version: u32,
    /// The VM's name (`--name`).
    pub name: String,
    /// Its disks, in the order given.
    pub disks: Vec<DiskInfo>,
    /// The configuration file stored under `config/`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// Read from a running QEMU (a point-in-time view) rather than images
    /// of a stopped VM.
    #[serde(default)]
    pub live: bool,
    /// Whether the guest's filesystems were frozen through the guest agent
    /// (live backups only; `None`: no agent answered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen: Option<bool>,
}

/// One disk of a VM snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// The disk's name (`--disk NAME=...`), also its node's name under
    /// `disks/`.
    pub name: String,
    /// Where it was read from (an image path, a device, a QEMU node).
    pub source: String,
    /// The image format it was read as (`raw`, `qcow2`).
    pub format: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Chunk size in bytes (fixed per disk).
    pub chunk_size: u32,
    /// `full` (every allocated chunk read) or `bitmap` (only the chunks a
    /// dirty bitmap marked).
    pub mode: String,
    /// Bytes read from the source.
    pub bytes_read: u64,
}

/// A disk node's `meta`: fs file metadata plus the disk's layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskMeta {
    /// Always `file`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Permission bits of a restored image (0600).
    pub mode: u32,
    /// Owner id (0).
    pub uid: u32,
    /// Group id (0).
    pub gid: u32,
    /// Backup time, seconds and nanoseconds.
    pub mtime: (i64, u32),
    /// Same as `mtime`.
    pub atime: (i64, u32),
    /// Virtual size in bytes.
    pub size: u64,
    /// Data extents `[offset, length]`, each a run of whole chunks (the
    /// last may end at `size`); the node's content is these ranges
    /// concatenated, one blob per chunk; everything else reads as zeros.
    pub extents: Vec<(u64, u64)>,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// The format the disk was read as.
    pub format: String,
}

impl DiskMeta {
    /// Parses a node's `meta` (untrusted input: errors, never panics).
    ///
    /// # Errors
    /// What does not parse.
    pub fn from_meta(meta: &Meta) -> Result<Self, String> {
        meta.parse()
            .map_err(|e| format!("disk metadata does not parse: {e}"))
    }

    /// As a node's `meta`.
    pub fn to_meta(&self) -> Meta {
        #[allow(clippy::expect_used)]
        Meta::to_json(self).expect("disk metadata serializes")
    }
}

/// Directory metadata in the fs adapter's form (for `disks/`, `config/`).
pub(crate) fn dir_meta(time: (i64, u32)) -> Meta {
    #[allow(clippy::expect_used)]
    Meta::to_json(&serde_json::json!({
        "type": "dir", "mode": 0o700, "uid": 0, "gid": 0, "mtime": time, "atime": time,
    }))
    .expect("directory metadata serializes")
}

/// File metadata in the fs adapter's form (the configuration file).
pub(crate) fn file_meta(time: (i64, u32), size: u64) -> Meta {
    #[allow(clippy::expect_used)]
    Meta::to_json(&serde_json::json!({
        "type": "file", "mode": 0o600, "uid": 0, "gid": 0, "mtime": time, "atime": time, "size": size,
    }))
    .expect("file metadata serializes")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The stored form, byte for byte (FORMAT.md, "VM snapshots").
    #[test]
    fn disk_meta_golden() {
        let m = DiskMeta {
            kind: "file".into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: (1_700_000_000, 5),
            atime: (1_700_000_000, 5),
            size: 1 << 20,
            extents: vec![(0, 262_144), (786_432, 262_144)],
            chunk_size: 262_144,
            format: "qcow2".into(),
        };
        let text = m.to_meta().as_str().to_string();
        assert_eq!(
            text,
            r#"{"type":"file","mode":384,"uid":0,"gid":0,"mtime":[1700000000,5],"atime":[1700000000,5],"size":1048576,"extents":[[0,262144],[786432,262144]],"chunk_size":262144,"format":"qcow2"}"#
        );
        assert_eq!(DiskMeta::from_meta(&m.to_meta()).unwrap(), m);
        assert!(DiskMeta::from_meta(&Meta::to_json(&"x").unwrap()).is_err());
    }
}
