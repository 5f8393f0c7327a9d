//! The repository: opening, keys, snapshots, blob reads.

use std::sync::{Arc, RwLock};

use bytes::Bytes;

use crate::chunker::{Chunker, ChunkerParams};
use crate::config::{self, Compression, CompressionAlgorithm, PackSizes, RepoConfig};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::id::{BlobId, KeySlotId, SnapshotId};
use crate::index::Index;
use crate::key::{Credential, KdfParams, KeySlot, UnlockOptions};
use crate::keyring::Keyring;
use crate::sealed;
use crate::storage::{Backend, StorageError};
use crate::tree::Tree;

mod index;
mod keys;
mod snapshots;

pub use keys::KeyInfo;

/// How many objects are fetched at once when listing snapshots or loading
/// the index.
pub(crate) const METADATA_CONCURRENCY: usize = 16;

/// Options for [`Repository::init`].
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Chunking parameters.
    pub chunker: ChunkerParams,
    /// zstd level (0 = no compression).
    pub compression_level: i32,
    /// Target size of data packs.
    pub data_pack_size: u32,
    /// Target size of tree packs.
    pub tree_pack_size: u32,
    /// Argon2id cost of the first password slot.
    pub kdf: KdfParams,
    /// Object lock retention of the storage (see [`config::ObjectLock`]).
    pub object_lock: Option<config::ObjectLock>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunker: ChunkerParams::default(),
            compression_level: config::DEFAULT_COMPRESSION_LEVEL,
            data_pack_size: config::DEFAULT_DATA_PACK_SIZE,
            tree_pack_size: config::DEFAULT_TREE_PACK_SIZE,
            kdf: KdfParams::default(),
            object_lock: None,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) keyring: Keyring,
    pub(crate) config: RepoConfig,
    pub(crate) chunker: Chunker,
    pub(crate) slot: std::sync::Mutex<KeySlotId>,
    pub(crate) index: tokio::sync::OnceCell<RwLock<Index>>,
    pub(crate) backup_lock: tokio::sync::Mutex<()>,
    /// This handle's open write session (FORMAT.md §10), if any.
    pub(crate) session: tokio::sync::Mutex<Option<SnapshotId>>,
    /// Every session whose marker this handle created and has not ended
    /// (committed or closed), for [`Repository::interrupt_sessions`].
    pub(crate) live_sessions: std::sync::Mutex<std::collections::BTreeSet<SnapshotId>>,
    /// The zstd level of new data blobs when not the repository's
    /// (`i32::MIN`: the repository's).
    pub(crate) data_level: std::sync::atomic::AtomicI32,
    /// Trees are stored as given, names unchecked (feature `forge`).
    #[cfg(feature = "forge")]
    pub(crate) forge_trees: std::sync::atomic::AtomicBool,
    #[cfg(feature = "forge")]
    pub(crate) forge_copies: std::sync::atomic::AtomicUsize,
}

/// An open repository. Cheap to clone; all methods take `&self`.
///
/// The async methods need a Tokio runtime (the storage layer uses it); see
/// [`crate::blocking::Repository`] for a blocking wrapper.
#[derive(Clone)]
pub struct Repository {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.inner.backend.location())
            .field("id", &self.inner.config.id)
            .finish()
    }
}

impl Repository {
    /// Creates a repository in an empty location, with one key slot for
    /// `credential`.
    ///
    /// # Errors
    /// [`Error::AlreadyInitialized`] when a `config` exists; storage errors.
    pub async fn init(
        backend: Arc<dyn Backend>,
        credential: &Credential,
        options: InitOptions,
    ) -> Result<Self> {
        Self::init_with(backend, credential, options, Keyring::generate()).await
    }

    /// Creates a repository that shares `like`'s chunker parameters and
    /// its id and chunker keys (`options.chunker` is ignored), with its own
    /// data key: `copy` between the two sends only the blobs the target
    /// lacks and keeps every tree id, and backups of the same files into
    /// either produce the same chunks.
    ///
    /// # Errors
    /// As [`Repository::init`].
    pub async fn init_sharing_ids(
        backend: Arc<dyn Backend>,
        credential: &Credential,
        mut options: InitOptions,
        like: &Repository,
    ) -> Result<Self> {
        options.chunker = like.inner.config.chunker;
        let keyring = like.inner.keyring.generate_sharing_ids();
        Self::init_with(backend, credential, options, keyring).await
    }

