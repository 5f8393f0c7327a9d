//! Pack files: many sealed blobs of one type in one object.
//!
//! Layout:
//! ```text
//! preamble(24) || blob 0 || blob 1 || ... || sealed header || header length (u32 LE)
//! ```
//! The sealed header lists every blob (type, flags, stored length, plaintext
//! length, id) in file order, so offsets are implied. It is sealed with the
//! preamble and the pack's name as associated data. A pack can be read blob
//! by blob with byte-range requests using the index alone.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use bytes::Bytes;

use crate::blob::SealedBlob;
use crate::error::{Error, Result};
use crate::format::{self, ObjectKind, PREAMBLE_LEN, Reader};
use crate::format::{BlobType, FLAG_ZSTD};
use crate::id::{BlobId, DataKeyId, PackId};
use crate::keyring::{DataKey, Keyring};

/// Encoded size of one header entry.
pub const HEADER_ENTRY_LEN: usize = 1 + 1 + 4 + 4 + 32;
/// Bytes after the last blob besides the entries: count, seal, length field.
pub const HEADER_FIXED_LEN: usize = 4 + crate::keyring::SEAL_OVERHEAD + 4;

/// One blob in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PackEntry {
    /// Blob id.
    pub id: BlobId,
    /// Data or tree.
    pub blob_type: BlobType,
    /// Blob flags (compression).
    pub flags: u8,
    /// Offset of the sealed blob in the pack.
    pub offset: u32,
    /// Length of the sealed blob.
    pub stored_len: u32,
    /// Length of the plaintext.
    pub raw_len: u32,
}

/// Accumulates sealed blobs of one type into a pack.
pub struct PackWriter {
    id: PackId,
    blob_type: BlobType,
    key_id: DataKeyId,
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

/// A pack ready to upload.
pub struct FinishedPack {
    /// Pack id (random).
    pub id: PackId,
    /// Key that sealed its blobs and header.
    pub key_id: DataKeyId,
    /// The whole file.
    pub bytes: Bytes,
    /// Its blobs.
    pub entries: Vec<PackEntry>,
}

impl FinishedPack {
    /// What its blobs are (a pack holds one type).
    pub fn class(&self) -> BlobType {
        self.entries.first().map_or(BlobType::Data, |e| e.blob_type)
    }
}

impl PackWriter {
    /// A new, empty pack with a random id.
    pub fn new(blob_type: BlobType, key: &DataKey, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity);
        buf.extend_from_slice(&format::preamble(ObjectKind::Pack, key.id()));
        PackWriter {
            id: PackId::random(),
            blob_type,
            key_id: key.id(),
            buf,
            entries: Vec::new(),
        }
    }

    /// Pack id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no blob was added yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends a blob; returns its entry.
    ///
    /// # Errors
    /// [`Error::Internal`] when the blob type does not match the pack or the
    /// pack would exceed 4 GiB.
    pub fn add(&mut self, blob: &SealedBlob) -> Result<PackEntry> {
        if blob.blob_type != self.blob_type {
            return Err(Error::Internal(format!(
                "{:?} blob added to a {:?} pack",
                blob.blob_type, self.blob_type
            )));
        }
        let too_big = || Error::Internal("pack exceeds 4 GiB".into());
        let offset = u32::try_from(self.buf.len()).map_err(|_| too_big())?;
        let stored_len = u32::try_from(blob.bytes.len()).map_err(|_| too_big())?;
        offset.checked_add(stored_len).ok_or_else(too_big)?;
        self.buf.extend_from_slice(&blob.bytes);
        let entry = PackEntry {
            id: blob.id,
            blob_type: blob.blob_type,
            flags: blob.flags,
            offset,
            stored_len,
            raw_len: blob.raw_len,
        };
        self.entries.push(entry);
        Ok(entry)
    }

    /// Seals the header and returns the complete pack.
    pub fn finish(mut self, keyring: &Keyring) -> Result<FinishedPack> {
        let key = keyring
            .data_key(self.key_id)
            .ok_or_else(|| Error::Internal("pack key left the keyring".into()))?;
        let plain = encode_header(&self.entries);
        let pre = self.buf.get(..PREAMBLE_LEN).unwrap_or_default().to_vec();
        let start = self.buf.len();
        key.seal_into(&header_aad(&pre, self.id), &plain, &mut self.buf);
        let sealed_len = u32::try_from(self.buf.len() - start)
            .map_err(|_| Error::Internal("pack header too large".into()))?;
        self.buf.extend_from_slice(&sealed_len.to_le_bytes());
        Ok(FinishedPack {
            id: self.id,
            key_id: self.key_id,
            bytes: Bytes::from(self.buf),
            entries: self.entries,
        })
    }
}

