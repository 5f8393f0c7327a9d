//! Garbage collection without locks or clocks: the round objects of
//! FORMAT.md §10 (the writer's side, sessions, is [`crate::session`]).
//!
//! Every writer (backup, copy into, repair snapshots, prune's repacking)
//! works inside a *session*:
//! 1. it creates `sessions/<sid>` first,
//! 2. then reads the plans of the GC rounds not yet done and counts the
//!    blobs of their condemned packs as absent (it stores them again),
//!    then refreshes its index,
//! 3. writes packs and index segments,
//! 4. and commits by creating `snapshots/<sid>` create-only, which fails
//!    if a prune expired the session with a tombstone first.
//!
//! A GC round `r` (see [`crate::prune`]) creates `gc/<r>-plan`
//! create-only, then records the sessions open at that moment in
//! `gc/<r>-open`, and deletes nothing until every one of them has
//! committed, failed or expired. Safety rests on create-only puts and
//! list-after-write consistency alone; the storage's clock only decides
//! when a silent session's lease runs out.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::{ObjectKind, Reader};
use crate::id::{PackId, SnapshotId};
use crate::repo::Repository;
use crate::sealed;
use crate::storage::StorageError;

/// How long a session may stay open before a prune may expire it,
/// measured on the storage's clock.
pub const DEFAULT_LEASE: jiff::SignedDuration = jiff::SignedDuration::from_hours(24);

/// What a GC round is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum RoundKind {
    /// A prune: the plan condemns packs.
    Prune = 0,
    /// A `repair index`: condemns nothing, keeps other rounds out while
    /// it rewrites the index.
    RepairIndex = 1,
}

/// `gc/<round>-plan`: what a round condemns, and who planned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcPlan {
    /// Why the round exists.
    pub kind: RoundKind,
    /// The planner's own session.
    pub planner: SnapshotId,
    /// The packs the round will delete unless a snapshot revives them.
    pub condemned: Vec<PackId>,
}

impl GcPlan {
    /// Encodes the plaintext: kind (u8), planner (32), count (u32 LE),
    /// pack ids (32 each).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + 32 + 4 + 32 * self.condemned.len());
        out.push(self.kind as u8);
        out.extend_from_slice(self.planner.as_bytes());
        out.extend_from_slice(&(self.condemned.len() as u32).to_le_bytes());
        for p in &self.condemned {
            out.extend_from_slice(p.as_bytes());
        }
        out
    }

    /// Decodes a plan's plaintext.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `object`.
    pub fn decode(plain: &[u8], object: &str) -> Result<Self> {
        let mut r = Reader::new(plain, object);
        let kind = match r.u8()? {
            0 => RoundKind::Prune,
            1 => RoundKind::RepairIndex,
            k => return Err(Error::corrupt(object, format!("unknown round kind {k}"))),
        };
        let planner = SnapshotId(r.array()?);
        let condemned = read_ids(&mut r)?.into_iter().map(PackId).collect();
        r.finish()?;
        Ok(GcPlan {
            kind,
            planner,
            condemned,
        })
    }
}

/// `gc/<round>-open`: the sessions open just after the plan was stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenSessions(pub Vec<SnapshotId>);

impl OpenSessions {
    /// Encodes the plaintext: count (u32 LE), session ids (32 each).
    pub fn encode(&self) -> Vec<u8> {
        write_ids(self.0.iter().map(SnapshotId::as_bytes))
    }

    /// Decodes the plaintext.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `object`.
    pub fn decode(plain: &[u8], object: &str) -> Result<Self> {
        Ok(OpenSessions(read_id_list(plain, object, SnapshotId)?))
    }
}

/// `gc/<round>-sweep`: the condemned packs the sweep deletes (those no
/// snapshot revived), fixed by the first sweep so a concurrent one deletes
/// the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackList(pub Vec<PackId>);

impl PackList {
    /// Encodes the plaintext: count (u32 LE), pack ids (32 each).
    pub fn encode(&self) -> Vec<u8> {
        write_ids(self.0.iter().map(PackId::as_bytes))
    }

    /// Decodes the plaintext.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `object`.
    pub fn decode(plain: &[u8], object: &str) -> Result<Self> {
        Ok(PackList(read_id_list(plain, object, PackId)?))
    }
}

/// A count (u32 LE) and the ids: the plaintext of `-open` and `-sweep`.
fn write_ids<'a>(ids: impl ExactSizeIterator<Item = &'a [u8; 32]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 32 * ids.len());
    out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
    for id in ids {
        out.extend_from_slice(id);
    }
    out
}

/// Decodes a whole plaintext written by [`write_ids`].
fn read_id_list<T>(plain: &[u8], object: &str, wrap: fn([u8; 32]) -> T) -> Result<Vec<T>> {
    let mut r = Reader::new(plain, object);
    let ids = read_ids(&mut r)?.into_iter().map(wrap).collect();
    r.finish()?;
    Ok(ids)
}

/// A count (u32 LE) and that many 32-byte ids; the count is checked
/// against the bytes left before anything is allocated.
fn read_ids(r: &mut Reader<'_>) -> Result<Vec<[u8; 32]>> {
    let n = r.u32()? as usize;
    let mut ids = Vec::with_capacity(n.min(r.remaining() / 32));
    for _ in 0..n {
        ids.push(r.array()?);
    }
    Ok(ids)
}

/// The three objects of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Plan,
    Open,
    Sweep,
    Done,
}

