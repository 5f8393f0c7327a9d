//! Prune: removes what no snapshot references, while backups go on.
//!
//! A run first finishes the rounds already planned (sweeps), then plans a
//! new one and sweeps it at once when no backup was running at that moment
//! (FORMAT.md §10 has the protocol and its safety argument):
//!
//! - **Mark**: every tree of every snapshot is walked once; referenced blobs
//!   are bits over the positions of a freshly loaded index (1 bit per blob,
//!   next to the index's 48 bytes), so memory does not grow with the
//!   number of snapshots.
//! - **Plan**: packs holding no used blob, packs no segment indexes (left
//!   by interrupted backups) and packs whose unused share reaches the
//!   repack threshold are condemned; the used blobs of the last are first
//!   copied, still sealed, into new packs (verified on the way).
//! - **Sweep**: once every session open at planning time has ended, a
//!   second mark revives any condemned pack a snapshot now needs; the rest
//!   is recorded (`gc/<r>-sweep`), index segments are rewritten without it
//!   (small segments merged), then the packs are deleted.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use rayon::prelude::*;
use serde::Serialize;

use crate::blob::{self, BlobHeader, BlobType, SealedBlob};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::gc::{GcPlan, OpenSessions, PackList, Part, RoundKind, gc_name};
use crate::id::{BlobId, DataKeyId, IndexId, PackId, SnapshotId};
use crate::index::{BlobLocation, Index, IndexPack};
use crate::pack::PackWriter;
use crate::repo::{METADATA_CONCURRENCY, Repository, on_rayon};
use crate::snapshot;
use crate::span::{MAX_GAP, spans};
use crate::storage::{ObjectInfo, StorageError};
use crate::tree::NodeKind;

/// Trees read per batch while marking.
const MARK_TREE_BATCH: usize = 4096;
/// Deletes and header reads in flight.
const DELETE_CONCURRENCY: usize = 16;
/// A segment smaller than this (stored bytes) is merged with the others
/// by a sweep: about 16,384 blobs.
const SMALL_SEGMENT: u64 = 16_384 * crate::index::SEGMENT_BLOB_LEN as u64;
/// A sweep merges small segments once there are this many.
const MERGE_AT: usize = 8;
/// Blobs per segment a sweep writes.
const MERGED_SEGMENT_BLOBS: usize = 262_144;

/// Options of [`Repository::prune`].
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// A pack whose unused share of bytes reaches this (0 to 1) has its
    /// used blobs copied to new packs and goes; 1 repacks nothing.
    pub repack_threshold: f64,
    /// Compute and report, write and delete nothing.
    pub dry_run: bool,
    /// How long a write session may stay open before a sweep expires it
    /// (storage clock).
    pub lease: jiff::SignedDuration,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            repack_threshold: 0.5,
            dry_run: false,
            lease: crate::gc::DEFAULT_LEASE,
        }
    }
}

/// What a prune found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    /// Nothing was written or deleted.
    pub dry_run: bool,
    /// Rounds swept by this run (their packs are gone).
    pub rounds_swept: Vec<u64>,
    /// The round planned by this run, if any.
    pub round_planned: Option<u64>,
    /// A round that waits for write sessions to end before it can be
    /// swept (run prune again later).
    pub round_waiting: Option<u64>,
    /// The sessions it waits for (short ids).
    pub waiting_for: Vec<String>,
    /// Sessions expired by this run (open longer than the lease).
    pub sessions_expired: Vec<String>,
    /// Snapshots marked.
    pub snapshots: usize,
    /// Blobs in the index.
    pub blobs: usize,
    /// Blobs some snapshot uses.
    pub blobs_used: usize,
    /// Packs stored.
    pub packs: usize,
    /// Bytes in packs.
    pub pack_bytes: u64,
    /// Packs condemned because no blob in them is used.
    pub packs_unused: usize,
    /// Packs condemned because no index segment lists them.
    pub packs_unindexed: usize,
    /// Packs repacked (used blobs copied out, then condemned).
    pub packs_repacked: usize,
    /// Blobs copied into new packs.
    pub blobs_repacked: usize,
    /// Bytes copied into new packs.
    pub bytes_repacked: u64,
    /// Bytes the planned round will free (pack bytes condemned less the
    /// bytes repacked).
    pub bytes_to_free: u64,
    /// Condemned packs kept because a snapshot committed since needs them.
    pub packs_revived: usize,
    /// Packs deleted by this run.
    pub packs_deleted: usize,
    /// Bytes freed by this run.
    pub bytes_freed: u64,
    /// Unused packs left alone because object lock retains them.
    pub packs_locked: usize,
    /// Their bytes.
    pub bytes_locked: u64,
    /// When the last of them may be deleted.
    pub locked_until: Option<jiff::Timestamp>,
    /// Packs whose delete the storage refused (left for a later prune,
    /// which finds them unindexed), with the first error.
    pub delete_refused: usize,
    /// The first refusal.
    pub delete_error: Option<String>,
    /// Index segments before and after this run's sweeps.
    pub segments_before: usize,
    /// Index segments after.
    pub segments_after: usize,
}

