//! The reading stage of a disk: its chunks in order as engine blocks
//! (new bytes, stored blobs, holes left out), read over NBD with requests
//! in flight or from a file, and the node's metadata (the extents found)
//! last.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tessera_core::Block;

use crate::image::QemuNbd;
use crate::meta::DiskMeta;
use crate::nbd::ReadPipeline;
use crate::nbd::client::Duplex;
use crate::plan::{Plan, ReadRanges};
use crate::restore::DiskMap;
use crate::{Error, Result};

/// How a disk's chunks are read.
/// What a backup did with one disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct DiskReport {
    /// The disk's name.
    pub name: String,
    /// Format read.
    pub format: String,
    /// Virtual size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// `full` or `bitmap`.
    pub mode: String,
    /// Why a full read where a bitmap was hoped for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Read requests made.
    pub reads: u64,
    /// Chunks read.
    pub chunks_read: u64,
    /// Chunks taken from the previous snapshot unread.
    pub chunks_reused: u64,
    /// Chunks stored as holes (reported zero, or read as zeros).
    pub chunks_zero: u64,
    /// Clean chunks read to check the bitmap (`--audit`).
    pub chunks_audited: u64,
    /// Offsets of chunks whose content changed although the bitmap called
    /// them clean (the first 100).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audit_mismatches: Vec<u64>,
    /// The dirty bitmap now tracking writes since this snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<String>,
}

/// The repository's blob id of some bytes.
pub(crate) type IdOf = Arc<dyn Fn(&[u8]) -> tessera_core::BlobId + Send + Sync>;

pub(crate) enum Reader {
    Nbd {
        pipeline: Box<ReadPipeline<Duplex, ReadRanges>>,
        // Stops qemu-nbd when the disk is done (after the pipeline).
        _server: Option<QemuNbd>,
    },
    File(File),
}

/// An opened disk with its plan.
pub(crate) struct Source {
    pub(crate) path: PathBuf,
    pub(crate) report: DiskReport,
    pub(crate) plan: Arc<Vec<Plan>>,
    pub(crate) base: Option<Arc<DiskMap>>,
    pub(crate) reader: Reader,
    pub(crate) bitmaps_to_drop: Vec<String>,
    /// The repository's blob id of some bytes (for `--audit`).
    pub(crate) id_of: Option<IdOf>,
}

/// A disk's blocks, in order, for [`Content::Blocks`]; its final
/// metadata (the extents found) last.
pub(crate) struct DiskBlocks {
    name: String,
    plan: Arc<Vec<Plan>>,
    base: Option<Arc<DiskMap>>,
    id_of: Option<IdOf>,
    reader: Option<Reader>,
    chunk_size: u32,
    size: u64,
    next: usize,
    extents: Vec<(u64, u64)>,
    meta: DiskMeta,
    report: Arc<Mutex<DiskReport>>,
    failed: Arc<Mutex<Option<Error>>>,
    done: bool,
}

impl DiskBlocks {
    pub(crate) fn new(
        s: Source,
        time: (i64, u32),
        report: Arc<Mutex<DiskReport>>,
        failed: Arc<Mutex<Option<Error>>>,
    ) -> Self {
        let meta = DiskMeta {
            kind: "file".into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: time,
            atime: time,
            size: s.report.size,
            extents: Vec::new(),
            chunk_size: s.report.chunk_size,
            format: s.report.format.clone(),
        };
        DiskBlocks {
            name: s.report.name.clone(),
            plan: s.plan,
            base: s.base,
            id_of: s.id_of,
            reader: Some(s.reader),
            chunk_size: s.report.chunk_size,
            size: s.report.size,
            next: 0,
            extents: Vec::new(),
            meta,
            report,
            failed,
            done: false,
        }
    }

    fn add_extent(&mut self, off: u64, len: u64) {
        match self.extents.last_mut() {
            Some(last) if last.0 + last.1 == off => last.1 += len,
            _ => self.extents.push((off, len)),
        }
    }