fn header_aad(preamble: &[u8], id: PackId) -> Vec<u8> {
    let mut aad = preamble.to_vec();
    aad.extend_from_slice(ObjectKind::Pack.object_name(&id.to_hex()).as_bytes());
    aad
}

/// Plaintext of a pack header: count (u32 LE), then one entry per blob.
pub fn encode_header(entries: &[PackEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * HEADER_ENTRY_LEN);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        out.push(e.blob_type as u8);
        out.push(e.flags);
        out.extend_from_slice(&e.stored_len.to_le_bytes());
        out.extend_from_slice(&e.raw_len.to_le_bytes());
        out.extend_from_slice(e.id.as_bytes());
    }
    out
}

/// Decodes a pack header's plaintext; offsets are reconstructed from the
/// stored lengths and must end exactly at `blobs_end`.
///
/// # Errors
/// [`Error::Corrupt`] naming `object`.
pub fn decode_header(plain: &[u8], blobs_end: u64, object: &str) -> Result<Vec<PackEntry>> {
    let mut r = Reader::new(plain, object);
    let count = r.u32()? as usize;
    if count.checked_mul(HEADER_ENTRY_LEN) != Some(r.remaining()) {
        return Err(Error::corrupt(
            object,
            format!(
                "header claims {count} blobs but holds {} bytes",
                r.remaining()
            ),
        ));
    }
    let mut entries = Vec::with_capacity(count);
    let mut offset = PREAMBLE_LEN as u64;
    for _ in 0..count {
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
        let stored_len = r.u32()?;
        let raw_len = r.u32()?;
        let id = BlobId(r.array()?);
        if u64::from(stored_len) < crate::keyring::SEAL_OVERHEAD as u64 {
            return Err(Error::corrupt(
                object,
                format!("blob {id} is shorter than its seal"),
            ));
        }
        entries.push(PackEntry {
            id,
            blob_type,
            flags,
            offset: u32::try_from(offset)
                .map_err(|_| Error::corrupt(object, "blob offsets exceed 4 GiB"))?,
            stored_len,
            raw_len,
        });
        offset += u64::from(stored_len);
    }
    r.finish()?;
    if offset != blobs_end {
        return Err(Error::corrupt(
            object,
            format!("blobs end at {offset}, header starts at {blobs_end}"),
        ));
    }
    Ok(entries)
}

/// Length of the trailer (sealed header + length field) a pack of `len`
/// bytes ends with, read from its last four bytes.
///
/// # Errors
/// [`Error::Corrupt`] when the length is impossible.
pub fn trailer_len(last4: &[u8], pack_len: u64, object: &str) -> Result<u64> {
    let n: [u8; 4] = last4
        .try_into()
        .map_err(|_| Error::corrupt(object, "truncated: no header length"))?;
    let sealed = u64::from(u32::from_le_bytes(n));
    let trailer = sealed + 4;
    if trailer + PREAMBLE_LEN as u64 > pack_len || sealed < crate::keyring::SEAL_OVERHEAD as u64 + 4
    {
        return Err(Error::corrupt(
            object,
            format!("header length {sealed} does not fit a {pack_len}-byte pack"),
        ));
    }
    Ok(trailer)
}

/// Opens a pack's header given its preamble and trailer bytes.
///
/// # Errors
/// [`Error::Corrupt`] / [`Error::UnsupportedVersion`] naming the pack.
pub fn open_header(
    keyring: &Keyring,
    id: PackId,
    preamble: &[u8],
    trailer: &[u8],
    pack_len: u64,
) -> Result<(DataKeyId, Vec<PackEntry>)> {
    let object = ObjectKind::Pack.object_name(&id.to_hex());
    let key_id = format::check_preamble(preamble, ObjectKind::Pack, &object)?;
    let key = keyring.data_key(key_id).ok_or_else(|| {
        Error::corrupt(
            &object,
            format!("sealed with data key {key_id}, not in the keyring"),
        )
    })?;
    let sealed = trailer
        .get(..trailer.len().saturating_sub(4))
        .ok_or_else(|| Error::corrupt(&object, "truncated trailer"))?;
    let pre = preamble.get(..PREAMBLE_LEN).unwrap_or_default();
    let plain = key.open(&header_aad(pre, id), sealed).ok_or_else(|| {
        Error::corrupt(
            &object,
            "pack header authentication failed (modified, damaged or truncated)",
        )
    })?;
    let blobs_end = pack_len - trailer.len() as u64;
    Ok((key_id, decode_header(&plain, blobs_end, &object)?))
}

