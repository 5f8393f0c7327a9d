//! Blobs: compressed (when it helps) and sealed chunks of data or trees.
//!
//! A stored blob is `nonce(24) || ciphertext || tag(16)`; the associated data
//! is `type || flags || blob id`, so a blob cannot be passed off as another
//! blob, another type or another compression, and its id is checked against
//! the keyed hash of the plaintext on every read.

use std::cell::RefCell;

use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::keyring::{DataKey, Keyring, SEAL_OVERHEAD};

pub use crate::format::{BlobType, FLAG_ZSTD};

/// A sealed blob, ready to be appended to a pack.
pub struct SealedBlob {
    /// The id (keyed hash of the plaintext).
    pub id: BlobId,
    /// Data or tree.
    pub blob_type: BlobType,
    /// [`FLAG_ZSTD`] or 0.
    pub flags: u8,
    /// Length of the plaintext.
    pub raw_len: u32,
    /// `nonce || ciphertext || tag`.
    pub bytes: Vec<u8>,
}

fn aad(blob_type: BlobType, flags: u8, id: &BlobId) -> [u8; 34] {
    let mut a = [0u8; 34];
    a[0] = blob_type as u8;
    a[1] = flags;
    a[2..].copy_from_slice(id.as_bytes());
    a
}

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
}

fn compress(plaintext: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        let (_, c) = slot.as_mut()?;
        c.compress(plaintext).ok()
    })
}

/// Compresses (level 0 = never) and seals `plaintext` as blob `id`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a blob larger than 4 GiB.
pub fn seal(
    key: &DataKey,
    id: BlobId,
    blob_type: BlobType,
    plaintext: &[u8],
    level: i32,
) -> Result<SealedBlob> {
    let raw_len = u32::try_from(plaintext.len()).map_err(|_| {
        Error::InvalidArgument(format!("blob of {} bytes exceeds 4 GiB", plaintext.len()))
    })?;
    let compressed = if level > 0 {
        compress(plaintext, level)
    } else {
        None
    };
    let (flags, body): (u8, &[u8]) = match &compressed {
        Some(c) if c.len() < plaintext.len() => (FLAG_ZSTD, c),
        _ => (0, plaintext),
    };
    let mut bytes = Vec::with_capacity(body.len() + SEAL_OVERHEAD);
    key.seal_into(&aad(blob_type, flags, &id), body, &mut bytes);
    Ok(SealedBlob {
        id,
        blob_type,
        flags,
        raw_len,
        bytes,
    })
}

/// Where a blob is, as far as opening it needs to know.
#[derive(Clone, Copy, Debug)]
pub struct BlobHeader {
    /// Expected id.
    pub id: BlobId,
    /// Expected type.
    pub blob_type: BlobType,
    /// Flags.
    pub flags: u8,
    /// Plaintext length.
    pub raw_len: u32,
}

/// Decompresses `body` into `out` (replacing what it held) with one
/// context per thread (making a context per blob costs more than
/// decompressing a small one).
fn decompress_into(body: &[u8], raw_len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
    thread_local! {
        static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { RefCell::new(None) };
    }
    DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dctx = match slot.as_mut() {
            Some(d) => d,
            None => slot.insert(zstd::bulk::Decompressor::new()?),
        };
        out.clear();
        out.reserve(raw_len);
        // Output is bounded by the capacity: at least `raw_len`, and a
        // longer result fails the length check below.
        dctx.decompress_to_buffer(body, out).map(|_| ())
    })
}

/// Buffers for opening blobs: the decrypted body and the plaintext.
#[derive(Default)]
pub struct OpenBuffers {
    body: Vec<u8>,
    plain: Vec<u8>,
}

/// Largest buffer a thread keeps between blobs (more than any chunk).
const KEPT_BUFFER: usize = 16 << 20;

thread_local! {
    static OPEN_BUFFERS: RefCell<OpenBuffers> = RefCell::new(OpenBuffers::default());
}

