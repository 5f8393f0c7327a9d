//! Repack: copy the used blobs of condemned packs, still sealed and
//! verified on the way, into new packs with their index segment.

use std::collections::{HashMap, HashSet};

use crate::blob::{self, BlobHeader, BlobType, SealedBlob};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::id::{BlobId, DataKeyId};
use crate::index::{BlobLocation, Index, IndexPack};
use crate::pack::PackWriter;
use crate::repo::{Repository, on_rayon};
use crate::span::{MAX_GAP, spans};
use rayon::prelude::*;

use super::*;

impl Repository {
    /// Copies the used blobs of the packs numbered `repack`, verified and
    /// still sealed, into new packs with their index segment. Returns the
    /// blobs and bytes copied.
    pub(super) async fn repack(
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

    pub(super) async fn upload_pack(&self, w: PackWriter) -> Result<IndexPack> {
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
}
