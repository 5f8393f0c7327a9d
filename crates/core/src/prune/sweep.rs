//! Sweep: once every session open at planning time has ended, mark again,
//! revive what a snapshot now needs, record the rest, rewrite the index
//! segments without it, then delete the packs.

use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::gc::{GcPlan, OpenSessions, PackList, Part, RoundKind, gc_name};
use crate::id::{IndexId, PackId, SnapshotId};
use crate::index::IndexPack;
use crate::repo::Repository;
use crate::storage::StorageError;
use futures::{StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};

use super::*;

impl Repository {
    /// Waits for, or expires, the sessions round `round` depends on.
    /// Returns those still open within their lease.
    pub(super) async fn resolve_sessions(
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
    pub(super) async fn sweep(
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
    pub(super) async fn choose_doomed(
        &self,
        plan: &GcPlan,
        report: &mut PruneReport,
    ) -> Result<Vec<PackId>> {
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
    pub(super) async fn rewrite_segments(&self, doomed: &HashSet<PackId>) -> Result<()> {
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
    pub(super) async fn clean_gc(&self, round: u64) -> Result<()> {
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
