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

mod mark;
mod plan;
mod repack;
mod sweep;

use std::collections::{HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::id::{PackId, SnapshotId};
use crate::index::Index;
use crate::repo::{METADATA_CONCURRENCY, Repository};
use crate::snapshot;
use crate::storage::ObjectInfo;

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
}
