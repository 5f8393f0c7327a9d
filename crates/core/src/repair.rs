//! `repair index`: rebuild the index from the packs themselves.
//!
//! Every pack carries a sealed header listing its blobs, so the index is
//! redundant: when segments are lost or damaged, reading each pack's
//! header (three small range reads, never its data) gives it back. New
//! segments are stored first and the old ones removed after, so at every
//! instant each readable pack is indexed at least once (a blob listed
//! twice is harmless). A backup running meanwhile keeps its own segment:
//! only segments listed before the rebuild are removed.
//!
//! With `read_data`, every pack is read whole and each blob opened
//! (authenticated, decompressed, hashed): a blob that fails is left out
//! of the new index, so `repair snapshots` then leaves out the files that
//! need it, and a later backup of a source that still has those bytes
//! stores them again (dedup no longer finds them).

use std::collections::HashSet;

use futures::StreamExt;
use rayon::prelude::*;
use serde::Serialize;

use crate::backup::{BLOBS_PER_SEGMENT, PACKS_PER_SEGMENT};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::gc::{GcPlan, Part, RoundKind, gc_name};
use crate::id::PackId;
use crate::index::{Index, IndexPack};
use crate::pack::PackEntry;
use crate::repo::on_rayon;
use crate::repo::{Repository, poisoned};
use crate::storage::StorageError;

/// A pack as the rebuild found it: its index entry, and why each blob
/// left out of it does not open.
type ReadPack = (IndexPack, Vec<String>);

/// Pack headers read at once.
const HEADER_CONCURRENCY: usize = 8;

/// What `repair index` did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepairIndexReport {
    /// Packs whose header was read.
    pub packs: usize,
    /// Blobs they hold.
    pub blobs: usize,
    /// Packs the old index did not list (now indexed).
    pub packs_added: usize,
    /// Packs the old index listed that are gone or unreadable.
    pub packs_dropped: usize,
    /// Packs whose header cannot be read, with the reason (left out:
    /// `check` names the snapshots that lose blobs).
    pub unreadable: Vec<String>,
    /// Old segments that did not decode.
    pub damaged_segments: Vec<String>,
    /// Blobs left out because their bytes do not open (`read_data` only),
    /// each with the reason.
    pub damaged_blobs: Vec<String>,
    /// Segments written.
    pub segments_written: usize,
    /// Old segments removed.
    pub segments_removed: usize,
}

impl Repository {
    /// Rebuilds the index from the headers of every pack; with `dry_run`,
    /// only reports what it would change.
    ///
    /// It claims a GC round of its own while it works (FORMAT.md §10), so
    /// no prune sweeps meanwhile: a sweep deleting packs this rebuild
    /// indexes would leave segments naming missing packs.
    ///
    /// # Errors
    /// [`Error::GcBusy`] while a prune's round is not finished; storage
    /// errors while listing or writing. Unreadable packs and damaged
    /// segments are reported, not errors.
    pub async fn repair_index(&self, dry_run: bool) -> Result<RepairIndexReport> {
        self.repair_index_reading(dry_run, false).await
    }

    /// [`Repository::repair_index`], reading every blob with `read_data`
    /// (see the module's note): blobs that do not open are left out.
    ///
    /// # Errors
    /// As [`Repository::repair_index`].
    pub async fn repair_index_reading(
        &self,
        dry_run: bool,
        read_data: bool,
    ) -> Result<RepairIndexReport> {
        if dry_run {
            return self.rebuild_index_from_packs(true, read_data).await;
        }
        let rounds = self.list_rounds().await?;
        if let Some(r) = rounds.pending().first() {
            return Err(Error::GcBusy(format!(
                "GC round {r} is not finished: run `tessera prune` first (repair index must not race a sweep); if prune waits for write sessions of backups that are no longer running, `tessera prune --session-lease 0s` expires them"
            )));
        }
        let session = self.create_marker().await?;
        let round = rounds.highest() + 1;
        let plan = GcPlan {
            kind: RoundKind::RepairIndex,
            planner: session,
            condemned: Vec::new(),
        };
        match self
            .put_gc(&gc_name(round, Part::Plan), &plan.encode())
            .await
        {
            Ok(()) => {}
            Err(e) => {
                self.delete_marker(session).await;
                return Err(match e {
                    StorageError::AlreadyExists { .. } => Error::GcBusy(format!(
                        "a prune claimed GC round {round} at the same time: run repair index again after it"
                    )),
                    other => other.into(),
                });
            }
        }
        let result = self.rebuild_index_from_packs(false, read_data).await;
        // The round condemned nothing: close it whatever happened.
        let closed = match self
            .put_gc(&gc_name(round, Part::Done), &round.to_le_bytes())
            .await
        {
            Ok(()) | Err(StorageError::AlreadyExists { .. }) => self.forget_round(round).await,
            Err(e) => Err(e.into()),
        };
        self.delete_marker(session).await;
        let report = result?;
        closed?;
        Ok(report)
    }

