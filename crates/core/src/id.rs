//! Typed identifiers.
//!
//! Blob ids are keyed BLAKE3 hashes of the plaintext; pack, index, snapshot
//! and key-slot ids are random. All are 32 bytes and print as lowercase hex;
//! the first 8 hex digits are the "short id" users see.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Fills `buf` from the operating system's CSPRNG.
///
/// # Panics
/// If the OS has no randomness source: continuing would reuse nonces.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut buf).expect("the OS random number generator failed");
    buf
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $len;

            /// A new random id from the OS CSPRNG.
            pub fn random() -> Self {
                Self(random_bytes())
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lowercase hex of the whole id.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex digits, as shown to users.
            pub fn short(&self) -> String {
                let mut s = self.to_hex();
                s.truncate(8);
                s
            }

            /// Builds an id from a slice of exactly the right length.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                <[u8; $len]>::try_from(bytes).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                let mut out = [0u8; $len];
                hex::decode_to_slice(s, &mut out).map_err(|e| {
                    Error::InvalidArgument(format!(
                        "{:?} is not a {}-digit hex {}: {e}",
                        s,
                        2 * $len,
                        stringify!($name)
                    ))
                })?;
                Ok(Self(out))
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

define_id!(
    /// Id of a blob: keyed BLAKE3 (the repository's id key) of its plaintext.
    BlobId, 32
);
define_id!(
    /// Random id of a pack file.
    PackId, 32
);
define_id!(
    /// Random id of an index segment.
    IndexId, 32
);
define_id!(
    /// Random id of a snapshot.
    SnapshotId, 32
);
define_id!(
    /// Random id of a key slot.
    KeySlotId, 32
);
define_id!(
    /// Random id of a data-encryption key in the keyring (16 bytes).
    DataKeyId, 16
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_short() {
        let id = PackId::random();
        let parsed: PackId = id.to_hex().parse().unwrap();
        assert_eq!(id, parsed);
        assert_eq!(id.short().len(), 8);
        assert!(id.to_hex().starts_with(&id.short()));
        assert!("zz".parse::<PackId>().is_err());
        assert!(PackId::from_slice(&[0u8; 31]).is_none());
    }

    #[test]
    fn serde_as_hex_string() {
        let id = BlobId([0xab; 32]);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", "ab".repeat(32)));
        let back: BlobId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
    }
}
