//! # tessera
//!
//! The facade of the Tessera backup engine: re-exports [`tessera_core`],
//! opens storage by location ([`open_storage`]: local paths, `s3://`,
//! `gs://`, `az://` behind the features `s3`, `gcs`, `azure`), and the
//! adapters behind features of their own: `fs` (`tessera::fs`, file
//! trees), `postgres` (`tessera::postgres`, clusters and their WAL) and
//! `vm` (`tessera::vm`, VM disk images) and `mongo` (`tessera::mongo`,
//! MongoDB).
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

/// The filesystem adapter (feature `fs`).
#[cfg(feature = "fs")]
pub use tessera_fs as fs;

/// The PostgreSQL adapter (feature `postgres`).
#[cfg(feature = "postgres")]
pub use tessera_postgres as postgres;

/// The VM image adapter (feature `vm`).
#[cfg(feature = "vm")]
pub use tessera_vm as vm;

/// The MongoDB adapter (feature `mongo`).
#[cfg(feature = "mongo")]
pub use tessera_mongo as mongo;