/// Opens the header of a whole pack held in memory.
///
/// # Errors
/// As [`open_header`].
pub fn open_header_of(
    keyring: &Keyring,
    id: PackId,
    pack: &[u8],
) -> Result<(DataKeyId, Vec<PackEntry>)> {
    let object = ObjectKind::Pack.object_name(&id.to_hex());
    let len = pack.len() as u64;
    let last4 = pack.get(pack.len().saturating_sub(4)..).unwrap_or_default();
    let trailer = trailer_len(last4, len, &object)?;
    let tail = pack
        .get(pack.len() - trailer as usize..)
        .unwrap_or_default();
    open_header(keyring, id, pack, tail, len)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::blob;

    #[test]
    fn reserved_blob_flags_are_refused_in_a_pack_header() {
        let ring = Keyring::generate();
        let data = b"some bytes";
        let id = ring.blob_id(data);
        let sealed = blob::seal(ring.write_key(), id, BlobType::Data, data, 3).unwrap();
        let mut w = PackWriter::new(BlobType::Data, ring.write_key(), 0);
        let mut entry = w.add(&sealed).unwrap();
        let end = u64::from(entry.offset) + u64::from(entry.stored_len);
        assert!(decode_header(&encode_header(std::slice::from_ref(&entry)), end, "p").is_ok());
        for reserved in [0x02u8, 0x80] {
            entry.flags = FLAG_ZSTD | reserved;
            let err = decode_header(&encode_header(std::slice::from_ref(&entry)), end, "p")
                .unwrap_err()
                .to_string();
            assert!(err.contains("unknown blob flags"), "{err}");
        }
    }

    #[test]
    fn pack_round_trip_and_every_flipped_byte_detected() {
        let ring = Keyring::generate();
        let key = ring.write_key();
        let mut w = PackWriter::new(BlobType::Data, key, 0);
        let mut blobs = Vec::new();
        for i in 0..3u8 {
            let data = vec![i; 100 + usize::from(i)];
            let id = ring.blob_id(&data);
            let s = blob::seal(key, id, BlobType::Data, &data, 3).unwrap();
            w.add(&s).unwrap();
            blobs.push(data);
        }
        let id = w.id();
        let p = w.finish(&ring).unwrap();
        let (_, entries) = open_header_of(&ring, id, &p.bytes).unwrap();
        assert_eq!(entries, p.entries);
        for (e, data) in entries.iter().zip(&blobs) {
            let sealed = &p.bytes[e.offset as usize..(e.offset + e.stored_len) as usize];
            let h = blob::BlobHeader {
                id: e.id,
                blob_type: e.blob_type,
                flags: e.flags,
                raw_len: e.raw_len,
            };
            assert_eq!(&blob::open(&ring, key, &h, sealed, "p").unwrap(), data);
        }
        // A flip in the preamble or header is caught by the header; a flip
        // in a blob by that blob.
        for i in 0..p.bytes.len() {
            let mut bad = p.bytes.to_vec();
            bad[i] ^= 0x01;
            let header_ok = open_header_of(&ring, id, &bad).is_ok();
            let blobs_ok = entries.iter().all(|e| {
                let sealed = &bad[e.offset as usize..(e.offset + e.stored_len) as usize];
                let h = blob::BlobHeader {
                    id: e.id,
                    blob_type: e.blob_type,
                    flags: e.flags,
                    raw_len: e.raw_len,
                };
                blob::open(&ring, key, &h, sealed, "p").is_ok()
            });
            assert!(!(header_ok && blobs_ok), "flip at byte {i} went unnoticed");
        }
        // Another pack name does not open this header.
        assert!(open_header_of(&ring, PackId::random(), &p.bytes).is_err());
    }
}