impl PruneReport {
    /// Adds a sweep's outcome; whether the round was swept.
    fn record(&mut self, round: u64, sweep: Sweep) -> bool {
        match sweep {
            Sweep::Done { deleted, freed } => {
                self.rounds_swept.push(round);
                self.packs_deleted += deleted;
                self.bytes_freed += freed;
                true
            }
            Sweep::Waiting(sessions) => {
                self.round_waiting = Some(round);
                self.waiting_for = sessions.iter().map(SnapshotId::short).collect();
                false
            }
        }
    }
}

/// One bit per committed index position: used or not.
struct Marks(Vec<u64>);

impl Marks {
    fn new(len: usize) -> Self {
        Marks(vec![0; len.div_ceil(64)])
    }

    /// Sets the bit; whether it was clear.
    fn set(&mut self, pos: usize) -> bool {
        let Some(word) = self.0.get_mut(pos / 64) else {
            return false;
        };
        let bit = 1u64 << (pos % 64);
        let was_clear = *word & bit == 0;
        *word |= bit;
        was_clear
    }

    fn get(&self, pos: usize) -> bool {
        self.0
            .get(pos / 64)
            .is_some_and(|w| w & (1u64 << (pos % 64)) != 0)
    }

    fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
}

/// How much of a pack snapshots use.
#[derive(Clone, Copy, Default)]
struct PackUse {
    used_bytes: u64,
    used_blobs: u32,
    /// Blobs the index attributes to the pack (used or not).
    blobs: u32,
}

/// Bytes of a pack that are no blob: preamble, sealed header, trailer.
fn pack_overhead(blobs: u32) -> u64 {
    (crate::format::PREAMBLE_LEN + crate::pack::HEADER_FIXED_LEN) as u64
        + u64::from(blobs) * crate::pack::HEADER_ENTRY_LEN as u64
}

/// What the sweep of a round came to.
enum Sweep {
    Done { deleted: usize, freed: u64 },
    Waiting(Vec<SnapshotId>),
}

/// What a restore reads: see [`Repository::restore_plan`].
#[derive(Clone, Debug, Serialize)]
pub struct RestorePlan {
    /// Sealed bytes read from data packs.
    pub bytes: u64,
    /// The data packs, by object name.
    pub packs: Vec<PlannedPack>,
}

/// One data pack a restore reads.
#[derive(Clone, Debug, Serialize)]
pub struct PlannedPack {
    /// Object name (`packs/xx/<id>`), as the storage names it under the
    /// repository's prefix.
    pub object: String,
    /// Blobs read from it.
    pub blobs: usize,
    /// Sealed bytes read from it.
    pub bytes: u64,
}

/// Packs that object lock retains, and until when.
#[derive(Default)]
struct LockCheck {
    until: HashMap<PackId, jiff::Timestamp>,
}

impl LockCheck {
    /// Whether the pack is retained; if so it is counted in the report
    /// (and left for a prune after its retention ends).
    fn holds(&self, id: &PackId, size: u64, report: &mut PruneReport) -> bool {
        let Some(until) = self.until.get(id) else {
            return false;
        };
        report.packs_locked += 1;
        report.bytes_locked += size;
        report.locked_until = report.locked_until.max(Some(*until));
        true
    }
}

fn stopped(reason: impl std::fmt::Display) -> Error {
    Error::PruneStopped(reason.to_string())
}

