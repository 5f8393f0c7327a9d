//! Key slots: the keyring wrapped under a password (Argon2id) or a key file.
//!
//! A slot is stored as `keys/<random id>`: the 8-byte header, a JSON body and
//! a BLAKE3 checksum of both, so that a damaged slot is reported as damaged
//! rather than as a wrong password. The wrapped keyring itself is sealed
//! with XChaCha20-Poly1305 under the key-encryption key, with the header and
//! the object name as associated data.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::format::{self, HEADER_LEN, ObjectKind};
use crate::id::random_bytes;
use crate::keyring::{Keyring, wrap_key};

/// Length of the checksum trailer of a key slot.
const CHECKSUM_LEN: usize = 32;
/// Domain-separation context for deriving a KEK from a key file.
const KEYFILE_CONTEXT: &str = "tessera 2026-11 key file to key-encryption key v1";

/// Argon2id cost parameters, stored per slot so they can be raised later.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 4 lanes (RFC 9106's memory-constrained profile
    /// with a larger memory cost). The lanes are computed in parallel: on
    /// two cores unlocking takes about half the time one lane would, while
    /// a guess costs an attacker the same memory and passes.
    fn default() -> Self {
        KdfParams {
            m_cost_kib: 64 * 1024,
            t_cost: 3,
            p_cost: 4,
        }
    }
}

impl KdfParams {
    /// Whether these cost no more than `limit` in memory, passes and lanes.
    pub fn within(&self, limit: &KdfParams) -> bool {
        self.m_cost_kib <= limit.m_cost_kib
            && self.t_cost <= limit.t_cost
            && self.p_cost <= limit.p_cost
    }

    /// Cheap parameters for tests and fixtures only.
    pub fn insecure_fast() -> Self {
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            p_cost: 1,
        }
    }
}

/// Which key slots [`crate::Repository::open_with`] tries.
#[derive(Clone, Debug, Default)]
pub struct UnlockOptions {
    /// Try only the slot whose id starts with this, whatever its KDF
    /// cost (within the hard bounds every slot is held to).
    pub key_id: Option<String>,
    /// Leave out password slots costlier than this (default:
    /// [`KdfParams::default`], what `key add` chooses).
    pub max_kdf: Option<KdfParams>,
}

/// What unlocks a slot.
#[derive(Clone)]
pub enum Credential {
    /// A password, stretched with the slot's Argon2id parameters.
    Password(Zeroizing<String>),
    /// The 32 secret bytes of a key file.
    KeyFile(Zeroizing<[u8; 32]>),
}

impl Credential {
    /// A password credential.
    pub fn password(p: impl Into<String>) -> Self {
        Credential::Password(Zeroizing::new(p.into()))
    }

    /// Parses key-file contents: 64 hex digits, surrounding whitespace ignored.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the contents are not a key file.
    pub fn key_file(contents: &str) -> Result<Self> {
        let mut secret = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(contents.trim(), secret.as_mut_slice()).map_err(|_| {
            Error::InvalidArgument("key file must contain exactly 64 hex digits".to_string())
        })?;
        Ok(Credential::KeyFile(secret))
    }

    /// Fresh key-file contents (64 hex digits and a newline).
    pub fn new_key_file_contents() -> Zeroizing<String> {
        let secret: [u8; 32] = random_bytes();
        Zeroizing::new(format!("{}\n", hex::encode(secret)))
    }

    fn kind(&self) -> SlotKind {
        match self {
            Credential::Password(_) => SlotKind::Password,
            Credential::KeyFile(_) => SlotKind::KeyFile,
        }
    }
}

/// Kind of a key slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotKind {
    /// Unlocked by a password.
    Password,
    /// Unlocked by a key file.
    #[serde(rename = "keyfile")]
    KeyFile,
}

/// Argon2id settings as stored in a slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kdf {
    /// Always `argon2id`.
    pub algorithm: String,
    /// Argon2 version (19 = 0x13).
    pub version: u32,
    /// Cost parameters.
    #[serde(flatten)]
    pub params: KdfParams,
    /// 16-byte salt, hex.
    pub salt: String,
}

/// A decoded key slot (public parts; the keyring stays sealed until unlocked).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KeySlot {
    /// Password or key file.
    pub kind: SlotKind,
    /// KDF settings (password slots only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kdf: Option<Kdf>,
    /// Creation time.
    pub created: jiff::Timestamp,
    /// Host that created the slot.
    pub hostname: String,
    /// User that created the slot.
    pub username: String,
    /// `nonce || sealed keyring || tag`, hex.
    pub wrapped: String,
}