/// Opens a sealed blob, decompresses it and verifies its id, into
/// `bufs`; returns the buffer that holds the plaintext.
///
/// # Errors
/// [`Error::Corrupt`] naming `object` (the pack) and the blob.
pub fn open_into<'b>(
    keyring: &Keyring,
    key: &DataKey,
    h: &BlobHeader,
    sealed: &[u8],
    object: &str,
    bufs: &'b mut OpenBuffers,
) -> Result<&'b mut Vec<u8>> {
    let name = || format!("{object} blob {}", h.id);
    if !key.open_into(&aad(h.blob_type, h.flags, &h.id), sealed, &mut bufs.body) {
        return Err(Error::corrupt(
            name(),
            "authentication failed (modified or damaged bytes)",
        ));
    }
    let plain = if h.flags & FLAG_ZSTD != 0 {
        decompress_into(&bufs.body, h.raw_len as usize, &mut bufs.plain)
            .map_err(|e| Error::corrupt(name(), format!("zstd: {e}")))?;
        &mut bufs.plain
    } else {
        &mut bufs.body
    };
    if plain.len() != h.raw_len as usize {
        return Err(Error::corrupt(
            name(),
            format!(
                "plaintext is {} bytes, index says {}",
                plain.len(),
                h.raw_len
            ),
        ));
    }
    if keyring.blob_id(plain) != h.id {
        return Err(Error::corrupt(
            name(),
            "content does not hash to the blob id",
        ));
    }
    Ok(plain)
}

/// Opens a sealed blob, decompresses it and verifies its id.
///
/// # Errors
/// [`Error::Corrupt`] naming `object` (the pack) and the blob.
pub fn open(
    keyring: &Keyring,
    key: &DataKey,
    h: &BlobHeader,
    sealed: &[u8],
    object: &str,
) -> Result<Vec<u8>> {
    let mut bufs = OpenBuffers::default();
    open_into(keyring, key, h, sealed, object, &mut bufs).map(std::mem::take)
}

/// Opens a blob like [`open`] and lends its plaintext to `f`, in buffers
/// the thread reuses from blob to blob (no allocation, no page faults
/// on fresh memory). `f` may open blobs itself: it then gets new buffers.
///
/// # Errors
/// As [`open`].
pub fn open_with<R>(
    keyring: &Keyring,
    key: &DataKey,
    h: &BlobHeader,
    sealed: &[u8],
    object: &str,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R> {
    let mut bufs = OPEN_BUFFERS.with(RefCell::take);
    let result = open_into(keyring, key, h, sealed, object, &mut bufs).map(|p| f(p));
    if bufs.body.capacity().max(bufs.plain.capacity()) <= KEPT_BUFFER {
        OPEN_BUFFERS.with(|b| b.replace(bufs));
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compressible_and_incompressible() {
        let ring = Keyring::generate();
        let key = ring.write_key();
        let text = b"hello hello hello hello hello hello hello hello".repeat(100);
        let id = ring.blob_id(&text);
        let s = seal(key, id, BlobType::Data, &text, 3).unwrap();
        assert_eq!(s.flags, FLAG_ZSTD);
        assert!(s.bytes.len() < text.len());
        let h = BlobHeader {
            id,
            blob_type: BlobType::Data,
            flags: s.flags,
            raw_len: s.raw_len,
        };
        assert_eq!(open(&ring, key, &h, &s.bytes, "p").unwrap(), text);

        let mut noise = vec![0u8; 5000];
        blake3::Hasher::new().finalize_xof().fill(&mut noise);
        let id = ring.blob_id(&noise);
        let s = seal(key, id, BlobType::Data, &noise, 3).unwrap();
        assert_eq!(s.flags, 0, "incompressible data is stored raw");
        let h = BlobHeader {
            id,
            blob_type: BlobType::Data,
            flags: 0,
            raw_len: s.raw_len,
        };
        assert_eq!(open(&ring, key, &h, &s.bytes, "p").unwrap(), noise);
        // Claiming another type or flags fails authentication.
        let wrong = BlobHeader {
            blob_type: BlobType::Tree,
            ..h
        };
        assert!(open(&ring, key, &wrong, &s.bytes, "p").is_err());
    }
}