impl Repository {
    /// Finishes the GC rounds already planned, then plans a new round and
    /// sweeps it when no write session is in its way (see the module
    /// docs). Backups may run meanwhile, on this host or others.
    ///
    /// # Errors
    /// [`Error::PruneStopped`] when something the snapshots use is missing
    /// or unreadable (nothing is deleted then); [`Error::GcBusy`] when
    /// another prune planned the same round first; storage errors.
    pub async fn prune(&self, options: &PruneOptions) -> Result<PruneReport> {
        if !(0.0..=1.0).contains(&options.repack_threshold) {
            return Err(Error::InvalidArgument(format!(
                "repack threshold {} is not between 0 and 1",
                options.repack_threshold
            )));
        }
        let mut report = PruneReport {
            dry_run: options.dry_run,
            ..Default::default()
        };
        report.segments_before = self.inner.backend.list(ObjectKind::Index).await?.len();
        let rounds = self.list_rounds().await?;
        if !options.dry_run {
            for r in rounds.plans.intersection(&rounds.dones) {
                self.forget_round(*r).await?;
            }
            for r in rounds.pending() {
                let sweep = self.sweep(r, options, &mut report).await?;
                if !report.record(r, sweep) {
                    report.segments_after = self.inner.backend.list(ObjectKind::Index).await?.len();
                    return Ok(report);
                }
            }
        } else if let Some(r) = rounds.pending().first() {
            report.round_waiting = Some(*r);
        }
        let round = rounds.highest() + 1;
        if self.plan(round, options, &mut report).await? {
            report.round_planned = Some(round);
            let sweep = self.sweep(round, options, &mut report).await?;
            report.record(round, sweep);
        }
        report.segments_after = self.inner.backend.list(ObjectKind::Index).await?.len();
        Ok(report)
    }

    /// Loads every index segment into a fresh index, keeping of duplicated
    /// blobs a copy outside `shunned`.
    async fn load_index(&self, shunned: &HashSet<PackId>) -> Result<Index> {
        let mut index = self.load_segments().await?;
        index.finish_loading_preferring(|p| shunned.contains(p));
        Ok(index)
    }

