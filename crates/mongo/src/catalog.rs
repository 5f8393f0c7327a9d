//! What a repository holds for MongoDB: backups and oplog slices, per
//! replica set the stretches of oplog the slices cover and the gaps
//! between them, the plan of a point-in-time restore, and which slices no
//! kept backup needs. Built from snapshot objects alone (the metadata
//! cache keeps them), so listing reads no data.

use tessera_core::{Repository, SnapshotEntry};

use crate::meta::{BackupMeta, Gap, OpTime, SliceMeta};
use crate::{Error, KIND_BACKUP, KIND_OPLOG, Result};

/// A backup snapshot and what it holds.
#[derive(Clone, Debug)]
pub struct Backup {
    /// The snapshot.
    pub entry: SnapshotEntry,
    /// Its metadata.
    pub meta: BackupMeta,
}

/// An oplog slice snapshot and what it holds.
#[derive(Clone, Debug)]
pub struct Slice {
    /// The snapshot.
    pub entry: SnapshotEntry,
    /// Its metadata.
    pub meta: SliceMeta,
}

/// A stretch of oplog the archive holds without a hole: every entry after
/// `from` up to `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// Where it starts (the entry before its first, or after a gap its
    /// first).
    pub from: OpTime,
    /// Its newest entry.
    pub to: OpTime,
    /// Slices in it.
    pub slices: usize,
}

/// The MongoDB snapshots of a repository.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    /// Backups, oldest first.
    pub backups: Vec<Backup>,
    /// Oplog slices, by where they start.
    pub slices: Vec<Slice>,
}

/// A point-in-time restore: a backup, then the slices that carry its
/// consistent point to the target.
#[derive(Clone, Debug)]
pub struct PitrPlan {
    /// The backup restored first.
    pub backup: Backup,
    /// The slices replayed after its own oplog, in order.
    pub slices: Vec<Slice>,
    /// The newest entry replayed (`None`: the backup's consistent point,
    /// the replica set having no oplog archive).
    pub target: Option<OpTime>,
}

impl Catalog {
    /// Reads the snapshot list.
    ///
    /// # Errors
    /// The repository failing; a MongoDB snapshot whose metadata cannot be
    /// read (named).
    pub async fn load(repo: &Repository) -> Result<Catalog> {
        Catalog::from_entries(repo.snapshots().await?)
    }

    /// The catalog of these snapshots (others are ignored).
    ///
    /// # Errors
    /// A MongoDB snapshot whose metadata cannot be read (named).
    pub fn from_entries(entries: impl IntoIterator<Item = SnapshotEntry>) -> Result<Catalog> {
        let mut c = Catalog::default();
        for entry in entries {
            let sid = entry.id.short();
            match entry.snapshot.source_kind.as_str() {
                KIND_BACKUP => {
                    let meta = BackupMeta::from_value(&entry.snapshot.source_meta, &sid)?;
                    c.backups.push(Backup { entry, meta });
                }
                KIND_OPLOG => {
                    let meta = SliceMeta::from_value(&entry.snapshot.source_meta, &sid)?;
                    c.slices.push(Slice { entry, meta });
                }
                _ => {}
            }
        }
        c.backups
            .sort_by_key(|b| (b.entry.snapshot.time, b.meta.finished));
        c.slices
            .sort_by_key(|s| (s.meta.covers_from(), s.meta.last));
        Ok(c)
    }

    /// The replica sets with backups or slices, in name order.
    pub fn sets(&self) -> Vec<String> {
        let mut sets: Vec<String> = self
            .backups
            .iter()
            .filter_map(|b| b.meta.set_name.clone())
            .chain(self.slices.iter().map(|s| s.meta.set_name.clone()))
            .collect();
        sets.sort();
        sets.dedup();
        sets
    }

