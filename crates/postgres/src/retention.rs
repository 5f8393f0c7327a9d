//! Retention that knows what WAL is for: base backups are kept or forgotten
//! by the usual rules; a WAL batch is forgotten only when every file in it
//! lies before the start of the oldest base backup kept for its cluster, so
//! every kept backup can still be restored to any point after it. Timeline
//! history files are kept always (they are tiny and recovery needs them to
//! follow timelines).

use std::collections::{HashMap, HashSet};

use tessera_core::{SnapshotEntry, SnapshotId};

use crate::base::{BaseBackupMeta, base_meta};
use crate::wal::{WalKind, WalName};
use crate::wal_archive::{WalArchive, WalBatchMeta, batch_meta};
use crate::{KIND_BASE, KIND_WAL, Result};

/// What forgetting some base backups releases.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalRelease {
    /// Base backups that stay (those the rules kept and those they did not
    /// consider: other hosts, tags).
    pub bases_kept: usize,
    /// WAL batches no kept base backup needs: forget them with the bases.
    pub batches: Vec<SnapshotId>,
    /// WAL files in those batches.
    pub files: usize,
}

/// The WAL-aware forget plan (hazard H33): given every snapshot of the
/// repository and the base backups a policy removes, the WAL batches that
/// go with them. A WAL batch goes only when no base backup that stays
/// needs any file in it.
///
/// # Errors
/// A base backup or WAL batch whose metadata does not decode (named).
pub fn forget_plan(all: &[SnapshotEntry], removed: &HashSet<SnapshotId>) -> Result<WalRelease> {
    let kept: Vec<BaseBackupMeta> = all
        .iter()
        .filter(|e| e.snapshot.source_kind == KIND_BASE && !removed.contains(&e.id))
        .map(base_meta)
        .collect::<Result<_>>()?;
    let batches: Vec<(SnapshotId, WalBatchMeta)> = all
        .iter()
        .filter(|e| e.snapshot.source_kind == KIND_WAL)
        .map(|e| Ok((e.id, batch_meta(&e.snapshot.source_meta, e.id)?)))
        .collect::<Result<_>>()?;
    let gone = releasable_wal(&kept.iter().collect::<Vec<_>>(), &batches);
    let files = batches
        .iter()
        .filter(|(id, _)| gone.contains(id))
        .map(|(_, b)| b.files.len())
        .sum();
    Ok(WalRelease {
        bases_kept: kept.len(),
        batches: gone,
        files,
    })
}

/// The WAL segments a base backup needs to be restored (from its start to
/// its stop position) that the archive does not hold: none means it is
/// restorable.
pub fn missing_wal(base: &BaseBackupMeta, archive: &WalArchive) -> Vec<String> {
    crate::wal::segments_between(
        base.timeline,
        base.start_lsn,
        base.stop_lsn,
        base.wal_segment_size,
    )
    .into_iter()
    .filter(|n| archive.get(base.system_id, n).is_none())
    .collect()
}

/// The WAL batches no kept base backup needs.
///
/// `kept` are the base backups that stay; `batches` every WAL batch. A
/// cluster without any kept base backup keeps all its WAL: the next base
/// backup may be under way, and its WAL is being archived now.
pub fn releasable_wal(
    kept: &[&BaseBackupMeta],
    batches: &[(SnapshotId, WalBatchMeta)],
) -> Vec<SnapshotId> {
    let mut oldest: HashMap<u64, String> = HashMap::new();
    for base in kept {
        let position = base.start_wal.get(8..24).unwrap_or("").to_ascii_uppercase();
        oldest
            .entry(base.system_id)
            .and_modify(|p| {
                if position < *p {
                    *p = position.clone();
                }
            })
            .or_insert(position);
    }
    batches
        .iter()
        .filter(|(_, batch)| {
            let Some(first_needed) = oldest.get(&batch.system_id) else {
                return false;
            };
            batch.files.iter().all(|f| match WalName::parse(&f.name) {
                Some(w) if w.kind != WalKind::History => {
                    w.position.is_some_and(|p| p < *first_needed)
                }
                _ => false,
            })
        })
        .map(|(id, _)| *id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal_archive::WalFileMeta;

    fn base(system: u64, start: &str) -> BaseBackupMeta {
        BaseBackupMeta {
            system_id: system,
            version_num: 150000,
            timeline: 1,
            start_lsn: Default::default(),
            stop_lsn: Default::default(),
            start_wal: start.into(),
            stop_wal: start.into(),
            wal_segment_size: 16 << 20,
            data_checksums: true,
            start_time: jiff::Timestamp::UNIX_EPOCH,
            stop_time: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    fn batch(system: u64, names: &[&str]) -> WalBatchMeta {
        WalBatchMeta {
            system_id: system,
            files: names
                .iter()
                .map(|n| WalFileMeta {
                    name: n.to_string(),
                    size: 1,
                    blake3: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn only_wal_before_the_oldest_kept_backup_goes() {
        let ids: Vec<SnapshotId> = (0..6u8).map(|i| SnapshotId([i; 32])).collect();
        let batches = vec![
            (
                ids[0],
                batch(1, &["000000010000000000000001", "000000010000000000000002"]),
            ),
            (
                ids[1],
                batch(
                    1,
                    &[
                        "000000010000000000000003",
                        "000000010000000000000004.00000028.backup",
                    ],
                ),
            ),
            (ids[2], batch(1, &["000000010000000000000004"])),
            (
                ids[3],
                batch(1, &["00000002.history", "000000020000000000000001"]),
            ),
            (ids[4], batch(2, &["000000010000000000000001"])),
            (ids[5], batch(1, &["000000020000000000000003.partial"])),
        ];
        let kept = base(1, "000000010000000000000004");
        let gone = releasable_wal(&[&kept], &batches);
        // Batch 1 holds the backup history file of the kept backup's start
        // segment: its position (…04) is not before the start, so it stays.
        assert_eq!(gone, vec![ids[0], ids[5]]);
        assert!(
            releasable_wal(&[], &batches).is_empty(),
            "no kept backup: keep all"
        );
    }
}