    /// Every snapshot (tombstones skipped). Read *before* the index is
    /// loaded: a snapshot is stored after its index segments, so every
    /// blob of a snapshot listed here is in an index loaded afterwards.
    async fn read_all_snapshots(&self) -> Result<Vec<snapshot::Snapshot>> {
        let names = self.inner.backend.list(ObjectKind::Snapshot).await?;
        let snapshots: Vec<Option<snapshot::Snapshot>> = futures::stream::iter(names)
            .map(|info| async move {
                let id: SnapshotId = info.name.parse().map_err(|_| {
                    stopped(format!(
                        "{} is not named by a hex id: remove it or run check",
                        ObjectKind::Snapshot.object_name(&info.name)
                    ))
                })?;
                match self.read_snapshot_object(id).await {
                    // Forgotten since the listing: it needs nothing.
                    Err(Error::Missing { .. }) => return Ok(None),
                    other => other,
                }
                .map_err(|e| {
                    stopped(format!(
                        "{e}; prune cannot know what it references: forget it (tessera forget {}) or restore the object",
                        id.short()
                    ))
                })
            })
            .buffer_unordered(METADATA_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(snapshots.into_iter().flatten().collect())
    }

    /// Marks every blob `snapshots` use (read before `index` was loaded).
    async fn mark(&self, index: &Index, snapshots: &[snapshot::Snapshot]) -> Result<Marks> {
        let mut marks = Marks::new(index.committed_len());
        let mut mark = |id: &BlobId, what: &str| -> Result<bool> {
            let pos = index.position(id).ok_or_else(|| {
                stopped(format!(
                    "{what} {id}, used by a snapshot, is in no index segment: run check, then repair index"
                ))
            })?;
            Ok(marks.set(pos))
        };
        let mut level: Vec<BlobId> = Vec::new();
        for s in snapshots {
            if mark(&s.tree, "tree")? {
                level.push(s.tree);
            }
        }
        while !level.is_empty() {
            let mut next = Vec::new();
            for batch in level.chunks(MARK_TREE_BATCH) {
                let located: Vec<(BlobId, BlobLocation)> = batch
                    .iter()
                    .filter_map(|id| index.lookup(id).map(|l| (*id, l)))
                    .collect();
                let listings = self
                    .read_located_trees(located, "prune", |tree| {
                        let mut subtrees = Vec::new();
                        let mut blobs = Vec::new();
                        for node in tree.nodes {
                            match node.kind {
                                NodeKind::Dir { subtree } => subtrees.push(subtree),
                                NodeKind::Stream { content } => blobs.extend(content),
                                NodeKind::Leaf => {}
                            }
                        }
                        Ok((subtrees, blobs))
                    })
                    .await
                    .map_err(|e| stopped(format!("a tree cannot be read: {e}")))?;
                for (subtrees, blobs) in listings.into_values() {
                    for b in &blobs {
                        mark(b, "blob")?;
                    }
                    for t in subtrees {
                        if mark(&t, "tree")? {
                            next.push(t);
                        }
                    }
                }
            }
            level = next;
        }
        Ok(marks)
    }

    /// The data packs a full restore of `snapshot` reads, with the bytes it
    /// reads from each: what must be thawed first when data packs are in
    /// an archive storage class. Reads trees only (hot metadata).
    ///
    /// # Errors
    /// Storage errors; a tree or blob the index lacks.
    pub async fn restore_plan(&self, snapshot: &snapshot::Snapshot) -> Result<RestorePlan> {
        let index = self.load_index(&HashSet::new()).await?;
        let marks = self.mark(&index, std::slice::from_ref(snapshot)).await?;
        let mut per_pack: HashMap<u32, (usize, u64)> = HashMap::new();
        for e in index.entries() {
            if e.entry.blob_type == BlobType::Data && marks.get(e.position) {
                let p = per_pack.entry(e.pack).or_default();
                p.0 += 1;
                p.1 += u64::from(e.entry.stored_len);
            }
        }
        let mut packs: Vec<PlannedPack> = per_pack
            .into_iter()
            .filter_map(|(n, (blobs, bytes))| {
                let id = index.pack_id(n)?;
                Some(PlannedPack {
                    object: ObjectKind::Pack.object_name(&id.to_hex()),
                    blobs,
                    bytes,
                })
            })
            .collect();
        packs.sort_by(|a, b| a.object.cmp(&b.object));
        Ok(RestorePlan {
            bytes: packs.iter().map(|p| p.bytes).sum(),
            packs,
        })
    }

    /// Plans round `round`: mark, choose, repack, then store the plan and
    /// the sessions open after it. Returns whether a round was planned.
    async fn plan(
        &self,
        round: u64,
        options: &PruneOptions,
        report: &mut PruneReport,
    ) -> Result<bool> {
        // Repacking writes packs: a session, like any writer's.
        let session = if options.dry_run {
            None
        } else {
            Some(self.create_marker().await?)
        };
        let planned = self.plan_in_session(round, options, report, session).await;
        if let Some(sid) = session {
            self.delete_marker(sid).await;
        }
        planned
    }

    async fn plan_in_session(
        &self,
        round: u64,
        options: &PruneOptions,
        report: &mut PruneReport,
        session: Option<SnapshotId>,
    ) -> Result<bool> {
        // Packs are listed before anything is repacked, so the new packs
        // are never taken for unindexed ones.
        let listed = self.inner.backend.list(ObjectKind::Pack).await?;
        let locked = self.lock_check(&listed).await?;
        let stored: HashMap<PackId, u64> = listed
            .into_iter()
            .filter_map(|o| Some((o.name.parse().ok()?, o.size)))
            .collect();
        let snapshots = self.read_all_snapshots().await?;
        let index = self.load_index(&HashSet::new()).await?;
        // Listed again: a pack indexed now but absent from both listings
        // is missing (one written since the first listing is not).
        let stored_now: HashSet<PackId> = self
            .inner
            .backend
            .list(ObjectKind::Pack)
            .await?
            .into_iter()
            .filter_map(|o| o.name.parse().ok())
            .collect();
        let marks = self.mark(&index, &snapshots).await?;
        report.snapshots = snapshots.len();
        report.blobs = index.committed_len();
        report.blobs_used = marks.count();
        report.packs = stored.len();
        report.pack_bytes = stored.values().sum();

        let mut uses = vec![PackUse::default(); index.pack_count()];
        for e in index.entries() {
            if let Some(u) = uses.get_mut(e.pack as usize) {
                u.blobs += 1;
                if marks.get(e.position) {
                    u.used_bytes += u64::from(e.entry.stored_len);
                    u.used_blobs += 1;
                }
            }
        }
        let mut condemned: Vec<PackId> = Vec::new();
        let mut repack: HashSet<u32> = HashSet::new();
        for (n, u) in uses.iter().enumerate() {
            let Some(id) = index.pack_id(n as u32) else {
                continue;
            };
            let size = stored.get(&id).copied();
            if size.is_none() && stored_now.contains(&id) {
                // Written after the first listing: not this round's business.
                continue;
            }
            match size {
                None if u.used_blobs > 0 => {
                    return Err(stopped(format!(
                        "{} is missing but holds {} blob(s) snapshots use: run check, then repair index and repair snapshots",
                        ObjectKind::Pack.object_name(&id.to_hex()),
                        u.used_blobs
                    )));
                }
                // Missing and unused: its index entries go with the round.
                None => condemned.push(id),
                Some(size) if u.used_blobs == 0 && locked.holds(&id, size, report) => {}
                Some(size) if u.used_blobs == 0 => {
                    report.packs_unused += 1;
                    report.bytes_to_free += size;
                    condemned.push(id);
                }
                Some(size) => {
                    // Unused blob bytes, against the blob bytes: the
                    // header of a small pack is not garbage.
                    let blob_bytes = size.saturating_sub(pack_overhead(u.blobs));
                    let unused =
                        blob_bytes.saturating_sub(u.used_bytes) as f64 / blob_bytes.max(1) as f64;
                    if unused >= options.repack_threshold
                        && options.repack_threshold < 1.0
                        && !locked.holds(&id, size, report)
                    {
                        repack.insert(n as u32);
                        report.packs_repacked += 1;
                        report.bytes_to_free += size;
                        condemned.push(id);
                    }
                }
            }
        }
        for (id, size) in &stored {
            if index.pack_number_of(id).is_none() && !locked.holds(id, *size, report) {
                report.packs_unindexed += 1;
                report.bytes_to_free += size;
                condemned.push(*id);
            }
        }
        let small_segments = self
            .inner
            .backend
            .list(ObjectKind::Index)
            .await?
            .iter()
            .filter(|o| o.size < SMALL_SEGMENT)
            .count();
        if condemned.is_empty() && small_segments < MERGE_AT {
            return Ok(false);
        }
        if !repack.is_empty() {
            let (blobs, bytes) = if options.dry_run {
                let live = index
                    .entries()
                    .filter(|e| repack.contains(&e.pack) && marks.get(e.position));
                live.fold((0, 0), |(n, b), e| {
                    (n + 1, b + u64::from(e.entry.stored_len))
                })
            } else {
                self.repack(&index, &marks, &repack).await?
            };
            report.blobs_repacked = blobs;
            report.bytes_repacked = bytes;
            report.bytes_to_free = report.bytes_to_free.saturating_sub(bytes);
        }
        drop(index);
        let Some(session) = session else {
            return Ok(false);
        };
        condemned.sort_unstable();
        let plan = GcPlan {
            kind: RoundKind::Prune,
            planner: session,
            condemned,
        };
        match self
            .put_gc(&gc_name(round, Part::Plan), &plan.encode())
            .await
        {
            Ok(()) => {}
            Err(StorageError::AlreadyExists { .. }) => {
                return Err(Error::GcBusy(format!(
                    "another prune planned GC round {round} at the same time; this one deleted nothing (run prune again later)"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        self.record_open_sessions(round, Some(session)).await?;
        Ok(true)
    }

    /// Copies the used blobs of the packs numbered `repack`, verified and
    /// still sealed, into new packs with their index segment. Returns the
    /// blobs and bytes copied.
    async fn repack(
        &self,
        index: &Index,
        marks: &Marks,
        repack: &HashSet<u32>,
    ) -> Result<(usize, u64)> {
        let mut located: Vec<(BlobId, BlobLocation)> = Vec::new();
        for e in index.entries() {
            if !(repack.contains(&e.pack) && marks.get(e.position)) {
                continue;
            }
            let (Some(pack), Some(key_id)) = (index.pack_id(e.pack), index.pack_key_id(e.pack))
            else {
                continue;
            };
            located.push((
                e.entry.id,
                BlobLocation {
                    pack,
                    key_id,
                    blob_type: e.entry.blob_type,
                    flags: e.entry.flags,
                    offset: e.entry.offset,
                    stored_len: e.entry.stored_len,
                    raw_len: e.entry.raw_len,
                },
            ));
        }
        located.sort_unstable_by_key(|(_, l)| (l.pack, l.offset));
        let mut writers: HashMap<(BlobType, DataKeyId), PackWriter> = HashMap::new();
        let mut new_packs: Vec<IndexPack> = Vec::new();
        let (mut blobs, mut bytes) = (0usize, 0u64);
        for span in spans(located, MAX_GAP) {
            let data = self.read_span(&span).await?;
            let inner = self.inner.clone();
            let object = ObjectKind::Pack.object_name(&span.pack.to_hex());
            // Verify every blob (authenticate, decompress, hash) before its
            // sealed bytes are copied: a damaged blob is not spread.
            let sealed: Vec<SealedBlob> =
                on_rayon(move || {
                    let key = inner.keyring.data_key(span.key_id).ok_or_else(|| {
                        Error::corrupt(
                            &object,
                            format!("sealed with unknown data key {}", span.key_id),
                        )
                    })?;
                    span.blobs
                        .par_iter()
                        .map(|(id, loc)| {
                            let from = (u64::from(loc.offset) - span.start) as usize;
                            let raw = data.get(from..from + loc.stored_len as usize).ok_or_else(
                                || Error::corrupt(&object, "blob outside the range read"),
                            )?;
                            let h = BlobHeader {
                                id: *id,
                                blob_type: loc.blob_type,
                                flags: loc.flags,
                                raw_len: loc.raw_len,
                            };
                            blob::open_with(&inner.keyring, key, &h, raw, &object, |_| ())?;
                            Ok(SealedBlob {
                                id: *id,
                                blob_type: loc.blob_type,
                                flags: loc.flags,
                                raw_len: loc.raw_len,
                                bytes: raw.to_vec(),
                            })
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .await
                .map_err(|e| stopped(format!("a blob to repack is damaged: {e}; run check")))?;
            for b in sealed {
                let key = self
                    .inner
                    .keyring
                    .data_key(span.key_id)
                    .ok_or_else(|| Error::Internal("data key left the keyring".into()))?;
                let target = match b.blob_type {
                    BlobType::Data => self.inner.config.pack_size.data,
                    BlobType::Tree => self.inner.config.pack_size.tree,
                } as usize;
                let w = writers
                    .entry((b.blob_type, span.key_id))
                    .or_insert_with(|| PackWriter::new(b.blob_type, key, target + target / 8));
                w.add(&b)?;
                blobs += 1;
                bytes += b.bytes.len() as u64;
                if w.len() >= target
                    && let Some(full) = writers.remove(&(b.blob_type, span.key_id))
                {
                    new_packs.push(self.upload_pack(full).await?);
                }
            }
        }
        for (_, w) in writers {
            if !w.is_empty() {
                new_packs.push(self.upload_pack(w).await?);
            }
        }
        for chunk in new_packs.chunks(crate::backup::PACKS_PER_SEGMENT) {
            self.write_index_segment(chunk.to_vec()).await?;
        }
        Ok((blobs, bytes))
    }

    async fn upload_pack(&self, w: PackWriter) -> Result<IndexPack> {
        let finished = w.finish(&self.inner.keyring)?;
        let class = finished.class();
        self.inner
            .backend
            .put_pack(&finished.id.to_hex(), finished.bytes, class)
            .await?;
        Ok(IndexPack {
            id: finished.id,
            key_id: finished.key_id,
            blobs: finished.entries,
        })
    }

    /// Stores `gc/<round>-open`: the sessions with a marker and no
    /// snapshot now, except the planner's. If another prune stored it
    /// first, theirs stands (it was listed after the plan too).
    async fn record_open_sessions(
        &self,
        round: u64,
        planner: Option<SnapshotId>,
    ) -> Result<OpenSessions> {
        let snapshots = self.listed_names(ObjectKind::Snapshot).await?;
        let mut open: Vec<SnapshotId> = self
            .inner
            .backend
            .list(ObjectKind::Session)
            .await?
            .into_iter()
            .filter(|o| !snapshots.contains(&o.name))
            .filter_map(|o| o.name.parse().ok())
            .filter(|s| Some(*s) != planner)
            .collect();
        open.sort_unstable();
        let open = OpenSessions(open);
        let name = gc_name(round, Part::Open);
        match self.put_gc(&name, &open.encode()).await {
            Ok(()) => Ok(open),
            Err(StorageError::AlreadyExists { .. }) => OpenSessions::decode(
                &self.get_gc(&name).await?,
                &ObjectKind::Gc.object_name(&name),
            ),
            Err(e) => Err(e.into()),
        }
    }

    /// The names of every object of a kind.
    async fn listed_names(&self, kind: ObjectKind) -> Result<HashSet<String>> {
        let listed = self.inner.backend.list(kind).await?;
        Ok(listed.into_iter().map(|o| o.name).collect())
    }

    /// Which packs object lock still retains (none without object lock).
    async fn lock_check(&self, listed: &[ObjectInfo]) -> Result<LockCheck> {
        let Some(lock) = self.inner.config.object_lock else {
            return Ok(LockCheck::default());
        };
        let now = self.storage_now().await?;
        let retention = jiff::SignedDuration::from_hours(24 * i64::from(lock.days));
        let until = listed
            .iter()
            .filter_map(|o| {
                let id: PackId = o.name.parse().ok()?;
                // Unknown age: assume it was stored just now.
                let until = o.modified.unwrap_or(now) + retention;
                (until > now).then_some((id, until))
            })
            .collect();
        Ok(LockCheck { until })
    }

    /// The storage's clock now: the timestamp of a probe object.
    async fn storage_now(&self) -> Result<jiff::Timestamp> {
        let name = format!("probe-{}", SnapshotId::random().to_hex());
        self.put_gc(&name, b"").await?;
        let listed = self.inner.backend.list(ObjectKind::Gc).await;
        let _ = self.inner.backend.delete(ObjectKind::Gc, &name).await;
        listed?
            .into_iter()
            .find(|o| o.name == name)
            .and_then(|o| o.modified)
            .ok_or_else(|| {
                Error::Internal(format!(
                    "the storage gives no timestamp for gc/{name}: session leases cannot be measured"
                ))
            })
    }

    /// Waits for, or expires, the sessions round `round` depends on.
    /// Returns those still open within their lease.
    async fn resolve_sessions(
        &self,
        waiting: &[SnapshotId],
        options: &PruneOptions,
        report: &mut PruneReport,
    ) -> Result<Vec<SnapshotId>> {
        if waiting.is_empty() {
            return Ok(Vec::new());
        }
        let markers: HashMap<String, Option<jiff::Timestamp>> = self
            .inner
            .backend
            .list(ObjectKind::Session)
            .await?
            .into_iter()
            .map(|o| (o.name, o.modified))
            .collect();
        let snapshots = self.listed_names(ObjectKind::Snapshot).await?;
        let open: Vec<(SnapshotId, Option<jiff::Timestamp>)> = waiting
            .iter()
            .filter_map(|s| {
                let name = s.to_hex();
                let since = markers.get(&name)?;
                (!snapshots.contains(&name)).then_some((*s, *since))
            })
            .collect();
        if open.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.storage_now().await?;
        let mut still = Vec::new();
        for (sid, since) in open {
            let expired = since.is_some_and(|t| now.duration_since(t) >= options.lease);
            if !expired {
                still.push(sid);
                continue;
            }
            // Either way the session can no longer commit anything new.
            if self.expire_session(sid).await? {
                report.sessions_expired.push(sid.short());
            }
        }
        Ok(still)
    }

    /// Sweeps round `round` if its sessions have ended.
    async fn sweep(
        &self,
        round: u64,
        options: &PruneOptions,
        report: &mut PruneReport,
    ) -> Result<Sweep> {
        let plan = match self.read_plan(round).await {
            Ok(p) => p,
            // Finished by another prune meanwhile.
            Err(Error::Missing { .. }) => {
                return Ok(Sweep::Done {
                    deleted: 0,
                    freed: 0,
                });
            }
            Err(e) => return Err(e),
        };
        let sweep_name = gc_name(round, Part::Sweep);
        let doomed: Vec<PackId> = match self.get_gc(&sweep_name).await {
            Ok(plain) => PackList::decode(&plain, &ObjectKind::Gc.object_name(&sweep_name))?.0,
            Err(Error::Missing { .. }) => {
                let open_name = gc_name(round, Part::Open);
                let open = match self.get_gc(&open_name).await {
                    Ok(plain) => {
                        OpenSessions::decode(&plain, &ObjectKind::Gc.object_name(&open_name))?
                    }
                    // The planner stopped before recording them: the sessions
                    // open now include every one open back then.
                    Err(Error::Missing { .. }) => self.record_open_sessions(round, None).await?,
                    Err(e) => return Err(e),
                };
                let mut waiting = open.0.clone();
                if plan.kind == RoundKind::RepairIndex {
                    waiting.push(plan.planner);
                }
                let still = self.resolve_sessions(&waiting, options, report).await?;
                if !still.is_empty() {
                    return Ok(Sweep::Waiting(still));
                }
                let doomed = self.choose_doomed(&plan, report).await?;
                let record = PackList(doomed);
                match self.put_gc(&sweep_name, &record.encode()).await {
                    Ok(()) => record.0,
                    // Another prune decided first: follow its decision.
                    Err(StorageError::AlreadyExists { .. }) => {
                        let plain = self.get_gc(&sweep_name).await?;
                        PackList::decode(&plain, &ObjectKind::Gc.object_name(&sweep_name))?.0
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(e) => return Err(e),
        };
        let doomed: HashSet<PackId> = doomed.into_iter().collect();
        self.rewrite_segments(&doomed).await?;
        let sizes: HashMap<String, u64> = self
            .inner
            .backend
            .list(ObjectKind::Pack)
            .await?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect();
        let deletes: Vec<(String, Option<u64>)> = doomed
            .iter()
            .map(|p| {
                let name = p.to_hex();
                let size = sizes.get(&name).copied();
                (name, size)
            })
            .collect();
        // A delete the storage refuses (object lock, no-delete credentials,
        // an outage) leaves the pack unindexed: a later prune condemns it
        // again. Nothing else depends on it being gone.
        let results: Vec<Result<(bool, u64), StorageError>> = futures::stream::iter(deletes)
            .map(|(name, size)| async move {
                self.inner.backend.delete(ObjectKind::Pack, &name).await?;
                Ok((size.is_some(), size.unwrap_or(0)))
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        let mut deleted = 0;
        let mut freed = 0;
        for r in results {
            match r {
                Ok((was, bytes)) => {
                    deleted += usize::from(was);
                    freed += bytes;
                }
                Err(e) => {
                    report.delete_refused += 1;
                    report.delete_error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        match self
            .put_gc(&gc_name(round, Part::Done), &round.to_le_bytes())
            .await
        {
            Ok(()) | Err(StorageError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.forget_round(round).await?;
        self.clean_gc(round).await?;
        Ok(Sweep::Done { deleted, freed })
    }

    /// The condemned packs of `plan` that no snapshot needs now: a fresh
    /// index that prefers copies outside the plan, and a second mark.
    async fn choose_doomed(&self, plan: &GcPlan, report: &mut PruneReport) -> Result<Vec<PackId>> {
        let condemned: HashSet<PackId> = plan.condemned.iter().copied().collect();
        if condemned.is_empty() {
            return Ok(Vec::new());
        }
        let snapshots = self.read_all_snapshots().await?;
        let index = self.load_index(&condemned).await?;
        let marks = self.mark(&index, &snapshots).await?;
        let mut keep: HashSet<PackId> = HashSet::new();
        for e in index.entries() {
            if marks.get(e.position)
                && let Some(p) = index.pack_id(e.pack)
                && condemned.contains(&p)
            {
                keep.insert(p);
            }
        }
        report.packs_revived += keep.len();
        Ok(plan
            .condemned
            .iter()
            .filter(|p| !keep.contains(p))
            .copied()
            .collect())
    }

    /// Rewrites every index segment that lists a doomed pack without it,
    /// merging small segments on the way: new segments are stored before
    /// the old ones are deleted, so every other pack stays indexed at
    /// every instant (also when two sweeps of one round race).
    async fn rewrite_segments(&self, doomed: &HashSet<PackId>) -> Result<()> {
        let listed = self.inner.backend.list(ObjectKind::Index).await?;
        let small = listed.iter().filter(|o| o.size < SMALL_SEGMENT).count();
        let merge = small >= MERGE_AT;
        let mut names: Vec<(String, u64)> = listed.into_iter().map(|o| (o.name, o.size)).collect();
        names.sort_unstable();
        let mut replaced: Vec<IndexId> = Vec::new();
        let mut out: Vec<IndexPack> = Vec::new();
        let mut out_blobs = 0usize;
        let mut kept: HashSet<PackId> = HashSet::new();
        for (name, size) in names {
            let (id, segment) = match self.read_index_segment(&name).await {
                Ok(s) => s,
                // Deleted by a concurrent sweep of this round: it rewrote it.
                Err(Error::Missing { .. }) => continue,
                Err(e) => return Err(e),
            };
            let touched = segment.packs.iter().any(|p| doomed.contains(&p.id));
            let small = merge && size < SMALL_SEGMENT;
            if !(touched || small) {
                continue;
            }
            for p in segment.packs {
                if !doomed.contains(&p.id) && kept.insert(p.id) {
                    out_blobs += p.blobs.len();
                    out.push(p);
                }
            }
            replaced.push(id);
            if out_blobs >= MERGED_SEGMENT_BLOBS {
                self.write_index_segment(std::mem::take(&mut out)).await?;
                out_blobs = 0;
            }
        }
        if !out.is_empty() {
            self.write_index_segment(out).await?;
        }
        futures::stream::iter(replaced)
            .map(|id| async move {
                self.inner
                    .backend
                    .delete(ObjectKind::Index, &id.to_hex())
                    .await
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// After round `round` is done: deletes the markers of sessions that
    /// committed (or were expired) without deleting theirs, the done
    /// records of earlier rounds (the newest one keeps the numbering) and
    /// probes left behind.
    async fn clean_gc(&self, round: u64) -> Result<()> {
        let backend = &self.inner.backend;
        let snapshots = self.listed_names(ObjectKind::Snapshot).await?;
        for marker in backend.list(ObjectKind::Session).await? {
            if snapshots.contains(&marker.name) {
                backend.delete(ObjectKind::Session, &marker.name).await?;
            }
        }
        let rounds = self.list_rounds().await?;
        for r in rounds.dones.iter().filter(|r| **r < round) {
            backend
                .delete(ObjectKind::Gc, &gc_name(*r, Part::Done))
                .await?;
        }
        for name in rounds.other.iter().filter(|n| n.starts_with("probe-")) {
            backend.delete(ObjectKind::Gc, name).await?;
        }
        Ok(())
    }

    /// Deletes a finished round's plan, open list and sweep record.
    pub(crate) async fn forget_round(&self, round: u64) -> Result<()> {
        for part in [Part::Plan, Part::Open, Part::Sweep] {
            self.inner
                .backend
                .delete(ObjectKind::Gc, &gc_name(round, part))
                .await?;
        }
        Ok(())
    }
}
