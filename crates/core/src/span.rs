//! Read spans: which blobs one range request fetches. The plan every
//! reader shares (restore, dump, check, prune's repacking, a single blob
//! read), below all of them.

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::id::{BlobId, DataKeyId, PackId};
use crate::index::{BlobLocation, Index};

/// Largest single range request.
const MAX_READ: u64 = 8 * 1024 * 1024;
/// Largest gap between two wanted blobs of a pack read through in one request.
pub(crate) const MAX_GAP: u64 = 256 * 1024;

/// Consecutive blobs of one pack, read with one request.
pub(crate) struct ReadSpan {
    pub(crate) pack: PackId,
    pub(crate) key_id: DataKeyId,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) blobs: Vec<(BlobId, BlobLocation)>,
}

impl ReadSpan {
    /// The span of a single blob.
    pub(crate) fn one(id: BlobId, loc: BlobLocation) -> Self {
        let start = u64::from(loc.offset);
        ReadSpan {
            pack: loc.pack,
            key_id: loc.key_id,
            start,
            end: start + u64::from(loc.stored_len),
            blobs: vec![(id, loc)],
        }
    }

    /// What its pack holds.
    pub(crate) fn class(&self) -> crate::format::BlobType {
        self.blobs
            .first()
            .map_or(crate::format::BlobType::Data, |(_, l)| l.blob_type)
    }
}

/// Index locations of `ids`, in order.
pub(crate) fn locate(
    index: &Index,
    ids: &[BlobId],
    referrer: &str,
) -> Result<Vec<(BlobId, BlobLocation)>> {
    ids.par_iter()
        .map(|id| {
            index
                .lookup(id)
                .map(|loc| (*id, loc))
                .ok_or_else(|| Error::BlobNotIndexed {
                    blob: id.to_hex(),
                    referrer: referrer.to_string(),
                })
        })
        .collect()
}

/// Groups located blobs into range reads: a blob joins the previous read
/// when it follows it in the same pack, at most `max_gap` bytes after it
/// (gaps are read through: one request beats two), within `MAX_READ`.
pub(crate) fn spans(located: Vec<(BlobId, BlobLocation)>, max_gap: u64) -> Vec<ReadSpan> {
    let mut spans: Vec<ReadSpan> = Vec::new();
    for (id, loc) in located {
        let start = u64::from(loc.offset);
        let end = start + u64::from(loc.stored_len);
        match spans.last_mut() {
            Some(s)
                if s.pack == loc.pack
                    && start >= s.end
                    && start - s.end <= max_gap
                    && end - s.start <= MAX_READ =>
            {
                s.end = end;
                s.blobs.push((id, loc));
            }
            _ => spans.push(ReadSpan {
                pack: loc.pack,
                key_id: loc.key_id,
                start,
                end,
                blobs: vec![(id, loc)],
            }),
        }
    }
    spans
}

/// Reorders spans as two interleaved runs, the first half and the second
/// half of the pack order, so the spans that are opened at the same time
/// usually belong to different files.
pub(crate) fn interleave_halves(spans: Vec<ReadSpan>) -> Vec<ReadSpan> {
    let half = spans.len().div_ceil(2);
    let mut second: Vec<ReadSpan> = Vec::with_capacity(half);
    let mut first: Vec<ReadSpan> = Vec::with_capacity(half);
    for (i, s) in spans.into_iter().enumerate() {
        if i < half {
            first.push(s)
        } else {
            second.push(s)
        }
    }
    let mut out = Vec::with_capacity(first.len() + second.len());
    let mut second = second.into_iter();
    for s in first {
        out.push(s);
        out.extend(second.next());
    }
    out
}
