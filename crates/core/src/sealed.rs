//! Sealed single-payload objects: config, index segments and snapshots.
//!
//! Layout: `preamble(24) || nonce(24) || ciphertext || tag(16)`; the
//! associated data is the preamble followed by the object's full name, so an
//! object cannot be renamed or passed off as another kind.
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use crate::error::{Error, Result};
use crate::format::{self, ObjectKind, PREAMBLE_LEN};
use crate::keyring::Keyring;

fn aad(preamble: &[u8], object: &str) -> Vec<u8> {
    let mut aad = preamble.to_vec();
    aad.extend_from_slice(object.as_bytes());
    aad
}

/// Seals `plaintext` as the object named `name` of `kind`.
pub fn seal(keyring: &Keyring, kind: ObjectKind, name: &str, plaintext: &[u8]) -> Vec<u8> {
    let key = keyring.write_key();
    let pre = format::preamble(kind, key.id());
    let mut out =
        Vec::with_capacity(PREAMBLE_LEN + plaintext.len() + crate::keyring::SEAL_OVERHEAD);
    out.extend_from_slice(&pre);
    key.seal_into(&aad(&pre, &kind.object_name(name)), plaintext, &mut out);
    out
}

/// Verifies and opens a sealed object.
///
/// # Errors
/// [`Error::Corrupt`] or [`Error::UnsupportedVersion`] naming the object.
pub fn open(keyring: &Keyring, kind: ObjectKind, name: &str, bytes: &[u8]) -> Result<Vec<u8>> {
    let object = kind.object_name(name);
    let key_id = format::check_preamble(bytes, kind, &object)?;
    let key = keyring.data_key(key_id).ok_or_else(|| {
        Error::corrupt(
            &object,
            format!("sealed with data key {key_id}, which the keyring does not hold"),
        )
    })?;
    let (pre, body) = bytes.split_at(PREAMBLE_LEN.min(bytes.len()));
    key.open(&aad(pre, &object), body)
        .ok_or_else(|| Error::corrupt(&object, "authentication failed (modified or damaged bytes)"))
}
