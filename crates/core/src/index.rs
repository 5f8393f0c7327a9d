//! Index segments (on storage) and the in-memory blob index.
//!
//! A segment lists packs and their blobs. It is written after its packs are
//! durable and is never modified. In memory, all segments are merged into
//! one sorted array of fixed 48-byte entries (id, pack number with type and
//! compression bits, offset, stored and plaintext length): no per-entry heap
//! object, binary search for lookups.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::format::Reader;
use crate::format::{BlobType, FLAG_ZSTD};
use crate::id::{BlobId, DataKeyId, IndexId, PackId};
use crate::pack::PackEntry;

/// Encoded size of one blob entry in a segment.
pub const SEGMENT_BLOB_LEN: usize = 1 + 1 + 4 + 4 + 4 + 32;

/// One pack as an index segment records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexPack {
    /// The pack.
    pub id: PackId,
    /// Data key its blobs are sealed with.
    pub key_id: DataKeyId,
    /// Its blobs.
    pub blobs: Vec<PackEntry>,
}

/// The content of one index segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexSegment {
    /// Packs described.
    pub packs: Vec<IndexPack>,
}

impl IndexSegment {
    /// Encodes the plaintext (before sealing).
    pub fn encode(&self) -> Vec<u8> {
        let blobs: usize = self.packs.iter().map(|p| p.blobs.len()).sum();
        let mut out = Vec::with_capacity(4 + self.packs.len() * 52 + blobs * SEGMENT_BLOB_LEN);
        out.extend_from_slice(&(self.packs.len() as u32).to_le_bytes());
        for p in &self.packs {
            out.extend_from_slice(p.id.as_bytes());
            out.extend_from_slice(p.key_id.as_bytes());
            out.extend_from_slice(&(p.blobs.len() as u32).to_le_bytes());
            for b in &p.blobs {
                out.push(b.blob_type as u8);
                out.push(b.flags);
                out.extend_from_slice(&b.offset.to_le_bytes());
                out.extend_from_slice(&b.stored_len.to_le_bytes());
                out.extend_from_slice(&b.raw_len.to_le_bytes());
                out.extend_from_slice(b.id.as_bytes());
            }
        }
        out
    }

    /// Decodes a segment's plaintext.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `object`.
    pub fn decode(plain: &[u8], object: &str) -> Result<Self> {
        let mut r = Reader::new(plain, object);
        let npacks = r.u32()? as usize;
        // Every pack takes at least 52 bytes: bound allocations by the input.
        let mut packs = Vec::with_capacity(npacks.min(r.remaining() / 52));
        for _ in 0..npacks {
            let id = PackId(r.array()?);
            let key_id = DataKeyId(r.array()?);
            let nblobs = r.u32()? as usize;
            let mut blobs = Vec::with_capacity(nblobs.min(r.remaining() / SEGMENT_BLOB_LEN));
            for _ in 0..nblobs {
                let t = r.u8()?;
                let blob_type = BlobType::from_byte(t)
                    .ok_or_else(|| Error::corrupt(object, format!("unknown blob type {t}")))?;
                let flags = r.u8()?;
                if flags & !FLAG_ZSTD != 0 {
                    return Err(Error::corrupt(
                        object,
                        format!("unknown blob flags {flags:#x}"),
                    ));
                }
                let offset = r.u32()?;
                let stored_len = r.u32()?;
                let raw_len = r.u32()?;
                let id = BlobId(r.array()?);
                blobs.push(PackEntry {
                    id,
                    blob_type,
                    flags,
                    offset,
                    stored_len,
                    raw_len,
                });
            }
            packs.push(IndexPack { id, key_id, blobs });
        }
        r.finish()?;
        Ok(IndexSegment { packs })
    }
}

