//! Magic numbers, object kinds and format versions: every constant of the
//! on-disk format lives here, with its meaning. `docs/FORMAT.md` is the
//! specification; these values must never change once written.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use crate::error::{Error, Result};
use crate::id::DataKeyId;

/// First four bytes of every stored object. Never change.
pub const MAGIC: [u8; 4] = *b"TSRA";

/// Newest object format version this build writes and reads.
pub const VERSION_CURRENT: u8 = 1;
/// Oldest object format version this build reads.
pub const VERSION_OLDEST: u8 = 1;

/// Length of the plain header that starts every key slot: magic, kind,
/// version, two reserved bytes.
pub const HEADER_LEN: usize = 8;
/// Length of the preamble of every sealed object (config, pack, index,
/// snapshot): header plus the 16-byte id of the data key that sealed it.
pub const PREAMBLE_LEN: usize = HEADER_LEN + DataKeyId::LEN;

/// The kind byte at offset 4 of every object. Never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectKind {
    /// `config`: repository parameters (sealed JSON).
    Config = 1,
    /// `keys/<id>`: a key slot wrapping the keyring (plain JSON + checksum).
    Key = 2,
    /// `packs/<xx>/<id>`: blobs plus a sealed pack header.
    Pack = 3,
    /// `index/<id>`: an index segment (sealed binary).
    Index = 4,
    /// `snapshots/<id>`: a snapshot (sealed JSON), or a tombstone.
    Snapshot = 5,
    /// `sessions/<id>`: a writer's session marker (sealed JSON).
    Session = 6,
    /// `gc/<round>-plan|open|done`: a garbage-collection round (sealed binary).
    Gc = 7,
}

impl ObjectKind {
    /// Every kind, in listing order.
    pub const ALL: [ObjectKind; 7] = [
        ObjectKind::Config,
        ObjectKind::Key,
        ObjectKind::Pack,
        ObjectKind::Index,
        ObjectKind::Snapshot,
        ObjectKind::Session,
        ObjectKind::Gc,
    ];

    fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == b)
    }

    /// The directory (object-store prefix) holding objects of this kind.
    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Config => "",
            ObjectKind::Key => "keys",
            ObjectKind::Pack => "packs",
            ObjectKind::Index => "index",
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::Session => "sessions",
            ObjectKind::Gc => "gc",
        }
    }

    /// The full object name for an id (hex) of this kind, e.g. `packs/ab/ab12…`.
    pub fn object_name(self, name: &str) -> String {
        match self {
            ObjectKind::Config => "config".to_string(),
            ObjectKind::Pack => {
                let fan = name.get(..2).unwrap_or(name);
                format!("packs/{fan}/{name}")
            }
            other => format!("{}/{name}", other.dir()),
        }
    }
}

/// Blob flag: the plaintext was compressed with zstd (FORMAT.md §5).
/// The other bits are reserved: decoders reject a blob that sets one.
pub const FLAG_ZSTD: u8 = 0x01;

/// What a blob holds (its type byte). Data and tree blobs go to separate
/// packs. Never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[repr(u8)]
pub enum BlobType {
    /// A chunk of a stream or file.
    Data = 0,
    /// A tree (directory listing) blob.
    Tree = 1,
}

impl BlobType {
    /// Decodes the type byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(BlobType::Data),
            1 => Some(BlobType::Tree),
            _ => None,
        }
    }
}

/// Writes the 8-byte header for `kind` at the current version.
pub fn header(kind: ObjectKind) -> [u8; HEADER_LEN] {
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        kind as u8,
        VERSION_CURRENT,
        0,
        0,
    ]
}

/// Writes the 24-byte preamble of a sealed object.
pub fn preamble(kind: ObjectKind, key: DataKeyId) -> [u8; PREAMBLE_LEN] {
    let mut out = [0u8; PREAMBLE_LEN];
    let (h, k) = out.split_at_mut(HEADER_LEN);
    h.copy_from_slice(&header(kind));
    k.copy_from_slice(key.as_bytes());
    out
}

