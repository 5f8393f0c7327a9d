//! # tessera-vm
//!
//! Virtual machine disks for Tessera: each disk is read in fixed-size
//! chunks aligned to disk offsets (default 256 KiB), extents the source
//! reports as zero are skipped unread, chunks that read as all zeros become
//! holes, and every other chunk is stored as one blob of the engine
//! (deduplicated against every file tree, database and VM in the
//! repository). A snapshot holds the full chunk list of every disk of one
//! VM (no chains), so `forget` and `prune` work per snapshot.
//!
//! Disks are read over NBD ([`nbd`]): image files of a stopped VM through
//! `qemu-nbd -r` (raw and qcow2, which also takes the image lock), or a
//! plain file or block device directly. With a persistent qcow2 dirty
//! bitmap (changed-block tracking, [`bitmap`]) only the chunks written
//! since the previous snapshot are read; the others keep that snapshot's
//! blobs.
//!
//! A VM snapshot's `source_kind` is [`KIND`]; its layout is in
//! `docs/FORMAT.md` ("VM snapshots").

pub mod backup;
pub mod bitmap;
mod blocks;
pub mod image;
pub mod live;
pub mod meta;
pub mod nbd;
mod plan;
pub mod qmp;
pub mod restore;
pub mod serve;

pub use backup::{BackupOptions, DiskReport, DiskSpec, VmBackup, backup};
pub use live::{LiveDisk, LiveOptions, backup_live};
pub use meta::{DiskMeta, VmMeta};
pub use restore::{DiskMap, restore_raw};

/// `source_kind` of VM snapshots.
pub const KIND: &str = "vm";

/// Decoders' entry points for the fuzz targets.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::nbd::fuzzing::{client_session, server_session};
    pub use crate::qmp::parse_message as qmp_message;
}

/// Errors of the VM adapter.
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
    /// An NBD server answered with an error or broke the protocol.
    #[error("{0}")]
    Nbd(String),
    /// A QEMU program failed.
    #[error("{program} failed: {detail}")]
    Tool {
        /// The program (`qemu-img`, `qemu-nbd`, ...).
        program: String,
        /// Exit status and what it printed.
        detail: String,
    },
}

impl Error {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Results of the VM adapter.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses a chunk size such as `256K`, `1M` or `65536`: a power of two
/// from 64 KiB to 4 MiB.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the value.
pub fn parse_chunk_size(text: &str) -> Result<u32> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let factor: u64 = match unit
        .to_ascii_uppercase()
        .trim_end_matches("IB")
        .trim_end_matches('B')
    {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "chunk size {text:?}: unknown unit {unit:?} (use K or M)"
            )));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("chunk size {text:?} is not a number")))?;
    let size = n.saturating_mul(factor);
    if !size.is_power_of_two() || !(64 << 10..=4 << 20).contains(&size) {
        return Err(Error::InvalidArgument(format!(
            "chunk size {text:?}: must be a power of two from 64K to 4M"
        )));
    }
    Ok(size as u32)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_parse_and_bad_ones_are_named() {
        assert_eq!(parse_chunk_size("256K").unwrap(), 256 << 10);
        assert_eq!(parse_chunk_size("4M").unwrap(), 4 << 20);
        assert_eq!(parse_chunk_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_chunk_size("65536").unwrap(), 65536);
        for bad in ["32K", "8M", "300K", "x", "1G", ""] {
            let e = parse_chunk_size(bad).unwrap_err().to_string();
            assert!(e.contains("chunk size"), "{bad}: {e}");
        }
    }
}