/// Where a blob is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// Data key sealing it.
    pub key_id: DataKeyId,
    /// Data or tree.
    pub blob_type: BlobType,
    /// Flags.
    pub flags: u8,
    /// Offset in the pack.
    pub offset: u32,
    /// Sealed length.
    pub stored_len: u32,
    /// Plaintext length.
    pub raw_len: u32,
}

/// One in-memory entry: 48 bytes.
#[derive(Clone, Copy, Debug)]
struct Entry {
    id: [u8; 32],
    /// Pack number << 2 | tree bit << 1 | zstd bit.
    pack_bits: u32,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 48);

impl Entry {
    fn blob_type(&self) -> BlobType {
        if self.pack_bits & 2 != 0 {
            BlobType::Tree
        } else {
            BlobType::Data
        }
    }

    fn flags(&self) -> u8 {
        if self.pack_bits & 1 != 0 {
            FLAG_ZSTD
        } else {
            0
        }
    }
}
const MAX_PACKS: usize = 1 << 30;

/// Pack metadata shared by all entries of a pack.
#[derive(Clone, Copy, Debug)]
struct PackRef {
    id: PackId,
    key_id: DataKeyId,
}

/// The in-memory blob index.
#[derive(Default)]
pub struct Index {
    sorted: Vec<Entry>,
    packs: Vec<PackRef>,
    pack_numbers: HashMap<PackId, u32>,
    /// Blobs added since the last [`Index::commit_pending`] (this session)
    /// and not yet merged into `sorted`.
    pending: HashMap<BlobId, Entry>,
    /// The first pack number of this session: merged entries with a pack
    /// number from here on are still pending (a failed session drops them).
    session_start: Option<u32>,
    /// Segments loaded (or written by this handle): a refresh loads only
    /// the others.
    segments: HashSet<IndexId>,
    /// Pack numbers a pending GC round condemned: their blobs count as
    /// absent for deduplication (they are still read).
    condemned: HashSet<u32>,
}

/// One committed entry as [`Index::entries`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexedBlob {
    /// Position in the sorted array ([`Index::position`]).
    pub position: usize,
    /// The pack's number ([`Index::pack_id`]).
    pub pack: u32,
    /// The blob as its pack holds it.
    pub entry: PackEntry,
}