fn kek_for(
    credential: &Credential,
    kdf: Option<&Kdf>,
    object: &str,
) -> Result<Zeroizing<[u8; 32]>> {
    let mut kek = Zeroizing::new([0u8; 32]);
    match credential {
        Credential::Password(p) => {
            let kdf =
                kdf.ok_or_else(|| Error::corrupt(object, "password slot without KDF parameters"))?;
            if kdf.algorithm != "argon2id" || kdf.version != 0x13 {
                return Err(Error::corrupt(
                    object,
                    format!("unknown KDF {} version {}", kdf.algorithm, kdf.version),
                ));
            }
            // Bound the work a damaged or hostile slot can demand before
            // running Argon2: 4 GiB of memory, 64 passes, 16 lanes.
            let cost = kdf.params;
            if cost.m_cost_kib > 4 * 1024 * 1024 || cost.t_cost > 64 || cost.p_cost > 16 {
                return Err(Error::corrupt(
                    object,
                    format!("unreasonable KDF parameters {cost:?}"),
                ));
            }
            let salt = hex::decode(&kdf.salt)
                .map_err(|e| Error::corrupt(object, format!("bad salt: {e}")))?;
            let params = argon2::Params::new(
                kdf.params.m_cost_kib,
                kdf.params.t_cost,
                kdf.params.p_cost,
                Some(32),
            )
            .map_err(|e| Error::corrupt(object, format!("invalid Argon2 parameters: {e}")))?;
            let blocks = argon2_memory(params.block_count());
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
                .hash_password_into_with_memory(p.as_bytes(), &salt, kek.as_mut_slice(), blocks)
                .map_err(|e| Error::corrupt(object, format!("Argon2 failed: {e}")))?;
        }
        Credential::KeyFile(secret) => {
            *kek = blake3::derive_key(KEYFILE_CONTEXT, secret.as_slice());
        }
    }
    Ok(kek)
}

/// Argon2's working memory (64 MiB by default), written once on every
/// rayon thread at the same time. Fresh pages cost most on their first
/// touch (the kernel zeroes them; a virtual machine's host may first have
/// to back them): left to the allocator, one thread touches them all
/// before the lanes start in parallel, 0.04-0.18 s on the benchmark
/// machines, paid by every command that unlocks with a password.
fn argon2_memory(blocks: usize) -> Vec<argon2::Block> {
    use rayon::prelude::*;
    let mut memory = Vec::new();
    (0..blocks)
        .into_par_iter()
        .with_min_len(1024)
        .map(|_| argon2::Block::default())
        .collect_into_vec(&mut memory);
    memory
}

fn aad(object: &str) -> Vec<u8> {
    let mut aad = format::header(ObjectKind::Key).to_vec();
    aad.extend_from_slice(object.as_bytes());
    aad
}

impl KeySlot {
    /// Wraps `keyring` under `credential`, for storage as `object` (`keys/<id>`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for out-of-range KDF parameters.
    pub fn create(
        keyring: &Keyring,
        credential: &Credential,
        params: KdfParams,
        object: &str,
    ) -> Result<Self> {
        let kdf = match credential {
            Credential::Password(_) => {
                argon2::Params::new(params.m_cost_kib, params.t_cost, params.p_cost, Some(32))
                    .map_err(|e| Error::InvalidArgument(format!("Argon2 parameters: {e}")))?;
                Some(Kdf {
                    algorithm: "argon2id".into(),
                    version: 0x13,
                    params,
                    salt: hex::encode(random_bytes::<16>()),
                })
            }
            Credential::KeyFile(_) => None,
        };
        let kek = kek_for(credential, kdf.as_ref(), object)?;
        let wrapped = wrap_key(&kek).seal(&aad(object), &keyring.to_json());
        Ok(KeySlot {
            kind: credential.kind(),
            kdf,
            created: jiff::Timestamp::now(),
            hostname: crate::host::hostname(),
            username: crate::host::username(),
            wrapped: hex::encode(wrapped),
        })
    }

