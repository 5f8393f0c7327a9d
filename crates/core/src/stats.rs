//! `stats`: sizes and counts of a repository.

use serde::Serialize;

use crate::error::Result;
use crate::format::ObjectKind;
use crate::repo::Repository;

/// Repository figures (`tessera stats --json` prints these fields).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepoStats {
    /// Number of snapshots.
    pub snapshots: usize,
    /// Sum of the sizes of every snapshot's sources.
    pub logical_bytes: u64,
    /// Bytes of all stored objects.
    pub stored_bytes: u64,
    /// Bytes of pack files.
    pub pack_bytes: u64,
    /// logical / stored (0 when empty).
    pub dedup_ratio: f64,
    /// Distinct blobs in the index.
    pub chunks: usize,
    /// Pack files.
    pub packs: usize,
    /// Index segments.
    pub index_segments: usize,
    /// Heap bytes of the in-memory index.
    pub index_memory_bytes: usize,
}

impl Repository {
    /// Computes the figures.
    ///
    /// # Errors
    /// Storage errors; corrupt snapshots or index segments.
    pub async fn stats(&self) -> Result<RepoStats> {
        let mut s = RepoStats::default();
        let backend = &self.inner.backend;
        for kind in ObjectKind::ALL {
            let objects = backend.list(kind).await?;
            let bytes: u64 = objects.iter().map(|o| o.size).sum();
            s.stored_bytes += bytes;
            match kind {
                ObjectKind::Pack => {
                    s.packs = objects.len();
                    s.pack_bytes = bytes;
                }
                ObjectKind::Index => s.index_segments = objects.len(),
                _ => {}
            }
        }
        let snapshots = self.snapshots().await?;
        s.snapshots = snapshots.len();
        s.logical_bytes = snapshots.iter().map(|e| e.snapshot.stats.total_bytes).sum();
        let (chunks, memory) = self.index_footprint().await?;
        s.chunks = chunks;
        s.index_memory_bytes = memory;
        if s.stored_bytes > 0 {
            s.dedup_ratio = s.logical_bytes as f64 / s.stored_bytes as f64;
        }
        Ok(s)
    }
}
