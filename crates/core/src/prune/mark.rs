//! Mark: which blobs the snapshots use (one bit per index position, each
//! shared tree walked once), and what a restore of one snapshot reads.

use std::collections::{HashMap, HashSet};

use crate::blob::BlobType;
use crate::error::Result;
use crate::format::ObjectKind;
use crate::id::BlobId;
use crate::index::{BlobLocation, Index};
use crate::repo::Repository;
use crate::snapshot;
use crate::tree::NodeKind;

use super::*;

impl Repository {
    /// Marks every blob `snapshots` use (read before `index` was loaded).
    pub(super) async fn mark(
        &self,
        index: &Index,
        snapshots: &[snapshot::Snapshot],
    ) -> Result<Marks> {
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
}