/// Checks the 8-byte header of `bytes` for `kind` and returns the version.
///
/// # Errors
/// [`Error::Corrupt`] for a bad magic, kind or reserved bytes;
/// [`Error::UnsupportedVersion`] for a version outside this build's range.
pub fn check_header(bytes: &[u8], kind: ObjectKind, object: &str) -> Result<u8> {
    let h = bytes.get(..HEADER_LEN).ok_or_else(|| {
        Error::corrupt(
            object,
            format!("truncated: {} bytes, shorter than the header", bytes.len()),
        )
    })?;
    if h.get(..4) != Some(&MAGIC[..]) {
        return Err(Error::corrupt(object, "bad magic (not a tessera object)"));
    }
    let kind_byte = h.get(4).copied().unwrap_or_default();
    if ObjectKind::from_byte(kind_byte) != Some(kind) {
        return Err(Error::corrupt(
            object,
            format!(
                "object kind byte {kind_byte} where {} ({kind:?}) was expected",
                kind as u8
            ),
        ));
    }
    let version = h.get(5).copied().unwrap_or_default();
    if !(VERSION_OLDEST..=VERSION_CURRENT).contains(&version) {
        return Err(Error::UnsupportedVersion {
            object: object.to_string(),
            found: version.into(),
            oldest: VERSION_OLDEST.into(),
            newest: VERSION_CURRENT.into(),
        });
    }
    if h.get(6..8) != Some(&[0, 0][..]) {
        return Err(Error::corrupt(object, "reserved header bytes are not zero"));
    }
    Ok(version)
}

/// Checks a sealed object's preamble and returns the data key id.
///
/// # Errors
/// As [`check_header`], plus truncation before the key id.
pub fn check_preamble(bytes: &[u8], kind: ObjectKind, object: &str) -> Result<DataKeyId> {
    check_header(bytes, kind, object)?;
    bytes
        .get(HEADER_LEN..PREAMBLE_LEN)
        .and_then(DataKeyId::from_slice)
        .ok_or_else(|| Error::corrupt(object, "truncated in the preamble"))
}

/// A cursor over untrusted bytes: every read is bounds-checked and a short
/// read is an error naming the object, never a panic.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    object: &'a str,
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`; errors name `object`.
    pub fn new(bytes: &'a [u8], object: &'a str) -> Self {
        Reader {
            bytes,
            pos: 0,
            object,
        }
    }

    /// Takes the next `n` bytes.
    ///
    /// # Errors
    /// [`Error::Corrupt`] when fewer than `n` bytes remain.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        let Some(end) = end else {
            return Err(Error::corrupt(
                self.object,
                format!(
                    "truncated: needed {n} bytes at offset {}, {} left",
                    self.pos,
                    self.remaining()
                ),
            ));
        };
        let out = self.bytes.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(out)
    }

    /// Reads a little-endian u32.
    ///
    /// # Errors
    /// On truncation.
    pub fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// Reads one byte.
    ///
    /// # Errors
    /// On truncation.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?.first().copied().unwrap_or_default())
    }

    /// Reads a fixed-size array.
    ///
    /// # Errors
    /// On truncation.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().unwrap_or([0u8; N]))
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// Fails unless every byte was consumed.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the count of trailing bytes.
    pub fn finish(self) -> Result<()> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(Error::corrupt(
                self.object,
                format!("{} unexpected trailing bytes", self.remaining()),
            ))
        }
    }

    /// The object name errors use.
    pub fn object(&self) -> &'a str {
        self.object
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejections() {
        let h = header(ObjectKind::Snapshot);
        assert_eq!(check_header(&h, ObjectKind::Snapshot, "x").unwrap(), 1);
        assert!(matches!(
            check_header(&h, ObjectKind::Pack, "x"),
            Err(Error::Corrupt { .. })
        ));
        let mut future = h;
        future[5] = 9;
        assert!(matches!(
            check_header(&future, ObjectKind::Snapshot, "x"),
            Err(Error::UnsupportedVersion { found: 9, .. })
        ));
        assert!(check_header(&h[..5], ObjectKind::Snapshot, "x").is_err());
    }

    #[test]
    fn object_names() {
        assert_eq!(ObjectKind::Pack.object_name("abcd"), "packs/ab/abcd");
        assert_eq!(ObjectKind::Snapshot.object_name("ff"), "snapshots/ff");
        assert_eq!(ObjectKind::Config.object_name(""), "config");
    }

    #[test]
    fn reader_is_bounds_checked() {
        let mut r = Reader::new(&[1, 0, 0, 0, 7], "obj");
        assert_eq!(r.u32().unwrap(), 1);
        assert!(r.u32().is_err());
        assert_eq!(r.u8().unwrap(), 7);
        r.finish().unwrap();
    }
}