    fn fail(&mut self, e: Error) -> std::io::Error {
        let msg = format!("disk {}: {e}", self.name);
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(Error::Nbd(msg.clone()));
        }
        self.reader = None;
        self.done = true;
        std::io::Error::other(msg)
    }

    fn read(&mut self, off: u64, len: u32) -> Result<(Vec<u8>, bool)> {
        match self.reader.as_mut() {
            Some(Reader::Nbd { pipeline, .. }) => {
                let chunk = pipeline
                    .next_read()
                    .ok_or_else(|| Error::Nbd("the read pipeline ended early".into()))??;
                if chunk.offset != off {
                    return Err(Error::Nbd(format!(
                        "read {} arrived for {off}",
                        chunk.offset
                    )));
                }
                Ok((chunk.data, chunk.hole))
            }
            Some(Reader::File(f)) => {
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, off)
                    .map_err(|e| Error::Nbd(format!("reading {len} bytes at offset {off}: {e}")))?;
                Ok((buf, false))
            }
            None => Err(Error::Nbd("the disk is closed".into())),
        }
    }

    fn tally(&self, f: impl FnOnce(&mut DiskReport)) {
        if let Ok(mut r) = self.report.lock() {
            f(&mut r);
        }
    }
}

impl Iterator for DiskBlocks {
    type Item = std::io::Result<Block>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let cs = u64::from(self.chunk_size);
        while let Some(&p) = self.plan.get(self.next) {
            let i = self.next as u64;
            self.next += 1;
            let off = i * cs;
            let len = (self.size - off).min(cs) as u32;
            match p {
                Plan::Hole => self.tally(|r| r.chunks_zero += 1),
                Plan::Reuse => {
                    let Some(id) = self.base.as_ref().and_then(|b| b.blob_at(i)) else {
                        return Some(Err(
                            self.fail(Error::Nbd(format!("no previous chunk at offset {off}")))
                        ));
                    };
                    self.add_extent(off, u64::from(len));
                    self.tally(|r| r.chunks_reused += 1);
                    return Some(Ok(Block::Stored { id, size: len }));
                }
                Plan::Read | Plan::Audit => {
                    let (data, hole) = match self.read(off, len) {
                        Ok(r) => r,
                        Err(e) => return Some(Err(self.fail(e))),
                    };
                    self.tally(|r| {
                        r.chunks_read += 1;
                        r.bytes_read += u64::from(len);
                        r.reads += 1;
                    });
                    let zero = hole || is_zero(&data);
                    if p == Plan::Audit {
                        let was = self.base.as_ref().and_then(|b| b.blob_at(i));
                        let now = match (&self.id_of, zero) {
                            (_, true) => None,
                            (Some(id_of), false) => Some(id_of(&data)),
                            (None, false) => was,
                        };
                        self.tally(|r| {
                            r.chunks_audited += 1;
                            if now != was && r.audit_mismatches.len() < 100 {
                                r.audit_mismatches.push(off);
                            }
                        });
                    }
                    if zero {
                        self.tally(|r| r.chunks_zero += 1);
                        continue;
                    }
                    self.add_extent(off, u64::from(len));
                    return Some(Ok(Block::Data(data)));
                }
            }
        }
        // The end: close the source, then the node's real metadata.
        self.reader = None;
        self.done = true;
        let mut meta = self.meta.clone();
        meta.extents = std::mem::take(&mut self.extents);
        Some(Ok(Block::Meta(meta.to_meta())))
    }
}

/// Whether a buffer holds only zeros (vectorizes: no early exit inside a
/// block).
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let mut blocks = data.chunks_exact(256);
    blocks.all(|b| b.iter().fold(0u8, |a, &x| a | x) == 0)
        && blocks.remainder().iter().all(|&x| x == 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn zero_chunks_are_found() {
        assert!(is_zero(&[0; 1000]));
        let mut v = vec![0u8; 1000];
        v[999] = 1;
        assert!(!is_zero(&v));
        v[999] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }
}
