//! The repository: opening, keys, snapshots, blob reads.

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use crate::chunker::{Chunker, ChunkerParams};
use crate::config::{self, Compression, CompressionAlgorithm, PackSizes, RepoConfig};
use crate::crypto::Keyring;
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::id::{BlobId, IndexId, KeySlotId, SnapshotId};
use crate::index::{Index, IndexSegment};
use crate::key::{Credential, KdfParams, KeySlot, UnlockOptions};
use crate::sealed;
use crate::snapshot::{self, DamagedSnapshot, Snapshot, SnapshotEntry, SnapshotListing};
use crate::storage::{Backend, StorageError};
use crate::tree::Tree;

/// How many objects are fetched at once when listing snapshots or loading
/// the index.
pub(crate) const METADATA_CONCURRENCY: usize = 16;
/// Times the index segments are listed again when one vanished meanwhile.
const SEGMENT_RELISTS: u32 = 12;

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

/// A key slot as listed by [`Repository::keys`].
#[derive(Clone, Debug)]
pub struct KeyInfo {
    /// Slot id.
    pub id: KeySlotId,
    /// The slot's public fields.
    pub slot: KeySlot,
    /// Whether this repository handle was opened with it.
    pub current: bool,
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
                #[cfg(feature = "forge")]
                forge_trees: std::sync::atomic::AtomicBool::new(false),
                #[cfg(feature = "forge")]
                forge_copies: std::sync::atomic::AtomicUsize::new(1),
            }),
        })
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

    /// The in-memory index, loaded from all segments on first use.
    ///
    /// # Errors
    /// Storage errors and corrupt segments (naming the segment).
    pub(crate) async fn index(&self) -> Result<&RwLock<Index>> {
        self.inner
            .index
            .get_or_try_init(|| async {
                let mut index = self.load_segments().await?;
                index.finish_loading();
                Ok(RwLock::new(index))
            })
            .await
    }

    /// Every index segment's entries in a new index (not yet sorted: call
    /// `finish_loading`). Segments are added as they arrive and dropped,
    /// so the decoded segments are never all held at once. A segment that
    /// vanishes meanwhile was rewritten by a prune: everything is listed
    /// and loaded again (see [`Repository::index_segments`]).
    pub(crate) async fn load_segments(&self) -> Result<Index> {
        let mut attempt = 0;
        loop {
            let names = self.inner.backend.list(ObjectKind::Index).await?;
            let mut index = Index::new();
            // A segment stores each blob in `SEGMENT_BLOB_LEN` bytes plus
            // a little per pack: its size bounds its blob count.
            let stored: u64 = names.iter().map(|o| o.size).sum();
            index.reserve((stored / crate::index::SEGMENT_BLOB_LEN as u64) as usize);
            let mut reads = futures::stream::iter(names)
                .map(|info| async move { self.read_index_segment(&info.name).await })
                .buffer_unordered(METADATA_CONCURRENCY);
            let loaded: Result<()> = async {
                while let Some((id, segment)) = reads.try_next().await? {
                    index.add_named_segment(id, &segment)?;
                }
                Ok(())
            }
            .await;
            match loaded {
                Ok(()) => return Ok(index),
                Err(Error::Missing { .. }) if attempt < SEGMENT_RELISTS => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt)))
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Loads and decodes every index segment.
    ///
    /// # Errors
    /// Storage errors and corrupt segments.
    ///
    /// A segment that vanishes between the listing and its read was
    /// rewritten by a prune, which stored its replacement first: the
    /// segments are listed and read again (a few times at most).
    pub async fn index_segments(&self) -> Result<Vec<(IndexId, IndexSegment)>> {
        let mut attempt = 0;
        loop {
            let names = self.inner.backend.list(ObjectKind::Index).await?;
            let read: Result<Vec<_>> = futures::stream::iter(names)
                .map(|info| async move { self.read_index_segment(&info.name).await })
                .buffer_unordered(METADATA_CONCURRENCY)
                .try_collect()
                .await;
            match read {
                Err(Error::Missing { .. }) if attempt < SEGMENT_RELISTS => {
                    attempt += 1;
                    // Let the sweep finish deleting what it replaced.
                    tokio::time::sleep(std::time::Duration::from_millis(20 * u64::from(attempt)))
                        .await;
                }
                other => return other,
            }
        }
    }

    pub(crate) async fn read_index_segment(&self, name: &str) -> Result<(IndexId, IndexSegment)> {
        let object = ObjectKind::Index.object_name(name);
        let id: IndexId = name
            .parse()
            .map_err(|_| Error::corrupt(&object, "index segment name is not a 64-digit hex id"))?;
        let bytes = self.inner.backend.get(ObjectKind::Index, name).await?;
        let keyring = self.inner.clone();
        let name = name.to_string();
        let segment = on_rayon(move || {
            let plain = sealed::open(&keyring.keyring, ObjectKind::Index, &name, &bytes)?;
            IndexSegment::decode(&plain, &object)
        })
        .await?;
        Ok((id, segment))
    }

    /// Number of blobs in the index and the heap bytes it takes.
    ///
    /// # Errors
    /// As for loading the index.
    pub async fn index_footprint(&self) -> Result<(usize, usize)> {
        let index = self.index().await?.read().map_err(|_| poisoned())?;
        Ok((index.len(), index.memory_bytes()))
    }

    /// Every readable snapshot, oldest first. Snapshot objects that do
    /// not read are left out: [`Repository::snapshot_listing`] names them.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn snapshots(&self) -> Result<Vec<SnapshotEntry>> {
        Ok(self.snapshot_listing().await?.snapshots)
    }

    /// Every readable snapshot, oldest first, and every snapshot object
    /// that is damaged, misnamed or of an unknown version (one such object
    /// must not hide all the others; `forget` removes it by name).
    ///
    /// # Errors
    /// Storage errors other than a damaged object.
    pub async fn snapshot_listing(&self) -> Result<SnapshotListing> {
        let names = self.inner.backend.list(ObjectKind::Snapshot).await?;
        let read: Vec<std::result::Result<SnapshotEntry, DamagedSnapshot>> =
            futures::stream::iter(names)
                .map(|info| async move {
                    let damaged = |problem: String| {
                        Ok::<_, Error>(Some(Err(DamagedSnapshot {
                            name: info.name.clone(),
                            problem,
                        })))
                    };
                    let Ok(id) = info.name.parse::<SnapshotId>() else {
                        return damaged("its name is not a hex id".into());
                    };
                    match self.read_snapshot_object(id).await {
                        Ok(s) => Ok(s.map(|snapshot| Ok(SnapshotEntry { id, snapshot }))),
                        // Forgotten since the listing.
                        Err(Error::Missing { .. }) => Ok(None),
                        Err(e @ (Error::Corrupt { .. } | Error::UnsupportedVersion { .. })) => {
                            damaged(e.to_string())
                        }
                        Err(e) => Err(e),
                    }
                })
                .buffer_unordered(METADATA_CONCURRENCY)
                .try_filter_map(|e| async move { Ok(e) })
                .try_collect()
                .await?;
        let mut listing = SnapshotListing::default();
        for r in read {
            match r {
                Ok(entry) => listing.snapshots.push(entry),
                Err(d) => listing.damaged.push(d),
            }
        }
        listing
            .snapshots
            .sort_by(|a, b| a.snapshot.time.cmp(&b.snapshot.time).then(a.id.cmp(&b.id)));
        listing.damaged.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listing)
    }

    /// Reads one snapshot.
    ///
    /// # Errors
    /// [`Error::Missing`], [`Error::Corrupt`].
    pub async fn read_snapshot(&self, id: SnapshotId) -> Result<Snapshot> {
        self.read_snapshot_object(id)
            .await?
            .ok_or_else(|| Error::SnapshotNotFound {
                reference: format!(
                    "{} (a tombstone: its session was expired by a prune)",
                    id.short()
                ),
            })
    }

    /// Reads a snapshot object: a snapshot, or `None` for a tombstone.
    ///
    /// # Errors
    /// [`Error::Missing`], [`Error::Corrupt`].
    pub async fn read_snapshot_object(&self, id: SnapshotId) -> Result<Option<Snapshot>> {
        let name = id.to_hex();
        let bytes = self.inner.backend.get(ObjectKind::Snapshot, &name).await?;
        let plain = sealed::open(&self.inner.keyring, ObjectKind::Snapshot, &name, &bytes)?;
        if plain == snapshot::TOMBSTONE {
            return Ok(None);
        }
        Snapshot::decode(&plain, &ObjectKind::Snapshot.object_name(&name)).map(Some)
    }

    /// Removes a snapshot object. Its data stays until a prune finds it
    /// referenced by no other snapshot. Removing a snapshot that is
    /// already gone succeeds (two `forget` runs may race).
    ///
    /// # Errors
    /// Storage errors (a backend that refuses deletes, for one).
    pub async fn forget_snapshot(&self, id: SnapshotId) -> Result<()> {
        // The session marker of the backup that made it goes first: a
        // marker left by a writer that could not delete it (create-only
        // credentials) would otherwise look like an open session once its
        // snapshot is gone, and hold prune back for a whole lease.
        match self
            .inner
            .backend
            .delete(ObjectKind::Session, &id.to_hex())
            .await
        {
            Ok(()) | Err(StorageError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        match self
            .inner
            .backend
            .delete(ObjectKind::Snapshot, &id.to_hex())
            .await
        {
            Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The id of the snapshot object a full id or unique prefix names,
    /// without reading it (so a damaged one can still be named).
    ///
    /// # Errors
    /// [`Error::SnapshotNotFound`], [`Error::AmbiguousSnapshot`],
    /// [`Error::InvalidArgument`].
    pub async fn resolve_snapshot_id(&self, reference: &str) -> Result<SnapshotId> {
        // Misnamed objects are skipped here (`snapshots` and `check`
        // report them).
        let ids: Vec<SnapshotId> = self
            .inner
            .backend
            .list(ObjectKind::Snapshot)
            .await?
            .iter()
            .filter_map(|info| info.name.parse().ok())
            .collect();
        snapshot::match_prefix(&ids, reference)
    }

    /// Resolves a full id, unique prefix or `latest` (the newest readable
    /// snapshot).
    ///
    /// # Errors
    /// [`Error::SnapshotNotFound`], [`Error::AmbiguousSnapshot`].
    pub async fn find_snapshot(&self, reference: &str) -> Result<SnapshotEntry> {
        if reference == "latest" {
            let all = self.snapshots().await?;
            return snapshot::resolve(&all, reference).cloned();
        }
        // An id or prefix is matched against the listing: only the snapshot
        // it names is read and decrypted.
        let id = self.resolve_snapshot_id(reference).await?;
        Ok(SnapshotEntry {
            id,
            snapshot: self.read_snapshot(id).await?,
        })
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

    /// Every key slot.
    ///
    /// # Errors
    /// Storage errors; corrupt slots (named).
    pub async fn keys(&self) -> Result<Vec<KeyInfo>> {
        let current = *self.inner.slot.lock().map_err(|_| poisoned())?;
        let mut out = Vec::new();
        for info in self.inner.backend.list(ObjectKind::Key).await? {
            let object = ObjectKind::Key.object_name(&info.name);
            let id: KeySlotId = info
                .name
                .parse()
                .map_err(|_| Error::corrupt(&object, "key slot name is not a hex id"))?;
            let bytes = self.inner.backend.get(ObjectKind::Key, &info.name).await?;
            out.push(KeyInfo {
                id,
                slot: KeySlot::decode(&bytes, &object)?,
                current: id == current,
            });
        }
        out.sort_by(|a, b| a.slot.created.cmp(&b.slot.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Adds a key slot for `credential`.
    ///
    /// # Errors
    /// Storage errors; invalid KDF parameters.
    pub async fn add_key(&self, credential: &Credential, kdf: KdfParams) -> Result<KeySlotId> {
        let id = KeySlotId::random();
        let object = ObjectKind::Key.object_name(&id.to_hex());
        let slot = KeySlot::create(&self.inner.keyring, credential, kdf, &object)?;
        self.inner
            .backend
            .put(ObjectKind::Key, &id.to_hex(), Bytes::from(slot.encode()))
            .await?;
        Ok(id)
    }

    /// Removes a key slot given by id or unique prefix. Refuses to remove
    /// the last slot and the slot this handle was opened with.
    ///
    /// # Errors
    /// [`Error::KeyRefused`] with the reason.
    pub async fn remove_key(&self, reference: &str) -> Result<KeySlotId> {
        let keys = self.keys().await?;
        let matches: Vec<&KeyInfo> = keys
            .iter()
            .filter(|k| k.id.to_hex().starts_with(reference))
            .collect();
        let target = match matches.as_slice() {
            [one] if !reference.is_empty() => *one,
            [] => {
                return Err(Error::KeyRefused(format!(
                    "no key slot matches {reference:?}"
                )));
            }
            _ => {
                return Err(Error::KeyRefused(format!(
                    "{reference:?} matches {} key slots",
                    matches.len()
                )));
            }
        };
        if keys.len() <= 1 {
            return Err(Error::KeyRefused(
                "refusing to remove the last key slot: the repository would become unreadable"
                    .into(),
            ));
        }
        if target.current {
            return Err(Error::KeyRefused(format!(
                "refusing to remove key slot {}: it is the one in use; open the repository with another key to remove it",
                target.id.short()
            )));
        }
        self.inner
            .backend
            .delete(ObjectKind::Key, &target.id.to_hex())
            .await?;
        Ok(target.id)
    }

    /// Replaces the slot in use with one for `credential` (the new slot is
    /// stored before the old one is removed).
    ///
    /// # Errors
    /// Storage errors.
    pub async fn change_key(&self, credential: &Credential, kdf: KdfParams) -> Result<KeySlotId> {
        let new = self.add_key(credential, kdf).await?;
        let old = std::mem::replace(&mut *self.inner.slot.lock().map_err(|_| poisoned())?, new);
        self.inner
            .backend
            .delete(ObjectKind::Key, &old.to_hex())
            .await?;
        Ok(new)
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
