//! # tessera
//!
//! The facade of the Tessera backup engine: re-exports [`tessera_core`]
//! (and, as they arrive, the adapters behind cargo features).
//!
//! ```
//! use std::sync::Arc;
//! use tessera::{blocking, BackupOptions, Credential, InitOptions, KdfParams, ObjectStoreBackend, StreamSource};
//!
//! # fn main() -> Result<(), tessera::Error> {
//! let repo = blocking::Repository::init(
//!     Arc::new(ObjectStoreBackend::memory()),
//!     &Credential::password("pw"),
//!     InitOptions { kdf: KdfParams::insecure_fast(), ..Default::default() },
//! )?;
//! let s = repo.backup(vec![StreamSource::new("a", &b"abc"[..])], BackupOptions::default())?;
//! assert_eq!(repo.snapshots()?.len(), 1);
//! # let _ = s; Ok(()) }
//! ```

pub use tessera_core::*;

pub mod location;
pub use location::{Storage, StorageOptions, open_storage};
