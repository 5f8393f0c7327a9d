//! The repository configuration object (`config`), sealed with the keyring.

use serde::{Deserialize, Serialize};

use crate::chunker::ChunkerParams;
use crate::error::{Error, Result};

/// Current config encoding version (the repository format version).
pub const CONFIG_VERSION: u32 = 1;

/// Default zstd level for blobs.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// Default target size of data packs; see `docs/DESIGN.md` ("Pack size").
pub const DEFAULT_DATA_PACK_SIZE: u32 = 16 * 1024 * 1024;
/// Default target size of tree packs.
pub const DEFAULT_TREE_PACK_SIZE: u32 = 4 * 1024 * 1024;

/// Compression settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// Always `zstd` in version 1.
    pub algorithm: CompressionAlgorithm,
    /// Level; 0 disables compression.
    pub level: i32,
}

/// Compression algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    /// Zstandard.
    Zstd,
}

/// Target pack sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackSizes {
    /// Data packs.
    pub data: u32,
    /// Tree packs.
    pub tree: u32,
}

/// Object lock (WORM) retention the repository's storage applies to every
/// new object: prune deletes nothing younger than `days` (by the storage's
/// clock), and S3 puts carry the retention headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLock {
    /// `governance` (privileged users may lift it) or `compliance` (nobody may).
    pub mode: LockMode,
    /// Days every object is retained after it is stored.
    pub days: u32,
}

/// S3 object lock mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may delete early.
    Governance,
    /// Nobody may delete before the retention date.
    Compliance,
}

impl LockMode {
    /// The value of `x-amz-object-lock-mode`.
    pub fn header_value(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// Repository parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Repository format version.
    pub version: u32,
    /// Random repository id (hex).
    pub id: String,
    /// Creation time.
    pub created: jiff::Timestamp,
    /// Chunking.
    pub chunker: ChunkerParams,
    /// Compression.
    pub compression: Compression,
    /// Pack target sizes.
    pub pack_size: PackSizes,
    /// Object lock retention, when the storage keeps objects for a time
    /// (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
}

impl RepoConfig {
    /// Serializes (the sealed object's plaintext).
    pub fn encode(&self) -> Vec<u8> {
        #[allow(clippy::expect_used)]
        serde_json::to_vec_pretty(self).expect("config serializes")
    }

    /// Parses and validates.
    ///
    /// # Errors
    /// [`Error::Corrupt`], [`Error::UnsupportedVersion`].
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let version: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt("config", format!("does not decode: {e}")))?;
        let found = version
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if found != u64::from(CONFIG_VERSION) {
            return Err(Error::UnsupportedVersion {
                object: "config".into(),
                found: u32::try_from(found).unwrap_or(u32::MAX),
                oldest: CONFIG_VERSION,
                newest: CONFIG_VERSION,
            });
        }
        let c: RepoConfig = serde_json::from_value(version)
            .map_err(|e| Error::corrupt("config", format!("does not decode: {e}")))?;
        c.chunker
            .validate()
            .map_err(|e| Error::corrupt("config", format!("chunker: {e}")))?;
        if c.pack_size.data < 1024 || c.pack_size.tree < 1024 {
            return Err(Error::corrupt("config", "pack sizes below 1 KiB"));
        }
        Ok(c)
    }
}
