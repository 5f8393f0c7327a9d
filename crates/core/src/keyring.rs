//! Keys and authenticated encryption.
//!
//! The repository's secrets form a [`Keyring`]: the id key (keyed BLAKE3 for
//! blob ids), the chunker key (derives the CDC gear table) and one or more
//! data keys (XChaCha20-Poly1305). Every sealed object records, in its
//! preamble, the 16-byte id of the data key that sealed it, so a keyring can
//! hold several generations of data keys (master-key rotation) and, later,
//! sealed per-session keys (put-only clients); see `docs/FORMAT.md`.

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::id::{BlobId, DataKeyId, random_bytes};

/// Nonce length of XChaCha20-Poly1305.
pub const NONCE_LEN: usize = 24;
/// Tag length of Poly1305.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed message adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;

/// One data-encryption key with its id.
#[derive(Clone)]
pub struct DataKey {
    id: DataKeyId,
    raw: Zeroizing<[u8; 32]>,
    cipher: XChaCha20Poly1305,
}

impl DataKey {
    fn new(id: DataKeyId, raw: [u8; 32]) -> Self {
        let cipher = XChaCha20Poly1305::new(&raw.into());
        DataKey {
            id,
            raw: Zeroizing::new(raw),
            cipher,
        }
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        Self::new(DataKeyId::random(), random_bytes())
    }

    /// The key's id, recorded in every object it seals.
    pub fn id(&self) -> DataKeyId {
        self.id
    }

    /// Appends `nonce || ciphertext || tag` of `plaintext` to `out`.
    pub fn seal_into(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) {
        let nonce: [u8; NONCE_LEN] = random_bytes();
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let body = out.get_mut(start..).unwrap_or_default();
        // Encryption fails only for messages over 256 GiB, which no caller builds.
        #[allow(clippy::expect_used)]
        let tag = self
            .cipher
            .encrypt_inout_detached(&XNonce::from(nonce), aad, body.into())
            .expect("XChaCha20-Poly1305 message too long");
        out.extend_from_slice(tag.as_slice());
    }

    /// Seals `plaintext` into a new buffer.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        self.seal_into(aad, plaintext, &mut out);
        out
    }

    /// Opens `nonce || ciphertext || tag`; `None` when authentication fails.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.open_into(aad, sealed, &mut out).then_some(out)
    }

    /// Opens `nonce || ciphertext || tag` into `out` (replacing what it
    /// held, reusing its allocation); false when authentication fails.
    /// The plaintext goes straight into `out`, with no copy of the
    /// ciphertext first.
    pub fn open_into(&self, aad: &[u8], sealed: &[u8], out: &mut Vec<u8>) -> bool {
        if sealed.len() < SEAL_OVERHEAD {
            return false;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ct, tag) = rest.split_at(rest.len() - TAG_LEN);
        let (Ok(nonce), Ok(tag)) = (
            <[u8; NONCE_LEN]>::try_from(nonce),
            <[u8; TAG_LEN]>::try_from(tag),
        ) else {
            return false;
        };
        // Stale bytes are overwritten; only growth is zero-filled.
        out.resize(ct.len(), 0);
        let Ok(buf) = InOutBuf::new(ct, out.as_mut_slice()) else {
            return false;
        };
        self.cipher
            .decrypt_inout_detached(&XNonce::from(nonce), aad, buf, &tag.into())
            .is_ok()
    }
}

/// The repository's secrets. Serialized only inside a sealed key slot.
#[derive(Clone)]
pub struct Keyring {
    id_key: Zeroizing<[u8; 32]>,
    chunker_key: Zeroizing<[u8; 32]>,
    data_keys: Vec<DataKey>,
    current: usize,
}

/// Serialized form of a keyring (inside a sealed key slot).
#[derive(Serialize, Deserialize)]
struct KeyringJson {
    version: u32,
    id_key: String,
    chunker_key: String,
    data_keys: Vec<DataKeyJson>,
    write_key: DataKeyId,
}

#[derive(Serialize, Deserialize)]
struct DataKeyJson {
    id: DataKeyId,
    key: String,
}

impl Keyring {
    /// A fresh keyring with random keys.
    pub fn generate() -> Self {
        Keyring {
            id_key: Zeroizing::new(random_bytes()),
            chunker_key: Zeroizing::new(random_bytes()),
            data_keys: vec![DataKey::generate()],
            current: 0,
        }
    }