    /// The slices of `set`, by where they start.
    pub fn slices_of<'a>(&'a self, set: &'a str) -> impl Iterator<Item = &'a Slice> + 'a {
        self.slices.iter().filter(move |s| s.meta.set_name == set)
    }

    /// The newest archived entry of `set`.
    pub fn archived_to(&self, set: &str) -> Option<OpTime> {
        self.slices_of(set).map(|s| s.meta.last).max()
    }

    /// The stretches of oplog `set`'s slices cover, oldest first; between
    /// two of them lies a gap.
    pub fn ranges(&self, set: &str) -> Vec<Range> {
        let mut out: Vec<Range> = Vec::new();
        for s in self.slices_of(set) {
            match out.last_mut() {
                Some(r) if s.meta.covers_from() <= r.to => {
                    r.to = r.to.max(s.meta.last);
                    r.slices += 1;
                }
                _ => out.push(Range {
                    from: s.meta.covers_from(),
                    to: s.meta.last,
                    slices: 1,
                }),
            }
        }
        out
    }

    /// The gaps in `set`'s archive, as the follower recorded them or as
    /// the ranges show them.
    pub fn gaps(&self, set: &str) -> Vec<Gap> {
        self.ranges(set)
            .windows(2)
            .map(|w| Gap {
                last_archived: w[0].to,
                first_available: w[1].from,
            })
            .collect()
    }

    /// The one replica set a restore means: `set` if given, else the only
    /// one with backups.
    ///
    /// # Errors
    /// No backup of a replica set, or several sets and none named.
    pub fn pick_set(&self, set: Option<&str>) -> Result<String> {
        if let Some(s) = set {
            return Ok(s.to_owned());
        }
        let mut sets: Vec<String> = self
            .backups
            .iter()
            .filter_map(|b| b.meta.set_name.clone())
            .collect();
        sets.sort();
        sets.dedup();
        match sets.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(Error::InvalidArgument(
                "the repository holds no backup of a replica set (a point-in-time restore needs one)".into(),
            )),
            many => Err(Error::InvalidArgument(format!(
                "the repository holds backups of several replica sets ({}): name one with --set",
                many.join(", ")
            ))),
        }
    }

    /// The plan that restores `set` to `target` (every entry up to it
    /// replayed): the newest backup consistent at or before the target,
    /// then the slices from its consistent point on. Where `set` has no
    /// oplog archive at all, the newest backup consistent by then, alone
    /// (`target` `None` in the plan).
    ///
    /// # Errors
    /// [`Error::Gap`]: the archive has a gap between that backup and the
    /// target, or does not reach the target; no backup before the target.
    pub fn plan(&self, set: &str, target: OpTime) -> Result<PitrPlan> {
        let backup = self
            .backups
            .iter()
            .filter(|b| b.meta.set_name.as_deref() == Some(set))
            .filter(|b| b.meta.consistent.is_some_and(|c| c <= target))
            .max_by_key(|b| b.meta.consistent)
            .cloned()
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "no backup of replica set {set} is consistent at or before {target}"
                ))
            })?;
        self.plan_from(backup, target)
    }

    /// The plan that restores `backup`, then replays the archived oplog
    /// from its consistent point up to `target`.
    ///
    /// # Errors
    /// As [`Catalog::plan`]; a backup of a standalone server or one
    /// consistent after the target.
    pub fn plan_from(&self, backup: Backup, target: OpTime) -> Result<PitrPlan> {
        let sid = backup.entry.id.short();
        let (Some(set), Some(consistent)) = (backup.meta.set_name.clone(), backup.meta.consistent)
        else {
            return Err(Error::InvalidArgument(format!(
                "backup {sid} is of a standalone server: it has no oplog to restore to a point in time"
            )));
        };
        if consistent > target {
            return Err(Error::InvalidArgument(format!(
                "backup {sid} is consistent at {consistent}, after the target {target}"
            )));
        }
        let set = set.as_str();
        if self.slices_of(set).next().is_none() {
            return Ok(PitrPlan {
                backup,
                slices: Vec::new(),
                target: None,
            });
        }
        let mut pos = consistent;
        let mut slices = Vec::new();
        while pos < target {
            let next = self
                .slices_of(set)
                .filter(|s| s.meta.covers_from() <= pos && pos < s.meta.last)
                .max_by_key(|s| s.meta.last);
            match next {
                Some(s) => {
                    pos = s.meta.last;
                    slices.push(s.clone());
                }
                None => {
                    return Err(Error::Gap(
                        match self
                            .slices_of(set)
                            .map(|s| s.meta.covers_from())
                            .filter(|&f| f > pos)
                            .min()
                        {
                            Some(resumed) if resumed <= target => format!(
                                "the oplog archive of {set} has a gap from {pos} to {resumed}: no point-in-time restore from backup {sid} to {target} across it (restore a backup taken after the gap)"
                            ),
                            _ => format!(
                                "the oplog archive of {set} reaches {pos}, before the target {target} (backup {sid})"
                            ),
                        },
                    ));
                }
            }
        }
        Ok(PitrPlan {
            backup,
            slices,
            target: Some(target),
        })
    }

    /// The slices of `set` no restore from a kept backup needs: those
    /// wholly at or before the consistent point of the oldest backup kept.
    /// With no kept backup of the set, none (they are all that is left).
    pub fn releasable<'a>(&'a self, set: &'a str, kept: &[&Backup]) -> Vec<&'a Slice> {
        let Some(oldest) = kept
            .iter()
            .filter(|b| b.meta.set_name.as_deref() == Some(set))
            .filter_map(|b| b.meta.consistent)
            .min()
        else {
            return Vec::new();
        };
        self.slices_of(set)
            .filter(|s| s.meta.last <= oldest)
            .collect()
    }
}