    /// Tries to unlock the slot. `Ok(None)` means "not this credential".
    ///
    /// # Errors
    /// [`Error::Corrupt`] when the slot is malformed or its keyring does not decode.
    pub fn unlock(&self, credential: &Credential, object: &str) -> Result<Option<Keyring>> {
        if credential.kind() != self.kind {
            return Ok(None);
        }
        let kek = kek_for(credential, self.kdf.as_ref(), object)?;
        let wrapped = hex::decode(&self.wrapped)
            .map_err(|e| Error::corrupt(object, format!("wrapped key: {e}")))?;
        match wrap_key(&kek).open(&aad(object), &wrapped) {
            Some(plain) => Keyring::from_json(&Zeroizing::new(plain), object).map(Some),
            None => Ok(None),
        }
    }

    /// Serializes: header, JSON body, BLAKE3 checksum of both.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = format::header(ObjectKind::Key).to_vec();
        #[allow(clippy::expect_used)]
        out.extend_from_slice(&serde_json::to_vec_pretty(self).expect("key slot serializes"));
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Parses and verifies a stored slot.
    ///
    /// # Errors
    /// [`Error::Corrupt`] / [`Error::UnsupportedVersion`] naming `object`.
    pub fn decode(bytes: &[u8], object: &str) -> Result<Self> {
        format::check_header(bytes, ObjectKind::Key, object)?;
        if bytes.len() < HEADER_LEN + CHECKSUM_LEN {
            return Err(Error::corrupt(object, "truncated key slot"));
        }
        let (signed, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if blake3::hash(signed).as_bytes() != sum {
            return Err(Error::corrupt(
                object,
                "checksum mismatch (the key slot is damaged)",
            ));
        }
        let body = signed.get(HEADER_LEN..).unwrap_or_default();
        serde_json::from_slice(body)
            .map_err(|e| Error::corrupt(object, format!("key slot does not decode: {e}")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn password_slot_round_trip() {
        let ring = Keyring::generate();
        let cred = Credential::password("hunter2");
        let slot = KeySlot::create(&ring, &cred, KdfParams::insecure_fast(), "keys/a").unwrap();
        let bytes = slot.encode();
        let back = KeySlot::decode(&bytes, "keys/a").unwrap();
        let ring2 = back.unlock(&cred, "keys/a").unwrap().unwrap();
        assert_eq!(ring.blob_id(b"x"), ring2.blob_id(b"x"));
        assert!(
            back.unlock(&Credential::password("nope"), "keys/a")
                .unwrap()
                .is_none()
        );
        // Bound to its name: a slot copied to another name does not open.
        assert!(back.unlock(&cred, "keys/b").unwrap().is_none());
    }

    #[test]
    fn hostile_kdf_parameters_are_refused_before_argon2_runs() {
        let ring = Keyring::generate();
        let cred = Credential::password("pw");
        let mut slot = KeySlot::create(&ring, &cred, KdfParams::insecure_fast(), "keys/h").unwrap();
        // A slot rewritten with a valid checksum but a 1 TiB memory cost.
        slot.kdf.as_mut().unwrap().params.m_cost_kib = u32::MAX;
        let back = KeySlot::decode(&slot.encode(), "keys/h").unwrap();
        let err = back
            .unlock(&cred, "keys/h")
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("keys/h") && err.contains("unreasonable KDF parameters"),
            "{err}"
        );
        slot.kdf.as_mut().unwrap().params = KdfParams {
            m_cost_kib: 64,
            t_cost: 1000,
            p_cost: 1,
        };
        assert!(
            KeySlot::decode(&slot.encode(), "keys/h")
                .unwrap()
                .unlock(&cred, "keys/h")
                .is_err()
        );
    }

    #[test]
    fn key_file_slot_and_flipped_bytes() {
        let ring = Keyring::generate();
        let contents = Credential::new_key_file_contents();
        let cred = Credential::key_file(&contents).unwrap();
        let slot = KeySlot::create(&ring, &cred, KdfParams::default(), "keys/k").unwrap();
        let bytes = slot.encode();
        assert!(
            KeySlot::decode(&bytes, "keys/k")
                .unwrap()
                .unlock(&cred, "keys/k")
                .unwrap()
                .is_some()
        );
        for i in [0, 5, 20, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            let err = KeySlot::decode(&bad, "keys/k").unwrap_err().to_string();
            assert!(err.contains("keys/k"), "{err}");
        }
        assert!(Credential::key_file("xyz").is_err());
    }
}