    /// Whether `other` names blobs as this repository does (same id key):
    /// then a blob id means the same bytes in both.
    pub fn shares_ids_with(&self, other: &Repository) -> bool {
        let probe = b"tessera: do these repositories share blob ids?";
        self.blob_id_of(probe) == other.blob_id_of(probe)
    }

    async fn init_with(
        backend: Arc<dyn Backend>,
        credential: &Credential,
        options: InitOptions,
        keyring: Keyring,
    ) -> Result<Self> {
        let location = backend.location().to_string();
        match backend.get(ObjectKind::Config, "").await {
            Ok(_) => return Err(Error::AlreadyInitialized { location }),
            Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        options.chunker.validate()?;
        if !(0..=22).contains(&options.compression_level) {
            return Err(Error::InvalidArgument(format!(
                "zstd level {} not in 0..=22",
                options.compression_level
            )));
        }
        if options.data_pack_size < 1024 || options.tree_pack_size < 1024 {
            return Err(Error::InvalidArgument(
                "pack sizes must be at least 1 KiB".into(),
            ));
        }
        let config = RepoConfig {
            version: config::CONFIG_VERSION,
            id: hex::encode(crate::id::random_bytes::<16>()),
            created: jiff::Timestamp::now(),
            chunker: options.chunker,
            compression: Compression {
                algorithm: CompressionAlgorithm::Zstd,
                level: options.compression_level,
            },
            pack_size: PackSizes {
                data: options.data_pack_size,
                tree: options.tree_pack_size,
            },
            object_lock: options.object_lock,
        };
        let slot_id = KeySlotId::random();
        let slot_name = ObjectKind::Key.object_name(&slot_id.to_hex());
        let slot = KeySlot::create(&keyring, credential, options.kdf, &slot_name)?;
        backend
            .put(
                ObjectKind::Key,
                &slot_id.to_hex(),
                Bytes::from(slot.encode()),
            )
            .await?;
        let sealed_config = sealed::seal(&keyring, ObjectKind::Config, "", &config.encode());
        match backend
            .put(ObjectKind::Config, "", Bytes::from(sealed_config))
            .await
        {
            Ok(()) => {}
            Err(StorageError::AlreadyExists { .. }) => {
                // Another init won the race: withdraw our slot.
                let _ = backend.delete(ObjectKind::Key, &slot_id.to_hex()).await;
                return Err(Error::AlreadyInitialized { location });
            }
            Err(e) => return Err(e.into()),
        }
        Self::assemble(backend, keyring, config, slot_id)
    }

    fn assemble(
        backend: Arc<dyn Backend>,
        keyring: Keyring,
        config: RepoConfig,
        slot: KeySlotId,
    ) -> Result<Self> {
        let chunker = Chunker::new(config.chunker, keyring.chunker_key())?;
        Ok(Repository {
            inner: Arc::new(Inner {
                backend,
                keyring,
                config,
                chunker,
                slot: std::sync::Mutex::new(slot),
                index: tokio::sync::OnceCell::new(),
                backup_lock: tokio::sync::Mutex::new(()),
                session: tokio::sync::Mutex::new(None),
                live_sessions: std::sync::Mutex::new(Default::default()),
                data_level: std::sync::atomic::AtomicI32::new(i32::MIN),
                #[cfg(feature = "forge")]
                forge_trees: std::sync::atomic::AtomicBool::new(false),
                #[cfg(feature = "forge")]
                forge_copies: std::sync::atomic::AtomicUsize::new(1),
            }),
        })
    }

    /// The zstd level this handle (and its clones) compresses new data
    /// blobs with: `None` for the repository's (its config), or 0 (off)
    /// to 22. Blobs say how they are stored, so readers need nothing. For
    /// data whose best level differs (VM disks: level 1, as PBS uses).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a level outside 0..=22.
    pub fn set_data_compression(&self, level: Option<i32>) -> Result<()> {
        let value = match level {
            None => i32::MIN,
            Some(l) if (0..=22).contains(&l) => l,
            Some(l) => {
                return Err(Error::InvalidArgument(format!(
                    "zstd level {l}: use 0 (off) to 22"
                )));
            }
        };
        self.inner
            .data_level
            .store(value, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Makes this handle's backups store their trees exactly as the
    /// entries give them: unsorted, duplicate and invalid names kept, as a
    /// compromised host holding the key could write them. Only for tests of
    /// the readers (restore, check, listings), which must refuse such
    /// trees; the feature `forge` is never on in a release build.
    #[cfg(feature = "forge")]
    pub fn forge_trees(&self, on: bool) {
        self.inner
            .forge_trees
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Makes this handle's forged backups (see [`Repository::forge_trees`])
    /// name every directory `copies` times in its parent (`NAME`,
    /// `NAME0001`, ...), all sharing its one tree: a few small trees that expand to
    /// `copies` to the power of their depth entries, as a compromised host
    /// could write them.
    #[cfg(feature = "forge")]
    pub fn forge_dir_copies(&self, copies: usize) {
        self.inner
            .forge_copies
            .store(copies.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Opens a repository with a password or key file, trying every slot
    /// but those whose KDF asks for more than [`KdfParams::default`] (see
    /// [`Repository::open_with`]).
    ///
    /// # Errors
    /// [`Error::NoRepository`], [`Error::NoKeySlots`], [`Error::WrongPassword`],
    /// [`Error::Corrupt`] (naming the object), [`Error::UnsupportedVersion`].
    pub async fn open(backend: Arc<dyn Backend>, credential: &Credential) -> Result<Self> {
        Self::open_with(backend, credential, &UnlockOptions::default()).await
    }

    /// Opens a repository with a password or key file, trying the slots
    /// `options` allows. Anyone who can write to storage can plant a slot,
    /// so a password slot whose Argon2 cost exceeds `options.max_kdf` (what
    /// `key add` chooses by default) is not tried, unless it is the one
    /// named by `options.key_id`: otherwise such a slot could make every
    /// open spend seconds and gigabytes before the real slot is reached.
    ///
    /// # Errors
    /// As [`Repository::open`]; [`Error::WrongPassword`] names the slots
    /// left untried and how to try them.
    pub async fn open_with(
        backend: Arc<dyn Backend>,
        credential: &Credential,
        options: &UnlockOptions,
    ) -> Result<Self> {
        let location = backend.location().to_string();
        let config_bytes = match backend.get(ObjectKind::Config, "").await {
            Ok(b) => b,
            Err(StorageError::NotFound { .. }) => return Err(Error::NoRepository { location }),
            Err(e) => return Err(e.into()),
        };
        let mut slots = backend.list(ObjectKind::Key).await?;
        if slots.is_empty() {
            return Err(Error::NoKeySlots { location });
        }
        if let Some(prefix) = &options.key_id {
            slots.retain(|s| s.name.starts_with(prefix.as_str()));
            if slots.len() != 1 {
                return Err(Error::InvalidArgument(format!(
                    "--key-id {prefix}: {} key slots have this prefix (`key list` shows them)",
                    slots.len()
                )));
            }
        }
        let max_kdf = options.max_kdf.unwrap_or_default();
        let mut damaged = None;
        let mut opened = None;
        let mut costly: Vec<String> = Vec::new();
        for info in &slots {
            let object = ObjectKind::Key.object_name(&info.name);
            let attempt = async {
                let id: KeySlotId = info.name.parse().map_err(|_| {
                    Error::corrupt(&object, "key slot name is not a 64-digit hex id")
                })?;
                let bytes = backend.get(ObjectKind::Key, &info.name).await?;
                let slot = KeySlot::decode(&bytes, &object)?;
                if let Some(kdf) = slot.kdf.as_ref().filter(|_| options.key_id.is_none()) {
                    if !kdf.params.within(&max_kdf) {
                        return Ok(Err(kdf.params));
                    }
                }
                // Argon2 takes a fraction of a second: keep it off the executor.
                let credential = credential.clone();
                let unlocked = on_rayon(move || slot.unlock(&credential, &object)).await?;
                Ok::<_, Error>(Ok(unlocked.map(|k| (id, k))))
            };
            match attempt.await {
                Ok(Ok(Some(found))) => {
                    opened = Some(found);
                    break;
                }
                Ok(Ok(None)) => {}
                Ok(Err(params)) => costly.push(format!(
                    "{} ({} MiB, {} passes, {} lanes)",
                    info.name.get(..8).unwrap_or(&info.name),
                    params.m_cost_kib / 1024,
                    params.t_cost,
                    params.p_cost
                )),
                Err(e @ (Error::Corrupt { .. } | Error::UnsupportedVersion { .. })) => {
                    damaged.get_or_insert(e);
                }
                Err(e) => return Err(e),
            }
        }
        let Some((slot, keyring)) = opened else {
            if !costly.is_empty() {
                return Err(Error::CostlySlotsSkipped {
                    tried: slots.len() - costly.len(),
                    skipped: costly.join(", "),
                });
            }
            return Err(damaged.unwrap_or(Error::WrongPassword { tried: slots.len() }));
        };
        let plain = sealed::open(&keyring, ObjectKind::Config, "", &config_bytes)?;
        let config = RepoConfig::decode(&plain)?;
        Self::assemble(backend, keyring, config, slot)
    }

    /// The same repository over another backend made from its current one
    /// (a decorator such as [`crate::CachedBackend`], or the store opened
    /// again with other options). Call it right after opening.
    ///
    /// # Errors
    /// [`Error::Internal`] when the handle has been cloned.
    pub fn map_backend(
        self,
        wrap: impl FnOnce(&RepoConfig, Arc<dyn Backend>) -> Arc<dyn Backend>,
    ) -> Result<Self> {
        let inner = Arc::try_unwrap(self.inner)
            .map_err(|_| Error::Internal("map_backend on a shared repository handle".into()))?;
        let backend = wrap(&inner.config, inner.backend.clone());
        Ok(Repository {
            inner: Arc::new(Inner { backend, ..inner }),
        })
    }

    /// Keeps a local copy of the repository's metadata (index, snapshots,
    /// tree packs) under `root/<repository id>/meta` (see
    /// [`crate::CachedBackend`]). Call it right after opening.
    ///
    /// # Errors
    /// As [`Repository::map_backend`].
    pub fn with_cache(self, root: &std::path::Path) -> Result<Self> {
        self.map_backend(|config, backend| {
            let dir = root.join(&config.id).join("meta");
            Arc::new(crate::CachedBackend::new(backend, dir))
        })
    }

    /// The storage backend.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The repository configuration.
    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    /// Reads, authenticates, decompresses and verifies one blob.
    ///
    /// # Errors
    /// [`Error::BlobNotIndexed`], storage errors, [`Error::Corrupt`].
    pub async fn read_blob(&self, id: BlobId, referrer: &str) -> Result<Vec<u8>> {
        let loc = self
            .index()
            .await?
            .read()
            .map_err(|_| poisoned())?
            .lookup(&id)
            .ok_or_else(|| Error::BlobNotIndexed {
                blob: id.to_hex(),
                referrer: referrer.to_string(),
            })?;
        self.fetch_span(crate::span::ReadSpan::one(id, loc))
            .await?
            .pop()
            .ok_or_else(|| Error::Internal(format!("blob {id} not opened")))
    }

    /// Reads and decodes a tree blob.
    ///
    /// # Errors
    /// As [`Repository::read_blob`], plus a tree that does not decode.
    pub async fn read_tree(&self, id: BlobId, referrer: &str) -> Result<Tree> {
        let plain = self.read_blob(id, referrer).await?;
        Tree::decode(&plain, &format!("tree {id} (of {referrer})"))
    }

    /// The decrypted plaintext of an object, for debugging (`tessera cat`).
    ///
    /// # Errors
    /// Storage errors, [`Error::Corrupt`].
    pub async fn cat_object(&self, kind: ObjectKind, name: &str) -> Result<Vec<u8>> {
        let bytes = self.inner.backend.get(kind, name).await?;
        match kind {
            ObjectKind::Key => Ok(bytes.to_vec()),
            _ => sealed::open(&self.inner.keyring, kind, name, &bytes),
        }
    }
}

pub(crate) fn poisoned() -> Error {
    Error::Internal("a thread panicked while holding the index lock".into())
}

/// Runs CPU-bound work on the rayon pool and awaits its result without
/// blocking the async executor.
pub(crate) async fn on_rayon<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(f());
    });
    #[allow(clippy::expect_used)]
    rx.await.expect("rayon task panicked")
}