    /// A pack read whole: its header, with the blobs that open, and why
    /// each other one does not.
    async fn read_pack_blobs(&self, id: PackId) -> Result<ReadPack> {
        let bytes = self
            .inner
            .backend
            .get(ObjectKind::Pack, &id.to_hex())
            .await?;
        let inner = self.inner.clone();
        on_rayon(move || {
            let object = ObjectKind::Pack.object_name(&id.to_hex());
            let (key_id, entries) = crate::pack::open_header_of(&inner.keyring, id, &bytes)?;
            let key = inner
                .keyring
                .data_key(key_id)
                .ok_or_else(|| Error::corrupt(&object, "unknown data key"))?;
            let opened: Vec<std::result::Result<PackEntry, String>> = entries
                .into_par_iter()
                .map(|e| {
                    let h = crate::blob::BlobHeader {
                        id: e.id,
                        blob_type: e.blob_type,
                        flags: e.flags,
                        raw_len: e.raw_len,
                    };
                    bytes
                        .get(e.offset as usize..(e.offset + e.stored_len) as usize)
                        .ok_or_else(|| Error::corrupt(&object, "blob outside the pack"))
                        .and_then(|sealed| {
                            crate::blob::open_with(&inner.keyring, key, &h, sealed, &object, |_| ())
                        })
                        .map(|()| e)
                        .map_err(|err| format!("blob {} in {object}: {err}", e.id))
                })
                .collect();
            let (mut blobs, mut damaged) = (Vec::new(), Vec::new());
            for r in opened {
                match r {
                    Ok(e) => blobs.push(e),
                    Err(why) => damaged.push(why),
                }
            }
            Ok((IndexPack { id, key_id, blobs }, damaged))
        })
        .await
    }

    async fn rebuild_index_from_packs(
        &self,
        dry_run: bool,
        read_data: bool,
    ) -> Result<RepairIndexReport> {
        let mut report = RepairIndexReport::default();
        let backend = &self.inner.backend;
        let old_segments = backend.list(ObjectKind::Index).await?;
        let mut indexed: HashSet<PackId> = HashSet::new();
        for info in &old_segments {
            match self.read_index_segment(&info.name).await {
                Ok((_, segment)) => indexed.extend(segment.packs.iter().map(|p| p.id)),
                Err(e) => report.damaged_segments.push(e.to_string()),
            }
        }
        let mut packs: Vec<(PackId, u64)> = Vec::new();
        for info in backend.list(ObjectKind::Pack).await? {
            match info.name.parse::<PackId>() {
                Ok(id) => packs.push((id, info.size)),
                Err(_) => report.unreadable.push(format!(
                    "{}: the name is not a pack id",
                    ObjectKind::Pack.object_name(&info.name)
                )),
            }
        }
        packs.sort_unstable();
        let headers: Vec<(PackId, Result<ReadPack>)> = futures::stream::iter(packs)
            .map(|(id, size)| async move {
                if read_data {
                    return (id, self.read_pack_blobs(id).await);
                }
                let header = self.read_pack_header(id, size).await;
                let pack =
                    header.map(|(key_id, blobs)| (IndexPack { id, key_id, blobs }, Vec::new()));
                (id, pack)
            })
            .buffered(HEADER_CONCURRENCY)
            .collect()
            .await;
        let mut found: HashSet<PackId> = HashSet::new();
        let mut segments: Vec<Vec<IndexPack>> = vec![Vec::new()];
        let mut blobs_in_last = 0;
        for (id, header) in headers {
            let pack = match header {
                Ok((p, damaged)) => {
                    report.damaged_blobs.extend(damaged);
                    p
                }
                Err(e) => {
                    report.unreadable.push(e.to_string());
                    continue;
                }
            };
            found.insert(id);
            report.packs += 1;
            report.blobs += pack.blobs.len();
            let full = segments.last().is_some_and(|s| {
                s.len() >= PACKS_PER_SEGMENT || blobs_in_last >= BLOBS_PER_SEGMENT
            });
            if full {
                segments.push(Vec::new());
                blobs_in_last = 0;
            }
            blobs_in_last += pack.blobs.len();
            if let Some(s) = segments.last_mut() {
                s.push(pack);
            }
        }
        report.packs_added = found.difference(&indexed).count();
        report.packs_dropped = indexed.difference(&found).count();
        segments.retain(|s| !s.is_empty());
        if dry_run {
            report.segments_written = segments.len();
            report.segments_removed = old_segments.len();
            return Ok(report);
        }
        let mut rebuilt = Index::new();
        for packs in segments {
            let segment = crate::index::IndexSegment { packs };
            rebuilt.add_segment(&segment)?;
            let (id, _) = self.write_index_segment(segment.packs).await?;
            rebuilt.note_segment(id);
            report.segments_written += 1;
        }
        rebuilt.finish_loading();
        for info in &old_segments {
            match backend.delete(ObjectKind::Index, &info.name).await {
                Ok(()) | Err(crate::storage::StorageError::NotFound { .. }) => {
                    report.segments_removed += 1
                }
                Err(e) => return Err(Error::from(e)),
            }
        }
        // This handle's index, if loaded, follows the rebuild.
        if let Some(lock) = self.inner.index.get() {
            *lock.write().map_err(|_| poisoned())? = rebuilt;
        }
        Ok(report)
    }
}
