//! Retention that knows what WAL is for: base backups are kept or forgotten
//! by the usual rules; a WAL batch is forgotten only when every file in it
//! lies before the start of the oldest base backup kept for its cluster, so
//! every kept backup can still be restored to any point after it. Timeline
//! history files are kept always (they are tiny and recovery needs them to
//! follow timelines).

use std::collections::HashMap;

use tessera_core::SnapshotId;

use crate::archive::WalBatchMeta;
use crate::base::BaseBackupMeta;
use crate::wal::{WalKind, WalName};

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
    use crate::archive::WalFileMeta;

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