/// Pending blobs held in the hash map at most; then they are merged into
/// the sorted array (48 bytes each instead of about 130 in the map), so a
/// session that stores a million blobs does not double the index's RAM.
const PENDING_MERGE: usize = 65_536;

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn pack_number(&mut self, id: PackId, key_id: DataKeyId) -> Result<u32> {
        if let Some(n) = self.pack_numbers.get(&id) {
            return Ok(*n);
        }
        if self.packs.len() >= MAX_PACKS {
            return Err(Error::Internal("more than 2^30 packs".into()));
        }
        let n = self.packs.len() as u32;
        self.packs.push(PackRef { id, key_id });
        self.pack_numbers.insert(id, n);
        Ok(n)
    }

    fn entry(pack: u32, e: &PackEntry) -> Entry {
        let tree = u32::from(e.blob_type == BlobType::Tree);
        let zstd = u32::from(e.flags & FLAG_ZSTD != 0);
        Entry {
            id: e.id.0,
            pack_bits: pack << 2 | tree << 1 | zstd,
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
        }
    }

    /// Adds a segment's packs; call [`Index::finish_loading`] afterwards.
    ///
    /// # Errors
    /// When the pack count limit is reached.
    pub fn add_segment(&mut self, segment: &IndexSegment) -> Result<()> {
        for p in &segment.packs {
            let n = self.pack_number(p.id, p.key_id)?;
            self.sorted
                .extend(p.blobs.iter().map(|b| Self::entry(n, b)));
        }
        Ok(())
    }

    /// Makes room for about `blobs` more entries (one allocation instead of
    /// doublings while segments load).
    pub fn reserve(&mut self, blobs: usize) {
        self.sorted.reserve(blobs);
    }

    /// Adds a segment stored as `id` (see [`Index::add_segment`]) and
    /// remembers it as loaded.
    ///
    /// # Errors
    /// When the pack count limit is reached.
    pub fn add_named_segment(&mut self, id: IndexId, segment: &IndexSegment) -> Result<()> {
        self.segments.insert(id);
        self.add_segment(segment)
    }

    /// Remembers a segment whose entries are already in the index (one
    /// this handle wrote).
    pub fn note_segment(&mut self, id: IndexId) {
        self.segments.insert(id);
    }

    /// Whether the segment is loaded.
    pub fn has_segment(&self, id: &IndexId) -> bool {
        self.segments.contains(id)
    }

    /// The loaded segments.
    pub fn segment_ids(&self) -> impl Iterator<Item = &IndexId> {
        self.segments.iter()
    }

    /// Sorts the entries (and drops duplicate blobs) after loading.
    pub fn finish_loading(&mut self) {
        self.sorted.sort_unstable_by_key(|e| e.id);
        self.sorted.dedup_by(|a, b| a.id == b.id);
        self.sorted.shrink_to_fit();
    }

    /// [`Index::finish_loading`], keeping of each duplicated blob a copy in
    /// a pack that `shunned` does not name, when there is one.
    pub fn finish_loading_preferring(&mut self, shunned: impl Fn(&PackId) -> bool) {
        let shun: Vec<bool> = self.packs.iter().map(|p| shunned(&p.id)).collect();
        self.sorted.sort_unstable_by_key(|e| {
            let shunned = shun.get((e.pack_bits >> 2) as usize).copied();
            (e.id, shunned.unwrap_or(false))
        });
        self.sorted.dedup_by(|a, b| a.id == b.id);
        self.sorted.shrink_to_fit();
    }

    /// Marks the packs a pending GC round condemned: [`Index::contains`]
    /// no longer finds blobs that only they hold, so a backup stores them
    /// again instead of referring to packs about to go. Replaces the set
    /// given before.
    pub fn set_condemned(&mut self, packs: &HashSet<PackId>) {
        self.condemned = packs
            .iter()
            .filter_map(|p| self.pack_numbers.get(p).copied())
            .collect();
    }

    /// Records a blob written in this session (visible to lookups at once).
    ///
    /// # Errors
    /// When the pack count limit is reached.
    pub fn add_pending(&mut self, pack: PackId, key_id: DataKeyId, e: &PackEntry) -> Result<()> {
        self.session_start.get_or_insert(self.packs.len() as u32);
        let n = self.pack_number(pack, key_id)?;
        self.pending.insert(e.id, Self::entry(n, e));
        if self.pending.len() >= PENDING_MERGE {
            self.merge_pending();
        }
        Ok(())
    }

    /// Moves the hash map's entries into the sorted array (a stable sort
    /// finds the two sorted runs and merges them).
    fn merge_pending(&mut self) {
        let mut new: Vec<Entry> = self.pending.drain().map(|(_, e)| e).collect();
        new.sort_unstable_by_key(|e| e.id);
        self.sorted.extend(new);
        self.sorted.sort_by_key(|e| e.id);
        self.sorted.dedup_by(|a, b| a.id == b.id);
    }

    /// Makes this session's blobs permanent (after their index segment is stored).
    pub fn commit_pending(&mut self) {
        if !self.pending.is_empty() {
            self.merge_pending();
        }
        self.session_start = None;
    }

    /// Forgets this session's blobs and packs (the backup failed).
    pub fn discard_pending(&mut self) {
        self.pending.clear();
        if let Some(start) = self.session_start.take() {
            self.sorted.retain(|e| e.pack_bits >> 2 < start);
            for p in self.packs.drain(start as usize..) {
                self.pack_numbers.remove(&p.id);
            }
        }
    }

    fn find(&self, id: &BlobId) -> Option<&Entry> {
        self.sorted
            .binary_search_by(|e| e.id.cmp(&id.0))
            .ok()
            .and_then(|i| self.sorted.get(i))
            .or_else(|| self.pending.get(id))
    }

    /// Whether a write session's blobs are not yet committed.
    pub fn has_pending(&self) -> bool {
        self.session_start.is_some() || !self.pending.is_empty()
    }

    /// The packs marked by [`Index::set_condemned`].
    pub fn condemned_packs(&self) -> HashSet<PackId> {
        self.condemned
            .iter()
            .filter_map(|n| self.pack_id(*n))
            .collect()
    }

    /// Whether the blob is stored (or being stored by this session) in a
    /// pack no pending GC round condemned: whether a backup may refer to
    /// it instead of storing it.
    pub fn contains(&self, id: &BlobId) -> bool {
        // Checked per chunk of every backup: no hashing when no round is
        // pending (the usual case).
        self.find(id).is_some_and(|e| {
            self.condemned.is_empty() || !self.condemned.contains(&(e.pack_bits >> 2))
        })
    }

    /// The blob's position in the sorted array of committed entries.
    pub fn position(&self, id: &BlobId) -> Option<usize> {
        self.sorted.binary_search_by(|e| e.id.cmp(&id.0)).ok()
    }

    /// Every committed entry, in id order.
    pub fn entries(&self) -> impl Iterator<Item = IndexedBlob> + '_ {
        self.sorted
            .iter()
            .enumerate()
            .map(|(position, e)| IndexedBlob {
                position,
                pack: e.pack_bits >> 2,
                entry: PackEntry {
                    id: BlobId(e.id),
                    blob_type: e.blob_type(),
                    flags: e.flags(),
                    offset: e.offset,
                    stored_len: e.stored_len,
                    raw_len: e.raw_len,
                },
            })
    }

    /// The pack with this number.
    pub fn pack_id(&self, number: u32) -> Option<PackId> {
        self.packs.get(number as usize).map(|p| p.id)
    }

    /// The data key that sealed the pack with this number.
    pub fn pack_key_id(&self, number: u32) -> Option<DataKeyId> {
        self.packs.get(number as usize).map(|p| p.key_id)
    }

    /// The number of a pack.
    pub fn pack_number_of(&self, id: &PackId) -> Option<u32> {
        self.pack_numbers.get(id).copied()
    }

    /// Where the blob is.
    pub fn lookup(&self, id: &BlobId) -> Option<BlobLocation> {
        let e = self.find(id)?;
        let pack = self.packs.get((e.pack_bits >> 2) as usize)?;
        Some(BlobLocation {
            pack: pack.id,
            key_id: pack.key_id,
            blob_type: e.blob_type(),
            flags: e.flags(),
            offset: e.offset,
            stored_len: e.stored_len,
            raw_len: e.raw_len,
        })
    }

    /// Number of distinct blobs.
    pub fn len(&self) -> usize {
        self.sorted.len() + self.pending.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of packs referenced.
    pub fn pack_count(&self) -> usize {
        self.packs.len()
    }

    /// Heap bytes held by the committed entries and pack table.
    pub fn memory_bytes(&self) -> usize {
        self.sorted.capacity() * std::mem::size_of::<Entry>()
            + self.packs.capacity() * std::mem::size_of::<PackRef>()
            + self.pack_numbers.capacity() * (std::mem::size_of::<(PackId, u32)>() + 1)
    }

    /// Number of committed entries ([`Index::position`] is below it).
    pub fn committed_len(&self) -> usize {
        self.sorted.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn entry(i: u8, t: BlobType) -> PackEntry {
        PackEntry {
            id: BlobId([i; 32]),
            blob_type: t,
            flags: i & 1,
            offset: u32::from(i) * 100,
            stored_len: 60,
            raw_len: 50,
        }
    }

    #[test]
    fn segment_round_trip_and_truncation() {
        let seg = IndexSegment {
            packs: vec![
                IndexPack {
                    id: PackId([1; 32]),
                    key_id: DataKeyId([9; 16]),
                    blobs: vec![entry(1, BlobType::Data), entry(2, BlobType::Data)],
                },
                IndexPack {
                    id: PackId([2; 32]),
                    key_id: DataKeyId([9; 16]),
                    blobs: vec![entry(3, BlobType::Tree)],
                },
            ],
        };
        let bytes = seg.encode();
        assert_eq!(IndexSegment::decode(&bytes, "i").unwrap(), seg);
        for cut in 0..bytes.len() {
            assert!(IndexSegment::decode(&bytes[..cut], "i").is_err());
        }
    }

    #[test]
    fn lookups_sorted_and_pending() {
        let mut idx = Index::new();
        let seg = IndexSegment {
            packs: vec![IndexPack {
                id: PackId([1; 32]),
                key_id: DataKeyId([0; 16]),
                blobs: (1..=50).rev().map(|i| entry(i, BlobType::Data)).collect(),
            }],
        };
        idx.add_segment(&seg).unwrap();
        idx.finish_loading();
        let loc = idx.lookup(&BlobId([7; 32])).unwrap();
        assert_eq!(
            (loc.pack, loc.offset, loc.flags, loc.blob_type),
            (PackId([1; 32]), 700, 1, BlobType::Data)
        );
        assert!(!idx.contains(&BlobId([99; 32])));
        idx.add_pending(
            PackId([2; 32]),
            DataKeyId([0; 16]),
            &entry(99, BlobType::Tree),
        )
        .unwrap();
        assert_eq!(
            idx.lookup(&BlobId([99; 32])).unwrap().blob_type,
            BlobType::Tree
        );
        idx.discard_pending();
        assert!(!idx.contains(&BlobId([99; 32])));
        idx.add_pending(
            PackId([2; 32]),
            DataKeyId([0; 16]),
            &entry(99, BlobType::Tree),
        )
        .unwrap();
        idx.commit_pending();
        assert_eq!(idx.len(), 51);
        assert_eq!(idx.lookup(&BlobId([99; 32])).unwrap().pack, PackId([2; 32]));
    }

    /// Past `PENDING_MERGE`, pending blobs move into the sorted array: they
    /// stay visible, a failed session still drops every one of them (and
    /// its packs), and a committed one keeps them.
    #[test]
    fn merged_pending_blobs_are_discarded_or_committed_whole() {
        let id = |i: u32| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_be_bytes());
            b[31] = 1;
            BlobId(b)
        };
        let blob = |i: u32| PackEntry {
            id: id(i),
            ..entry(1, BlobType::Data)
        };
        let n = (PENDING_MERGE + PENDING_MERGE / 2) as u32;
        let mut idx = Index::new();
        idx.add_pending(PackId([1; 32]), DataKeyId([0; 16]), &blob(u32::MAX))
            .unwrap();
        idx.commit_pending();
        for round in 0..2 {
            for i in 0..n {
                let pack = PackId([2 + (i % 3) as u8; 32]);
                idx.add_pending(pack, DataKeyId([0; 16]), &blob(i)).unwrap();
            }
            assert!(idx.sorted.len() > PENDING_MERGE, "merged while pending");
            assert_eq!(idx.len(), n as usize + 1);
            assert!((0..n).step_by(997).all(|i| idx.contains(&id(i))));
            if round == 0 {
                idx.discard_pending();
                assert_eq!(idx.len(), 1);
                assert_eq!(idx.pack_count(), 1);
                assert!(!idx.contains(&id(5)) && idx.contains(&id(u32::MAX)));
            }
        }
        idx.commit_pending();
        idx.discard_pending();
        assert_eq!(idx.len(), n as usize + 1, "a commit is final");
        assert_eq!(idx.lookup(&id(4)).unwrap().pack, PackId([3; 32]));
    }
}
