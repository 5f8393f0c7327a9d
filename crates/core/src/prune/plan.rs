//! Plan: mark, decide per pack (the pure [`verdict`]), repack what is
//! mostly garbage, then store the round's plan and the sessions open
//! after it.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::gc::{GcPlan, OpenSessions, Part, RoundKind, gc_name};
use crate::id::{PackId, SnapshotId};
use crate::repo::Repository;
use crate::storage::StorageError;

use super::*;

impl Repository {
    /// Plans round `round`: mark, choose, repack, then store the plan and
    /// the sessions open after it. Returns whether a round was planned.
    pub(super) async fn plan(
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

    pub(super) async fn plan_in_session(
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

        let uses = pack_uses(&index, &marks);
        let mut condemned: Vec<PackId> = Vec::new();
        let mut repack: HashSet<u32> = HashSet::new();
        for (n, u) in uses.iter().enumerate() {
            let Some(id) = index.pack_id(n as u32) else {
                continue;
            };
            let size = stored.get(&id).copied();
            let since = size.is_none() && stored_now.contains(&id);
            match verdict(size, since, *u, options.repack_threshold) {
                Verdict::Later | Verdict::Keep => {}
                Verdict::MissingUsed => {
                    return Err(stopped(format!(
                        "{} is missing but holds {} blob(s) snapshots use: run check, then repair index and repair snapshots",
                        ObjectKind::Pack.object_name(&id.to_hex()),
                        u.used_blobs
                    )));
                }
                // Missing and unused: its index entries go with the round.
                Verdict::MissingUnused => condemned.push(id),
                Verdict::Unused(size) if !locked.holds(&id, size, report) => {
                    report.packs_unused += 1;
                    report.bytes_to_free += size;
                    condemned.push(id);
                }
                Verdict::Repack(size) if !locked.holds(&id, size, report) => {
                    repack.insert(n as u32);
                    report.packs_repacked += 1;
                    report.bytes_to_free += size;
                    condemned.push(id);
                }
                Verdict::Unused(_) | Verdict::Repack(_) => {}
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
        self.store_plan(round, session, condemned).await?;
        Ok(true)
    }

    /// Stores round `round`'s plan (create-only: a second prune planning
    /// the same round loses and deletes nothing), then the sessions open
    /// after it.
    async fn store_plan(
        &self,
        round: u64,
        session: SnapshotId,
        mut condemned: Vec<PackId>,
    ) -> Result<()> {
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
        Ok(())
    }

    /// Stores `gc/<round>-open`: the sessions with a marker and no
    /// snapshot now, except the planner's. If another prune stored it
    /// first, theirs stands (it was listed after the plan too).
    pub(super) async fn record_open_sessions(
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
}

/// How much of each pack (by index pack number) the marked blobs use.
fn pack_uses(index: &Index, marks: &Marks) -> Vec<PackUse> {
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
    uses
}

/// What a round does with one indexed pack.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// Written after the round's first listing: not this round's business.
    Later,
    /// Missing from storage while snapshots use its blobs: stop the prune.
    MissingUsed,
    /// Missing and unused: its index entries go.
    MissingUnused,
    /// Stored (this many bytes) and unused: deleted, unless object lock
    /// retains it.
    Unused(u64),
    /// Its unused share reaches the threshold: its used blobs are copied
    /// and it is deleted, unless object lock retains it.
    Repack(u64),
    /// Kept as it is.
    Keep,
}

/// The condemn decision for one pack, from its stored size (`None`: not
/// in the round's first listing), whether a second listing found it
/// (`listed_since`), what the snapshots use of it and the repack threshold
/// (the unused share of its blob bytes, 1.0 or more: never repack). A pure
/// function, so each case is tested on its own.
pub(super) fn verdict(
    size: Option<u64>,
    listed_since: bool,
    u: PackUse,
    threshold: f64,
) -> Verdict {
    match size {
        None if listed_since => Verdict::Later,
        None if u.used_blobs > 0 => Verdict::MissingUsed,
        None => Verdict::MissingUnused,
        Some(size) if u.used_blobs == 0 => Verdict::Unused(size),
        Some(size) => {
            // Unused blob bytes, against the blob bytes: the header of a
            // small pack is not garbage.
            let blob_bytes = size.saturating_sub(pack_overhead(u.blobs));
            let unused = blob_bytes.saturating_sub(u.used_bytes) as f64 / blob_bytes.max(1) as f64;
            if unused >= threshold && threshold < 1.0 {
                Verdict::Repack(size)
            } else {
                Verdict::Keep
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(blobs: u32, used_blobs: u32, used_bytes: u64) -> PackUse {
        PackUse {
            used_bytes,
            used_blobs,
            blobs,
        }
    }

    #[test]
    fn a_pack_is_condemned_only_for_what_it_holds_unused() {
        let none = used(4, 0, 0);
        let some = used(4, 1, 100);
        assert_eq!(verdict(None, true, some, 0.1), Verdict::Later);
        assert_eq!(verdict(None, false, some, 0.1), Verdict::MissingUsed);
        assert_eq!(verdict(None, false, none, 0.1), Verdict::MissingUnused);
        assert_eq!(verdict(Some(500), false, none, 0.1), Verdict::Unused(500));
        // 4 blobs of 100 bytes plus the pack's own overhead, one used: 75 %
        // unused.
        let size = 400 + pack_overhead(4);
        assert_eq!(
            verdict(Some(size), false, some, 0.75),
            Verdict::Repack(size)
        );
        assert_eq!(verdict(Some(size), false, some, 0.76), Verdict::Keep);
        // A threshold of 1.0 never repacks, even a pack that is all garbage
        // but its header.
        assert_eq!(
            verdict(Some(size), false, used(4, 1, 0), 1.0),
            Verdict::Keep
        );
        // Every blob used: kept at any threshold above zero.
        assert_eq!(
            verdict(Some(size), false, used(4, 4, 400), 0.01),
            Verdict::Keep
        );
    }
}