/// The position a wall-clock time stands for: every entry of that second
/// and before.
pub fn at_time(t: jiff::Timestamp) -> OpTime {
    OpTime {
        t: u32::try_from(t.as_second()).unwrap_or(if t.as_second() < 0 { 0 } else { u32::MAX }),
        i: u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::{BlobId, Snapshot, SnapshotId};

    fn op(t: u32) -> OpTime {
        OpTime { t, i: 1 }
    }

    fn entry(n: u8, kind: &str, meta: serde_json::Value) -> SnapshotEntry {
        let snapshot = Snapshot {
            version: 1,
            time: jiff::Timestamp::from_second(i64::from(n)).unwrap(),
            hostname: "h".into(),
            username: "u".into(),
            tags: Vec::new(),
            paths: Vec::new(),
            source_kind: kind.into(),
            source_meta: meta,
            tree: BlobId([0; 32]),
            stats: Default::default(),
            program_version: String::new(),
        };
        SnapshotEntry {
            id: SnapshotId([n; 32]),
            snapshot,
        }
    }

    fn backup(n: u8, consistent: u32) -> SnapshotEntry {
        let meta = BackupMeta {
            version: 1,
            hosts: vec!["h:1".into()],
            set_name: Some("rs0".into()),
            start: Some(op(consistent - 1)),
            consistent: Some(op(consistent)),
            oplog_entries: 0,
            databases: Vec::new(),
            documents: 0,
            bytes: 0,
            users: 0,
            roles: 0,
            started: jiff::Timestamp::UNIX_EPOCH,
            finished: jiff::Timestamp::UNIX_EPOCH,
        };
        entry(n, KIND_BACKUP, serde_json::to_value(meta).unwrap())
    }

    fn slice(n: u8, after: Option<u32>, first: u32, last: u32) -> SnapshotEntry {
        let meta = SliceMeta {
            version: 1,
            set_name: "rs0".into(),
            hosts: vec!["h:1".into()],
            after: after.map(op),
            first: op(first),
            last: op(last),
            entries: 1,
            bytes: 1,
            gap: None,
            started: jiff::Timestamp::UNIX_EPOCH,
            finished: jiff::Timestamp::UNIX_EPOCH,
        };
        entry(n, KIND_OPLOG, serde_json::to_value(meta).unwrap())
    }

    #[test]
    fn plans_chain_slices_from_the_backup_and_refuse_gaps() {
        // Backups consistent at 10 and 50; slices 10-20, 20-30, (gap) 40-60, 60-70.
        let c = Catalog::from_entries([
            backup(1, 10),
            slice(2, Some(10), 11, 20),
            slice(3, Some(20), 21, 30),
            slice(4, None, 40, 60),
            backup(5, 50),
            slice(6, Some(60), 61, 70),
        ])
        .unwrap();
        assert_eq!(
            c.ranges("rs0"),
            vec![
                Range {
                    from: op(10),
                    to: op(30),
                    slices: 2
                },
                Range {
                    from: op(40),
                    to: op(70),
                    slices: 2
                },
            ]
        );
        assert_eq!(
            c.gaps("rs0"),
            vec![Gap {
                last_archived: op(30),
                first_available: op(40)
            }]
        );
        let ids = |p: &PitrPlan| {
            p.slices
                .iter()
                .map(|s| s.entry.id.to_hex()[..2].to_string())
                .collect::<Vec<_>>()
        };
        let p = c.plan("rs0", op(25)).unwrap();
        assert_eq!(p.backup.meta.consistent, Some(op(10)));
        assert_eq!(ids(&p), ["02", "03"]);
        // Exactly at the backup's point: no slice.
        assert!(c.plan("rs0", op(10)).unwrap().slices.is_empty());
        // Across the gap from the first backup: refused, naming it.
        let e = c.plan("rs0", op(45)).unwrap_err().to_string();
        assert!(e.contains("gap from 30:1 to 40:1"), "{e}");
        // From the backup after the gap.
        let p = c.plan("rs0", op(65)).unwrap();
        assert_eq!(p.backup.meta.consistent, Some(op(50)));
        assert_eq!(ids(&p), ["04", "06"]);
        // Past the archive's end.
        let e = c.plan("rs0", op(80)).unwrap_err().to_string();
        assert!(e.contains("reaches 70:1, before the target"), "{e}");
        // Before every backup.
        assert!(c.plan("rs0", op(5)).is_err());
        // Releasable: only what lies wholly before the oldest kept backup.
        let kept: Vec<&Backup> = c
            .backups
            .iter()
            .filter(|b| b.meta.consistent == Some(op(50)))
            .collect();
        let gone: Vec<String> = c
            .releasable("rs0", &kept)
            .iter()
            .map(|s| s.entry.id.to_hex()[..2].to_string())
            .collect();
        assert_eq!(gone, ["02", "03"]);
        assert!(c.releasable("rs0", &[]).is_empty());
    }

    #[test]
    fn a_set_without_an_archive_restores_the_backup_alone() {
        let c = Catalog::from_entries([backup(1, 10), backup(2, 20)]).unwrap();
        let p = c.plan("rs0", op(25)).unwrap();
        assert_eq!(p.backup.meta.consistent, Some(op(20)));
        assert_eq!(p.target, None);
        assert_eq!(c.pick_set(None).unwrap(), "rs0");
    }
}