    /// A new keyring with this one's id and chunker keys and a fresh data
    /// key: a repository made with it cuts and names chunks exactly as
    /// this one does (so copies between them send only missing blobs and
    /// keep tree ids), while nothing sealed in one opens in the other.
    pub fn generate_sharing_ids(&self) -> Self {
        Keyring {
            id_key: self.id_key.clone(),
            chunker_key: self.chunker_key.clone(),
            data_keys: vec![DataKey::generate()],
            current: 0,
        }
    }

    /// Keyed BLAKE3 of `data`: the blob id.
    pub fn blob_id(&self, data: &[u8]) -> BlobId {
        BlobId(*blake3::keyed_hash(&self.id_key, data).as_bytes())
    }

    /// The secret from which the chunker's gear table is derived.
    pub fn chunker_key(&self) -> &[u8; 32] {
        &self.chunker_key
    }

    /// The data key new objects are sealed with.
    pub fn write_key(&self) -> &DataKey {
        // `current` is validated on construction and decode.
        #[allow(clippy::indexing_slicing)]
        &self.data_keys[self.current]
    }

    /// The data key with this id, if the keyring holds it.
    pub fn data_key(&self, id: DataKeyId) -> Option<&DataKey> {
        self.data_keys.iter().find(|k| k.id == id)
    }

    /// Serializes the keyring (secret material: only ever stored sealed).
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let json = KeyringJson {
            version: 1,
            id_key: hex::encode(*self.id_key),
            chunker_key: hex::encode(*self.chunker_key),
            data_keys: self
                .data_keys
                .iter()
                .map(|k| DataKeyJson {
                    id: k.id,
                    key: hex::encode(*k.raw),
                })
                .collect(),
            write_key: self.write_key().id,
        };
        #[allow(clippy::expect_used)]
        Zeroizing::new(serde_json::to_vec(&json).expect("keyring serializes"))
    }

    /// Parses a keyring serialized by [`Keyring::to_json`].
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `object` on any malformed field.
    pub fn from_json(bytes: &[u8], object: &str) -> Result<Self> {
        let json: KeyringJson = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(object, format!("keyring does not decode: {e}")))?;
        if json.version != 1 {
            return Err(Error::UnsupportedVersion {
                object: format!("{object} (keyring)"),
                found: json.version,
                oldest: 1,
                newest: 1,
            });
        }
        let key32 = |s: &str, what: &str| -> Result<[u8; 32]> {
            let mut out = [0u8; 32];
            hex::decode_to_slice(s, &mut out).map_err(|e| {
                Error::corrupt(object, format!("keyring {what} is not 32 hex bytes: {e}"))
            })?;
            Ok(out)
        };
        let mut data_keys = Vec::with_capacity(json.data_keys.len());
        for k in &json.data_keys {
            data_keys.push(DataKey::new(k.id, key32(&k.key, "data key")?));
        }
        let current = data_keys
            .iter()
            .position(|k| k.id == json.write_key)
            .ok_or_else(|| {
                Error::corrupt(object, "keyring's write key is not among its data keys")
            })?;
        Ok(Keyring {
            id_key: Zeroizing::new(key32(&json.id_key, "id key")?),
            chunker_key: Zeroizing::new(key32(&json.chunker_key, "chunker key")?),
            data_keys,
            current,
        })
    }
}

/// Key-encryption key derived from a password or key file; wraps keyrings.
pub(crate) fn wrap_key(kek: &[u8; 32]) -> DataKey {
    DataKey::new(DataKeyId([0; 16]), *kek)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper() {
        let k = DataKey::generate();
        let sealed = k.seal(b"aad", b"hello");
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(k.open(b"aad", &sealed).unwrap(), b"hello");
        assert!(k.open(b"other", &sealed).is_none());
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(k.open(b"aad", &bad).is_none(), "flip at {i} undetected");
        }
        assert!(k.open(b"aad", &sealed[..10]).is_none());
    }

    #[test]
    fn keyring_json_round_trip() {
        let ring = Keyring::generate();
        let back = Keyring::from_json(&ring.to_json(), "k").unwrap();
        assert_eq!(ring.blob_id(b"x"), back.blob_id(b"x"));
        assert_eq!(ring.write_key().id(), back.write_key().id());
        let sealed = ring.write_key().seal(b"", b"data");
        assert_eq!(back.write_key().open(b"", &sealed).unwrap(), b"data");
        assert!(Keyring::from_json(b"{}", "k").is_err());
    }
}
