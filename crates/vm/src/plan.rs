//! Which chunks of a disk to read: the plan from the source's allocation
//! (holes it reports are not read), from a dirty bitmap (clean chunks keep
//! the base snapshot's blob), or from a file's data ranges.

use std::fs::File;
use std::sync::Arc;

use tessera_core::KnownBlobs;

use crate::nbd::STATE_DIRTY;
#[cfg(test)]
use crate::nbd::STATE_ZERO;
use crate::restore::DiskMap;

/// What to do with one chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    Hole,
    Read,
    Reuse,
    /// Clean by the bitmap, read anyway to check that (`--audit`).
    Audit,
}

/// Chunks the bitmap calls clean keep the base snapshot's blob (or hole),
/// unless the repository lost that blob (a prune condemned its pack):
/// then they are read again.
pub(crate) fn reuse_clean(
    plan: &mut [Plan],
    dirty: &[crate::nbd::Extent],
    base: &DiskMap,
    cs: u32,
    known: &KnownBlobs,
    audit: bool,
) {
    let cs = u64::from(cs);
    let mut is_dirty = vec![false; plan.len()];
    for e in dirty.iter().filter(|e| e.flags & STATE_DIRTY != 0) {
        let last = (e.offset + e.length).div_ceil(cs) as usize;
        for d in is_dirty
            .iter_mut()
            .take(last)
            .skip((e.offset / cs) as usize)
        {
            *d = true;
        }
    }
    for (i, p) in plan.iter_mut().enumerate() {
        if *p != Plan::Read || is_dirty.get(i).copied().unwrap_or(true) {
            continue;
        }
        if audit {
            *p = Plan::Audit;
            continue;
        }
        match base.blob_at(i as u64) {
            None => *p = Plan::Hole,
            Some(id) if known.contains_all(&[id]) => *p = Plan::Reuse,
            Some(_) => {}
        }
    }
}

/// The plan from allocation extents: a chunk wholly covered by extents
/// whose flags contain `zero_flag` (holes the source reports) is a hole;
/// when `zero_flag` is 0 the extents are data ranges, and a chunk none of
/// them touches is a hole. Every other chunk is read.
pub(crate) fn plan_from_allocation(
    size: u64,
    cs: u32,
    extents: impl Iterator<Item = (u64, u64, u32)>,
    zero_flag: u32,
) -> Vec<Plan> {
    let cs = u64::from(cs);
    let n = size.div_ceil(cs) as usize;
    if zero_flag == 0 {
        let mut plan = vec![Plan::Hole; n];
        for (off, len, _) in extents {
            let last = (off.saturating_add(len)).div_ceil(cs) as usize;
            for p in plan.iter_mut().take(last).skip((off / cs) as usize) {
                *p = Plan::Read;
            }
        }
        return plan;
    }
    // Bytes of each chunk the source reports as zero.
    let mut zero = vec![0u64; n];
    for (off, len, flags) in extents {
        if flags & zero_flag == 0 {
            continue;
        }
        let end = off.saturating_add(len).min(size);
        let mut at = off;
        while at < end {
            let i = (at / cs) as usize;
            let stop = ((at / cs + 1) * cs).min(end);
            if let Some(z) = zero.get_mut(i) {
                *z += stop - at;
            }
            at = stop;
        }
    }
    zero.iter()
        .enumerate()
        .map(|(i, &z)| {
            let len = (size - i as u64 * cs).min(cs);
            if z >= len { Plan::Hole } else { Plan::Read }
        })
        .collect()
}

/// Data ranges of a file (SEEK_DATA / SEEK_HOLE; a device or a
/// filesystem without them: all of it).
pub(crate) fn data_ranges(file: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::{SeekFrom, seek};
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match seek(file, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => {
                return Ok(vec![(0, size)]);
            }
            Err(e) => return Err(e.into()),
        };
        let end = match seek(file, SeekFrom::Hole(start)) {
            Ok(e) => e.min(size),
            Err(_) => size,
        };
        if end > start {
            out.push((start, end - start));
        }
        pos = end.max(start + 1);
    }
    Ok(out)
}

/// The (offset, length) of every chunk the plan reads, in order.
pub(crate) struct ReadRanges {
    pub(crate) plan: Arc<Vec<Plan>>,
    pub(crate) next: usize,
    pub(crate) chunk_size: u32,
    pub(crate) size: u64,
}

impl Iterator for ReadRanges {
    type Item = (u64, u32);
    fn next(&mut self) -> Option<(u64, u32)> {
        while let Some(p) = self.plan.get(self.next) {
            let i = self.next as u64;
            self.next += 1;
            if matches!(p, Plan::Read | Plan::Audit) {
                let off = i * u64::from(self.chunk_size);
                return Some((
                    off,
                    (self.size - off).min(u64::from(self.chunk_size)) as u32,
                ));
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn allocation_plans_holes_only_for_wholly_zero_chunks() {
        let cs = 65536u32;
        let c = u64::from(cs);
        // 4 chunks: zero extent covers chunk 1 wholly and half of chunk 2.
        let ext = [
            (0, c, 0),
            (c, c + c / 2, STATE_ZERO),
            (2 * c + c / 2, c + c / 2, 0),
        ];
        let plan = plan_from_allocation(4 * c, cs, ext.into_iter(), STATE_ZERO);
        assert_eq!(plan, vec![Plan::Read, Plan::Hole, Plan::Read, Plan::Read]);
        // Two zero extents of different flags cover chunk 0 together; the
        // short last chunk is wholly zero.
        let ext = [
            (0, c / 2, STATE_ZERO | 1),
            (c / 2, c / 2, STATE_ZERO),
            (c, c, 0),
            (2 * c, 100, STATE_ZERO),
        ];
        let plan = plan_from_allocation(2 * c + 100, cs, ext.into_iter(), STATE_ZERO);
        assert_eq!(plan, vec![Plan::Hole, Plan::Read, Plan::Hole]);
        // Data ranges (direct files): untouched chunks are holes.
        let plan = plan_from_allocation(4 * c, cs, [(c + 10, 5, 0)].into_iter(), 0);
        assert_eq!(plan, vec![Plan::Hole, Plan::Read, Plan::Hole, Plan::Hole]);
    }
}