impl Part {
    fn suffix(self) -> &'static str {
        match self {
            Part::Plan => "plan",
            Part::Open => "open",
            Part::Sweep => "sweep",
            Part::Done => "done",
        }
    }
}

/// The name of a round's object within `gc/`: `<round, 10 digits>-<part>`.
pub(crate) fn gc_name(round: u64, part: Part) -> String {
    format!("{round:010}-{}", part.suffix())
}

fn parse_gc_name(name: &str) -> Option<(u64, Part)> {
    let (round, part) = name.split_once('-')?;
    if round.is_empty() || !round.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let part = match part {
        "plan" => Part::Plan,
        "open" => Part::Open,
        "sweep" => Part::Sweep,
        "done" => Part::Done,
        _ => return None,
    };
    Some((round.parse().ok()?, part))
}

/// The rounds `gc/` holds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Rounds {
    pub(crate) plans: BTreeSet<u64>,
    pub(crate) opens: BTreeSet<u64>,
    pub(crate) dones: BTreeSet<u64>,
    /// Objects whose name is no round's (probes a prune left behind).
    pub(crate) other: Vec<String>,
}

impl Rounds {
    /// The highest round named by any object (0 when there is none).
    pub(crate) fn highest(&self) -> u64 {
        [&self.plans, &self.opens, &self.dones]
            .iter()
            .filter_map(|s| s.last().copied())
            .max()
            .unwrap_or(0)
    }

    /// Rounds planned and not done, oldest first.
    pub(crate) fn pending(&self) -> Vec<u64> {
        self.plans
            .iter()
            .filter(|r| !self.dones.contains(r))
            .copied()
            .collect()
    }
}

impl Repository {
    /// Lists `gc/`.
    pub(crate) async fn list_rounds(&self) -> Result<Rounds> {
        let mut rounds = Rounds::default();
        for info in self.inner.backend.list(ObjectKind::Gc).await? {
            match parse_gc_name(&info.name) {
                Some((r, Part::Plan)) => rounds.plans.insert(r),
                Some((r, Part::Open | Part::Sweep)) => rounds.opens.insert(r),
                Some((r, Part::Done)) => rounds.dones.insert(r),
                None => {
                    rounds.other.push(info.name);
                    true
                }
            };
        }
        Ok(rounds)
    }

    /// Creates a sealed `gc/` object, create-only.
    pub(crate) async fn put_gc(&self, name: &str, plain: &[u8]) -> Result<(), StorageError> {
        let bytes = sealed::seal(&self.inner.keyring, ObjectKind::Gc, name, plain);
        self.inner
            .backend
            .put(ObjectKind::Gc, name, Bytes::from(bytes))
            .await
    }

    /// Reads and opens a sealed `gc/` object.
    pub(crate) async fn get_gc(&self, name: &str) -> Result<Vec<u8>> {
        let bytes = self.inner.backend.get(ObjectKind::Gc, name).await?;
        sealed::open(&self.inner.keyring, ObjectKind::Gc, name, &bytes)
    }

    /// Reads round `round`'s plan.
    ///
    /// # Errors
    /// Storage errors; a corrupt plan (named).
    pub(crate) async fn read_plan(&self, round: u64) -> Result<GcPlan> {
        let name = gc_name(round, Part::Plan);
        let plain = self.get_gc(&name).await?;
        GcPlan::decode(&plain, &ObjectKind::Gc.object_name(&name))
    }

    /// The packs condemned by every round not yet done. A plan deleted
    /// between the listing and the read belongs to a finished round: its
    /// packs are gone from the index segments already.
    pub(crate) async fn condemned_packs(&self) -> Result<HashSet<PackId>> {
        let mut condemned = HashSet::new();
        for round in self.list_rounds().await?.pending() {
            match self.read_plan(round).await {
                Ok(plan) => condemned.extend(plan.condemned),
                Err(Error::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(condemned)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn plan_and_open_round_trip_and_reject_truncation() {
        let plan = GcPlan {
            kind: RoundKind::Prune,
            planner: SnapshotId([7; 32]),
            condemned: vec![PackId([1; 32]), PackId([2; 32])],
        };
        let bytes = plan.encode();
        assert_eq!(bytes.len(), 1 + 32 + 4 + 64);
        assert_eq!(GcPlan::decode(&bytes, "gc/p").unwrap(), plan);
        for cut in 0..bytes.len() {
            assert!(GcPlan::decode(&bytes[..cut], "gc/p").is_err(), "cut {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(GcPlan::decode(&bad, "gc/p").is_err());
        let open = OpenSessions(vec![SnapshotId([3; 32])]);
        assert_eq!(OpenSessions::decode(&open.encode(), "gc/o").unwrap(), open);
        assert!(OpenSessions::decode(&open.encode()[..35], "gc/o").is_err());
    }

    #[test]
    fn round_names() {
        assert_eq!(gc_name(42, Part::Plan), "0000000042-plan");
        assert_eq!(parse_gc_name("0000000042-done"), Some((42, Part::Done)));
        assert_eq!(parse_gc_name("42-open"), Some((42, Part::Open)));
        assert_eq!(parse_gc_name("probe-abc"), None);
        assert_eq!(parse_gc_name("-plan"), None);
        assert_eq!(parse_gc_name("12-later"), None);
        let mut r = Rounds::default();
        r.plans.extend([1, 2, 3]);
        r.dones.extend([1, 2]);
        r.opens.insert(4);
        assert_eq!(r.pending(), vec![3]);
        assert_eq!(r.highest(), 4);
    }
}
