//! Loading the index: every segment into one in-memory index, reloading
//! it when a prune rewrote segments, and storing new segments.

use std::collections::HashSet;
use std::sync::RwLock;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};

use super::{METADATA_CONCURRENCY, Repository, on_rayon, poisoned};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::id::{IndexId, PackId};
use crate::index::{Index, IndexPack, IndexSegment};
use crate::sealed;

/// Times the index segments are listed again when one vanished meanwhile.
const SEGMENT_RELISTS: u32 = 12;

impl Repository {
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

    /// Reloads the index from the segments stored now, for a long-lived
    /// handle that must see blobs other processes stored since it loaded
    /// it (a WAL archive daemon serving reads).
    ///
    /// # Errors
    /// Reading index segments.
    pub async fn reload_index_now(&self) -> Result<()> {
        self.reload_index().await
    }

    /// Reloads the index from the segments stored now (after a read found
    /// a pack gone), keeping the condemned packs marked.
    pub(crate) async fn reload_index(&self) -> Result<()> {
        let lock = self.index().await?;
        let condemned = {
            let index = lock.read().map_err(|_| poisoned())?;
            if index.has_pending() {
                // A backup on this handle is mid-way: its entries stay.
                return Ok(());
            }
            index.condemned_packs()
        };
        self.rebuild_index(lock, &condemned).await
    }

    async fn rebuild_index(
        &self,
        lock: &std::sync::RwLock<Index>,
        condemned: &HashSet<PackId>,
    ) -> Result<()> {
        let mut rebuilt = self.load_segments().await?;
        rebuilt.finish_loading();
        rebuilt.set_condemned(condemned);
        *lock.write().map_err(|_| poisoned())? = rebuilt;
        Ok(())
    }

    /// Brings the in-memory index up to the segments stored now: loads
    /// new ones; rebuilds it when one it holds was deleted (a prune
    /// rewrote it); marks `condemned` packs.
    pub(crate) async fn refresh_index(&self, condemned: &HashSet<PackId>) -> Result<()> {
        let Some(lock) = self.inner.index.get() else {
            // Loading it now reads the current segments.
            let lock = self.index().await?;
            lock.write()
                .map_err(|_| poisoned())?
                .set_condemned(condemned);
            return Ok(());
        };
        let mut listed: HashSet<IndexId> = HashSet::new();
        for info in self.inner.backend.list(ObjectKind::Index).await? {
            let id = info.name.parse().map_err(|_| {
                Error::corrupt(
                    ObjectKind::Index.object_name(&info.name),
                    "index segment name is not a 64-digit hex id",
                )
            })?;
            listed.insert(id);
        }
        let (stale, new): (bool, Vec<IndexId>) = {
            let index = lock.read().map_err(|_| poisoned())?;
            let stale = index.segment_ids().any(|id| !listed.contains(id));
            let new = listed
                .iter()
                .filter(|id| !index.has_segment(id))
                .copied()
                .collect();
            (stale, new)
        };
        if stale {
            return self.rebuild_index(lock, condemned).await;
        }
        let segments: Vec<_> = match futures::stream::iter(new)
            .map(|id| async move { self.read_index_segment(&id.to_hex()).await })
            .buffer_unordered(METADATA_CONCURRENCY)
            .try_collect()
            .await
        {
            Ok(s) => s,
            // Rewritten by a prune since the listing: load everything anew.
            Err(Error::Missing { .. }) => return self.rebuild_index(lock, condemned).await,
            Err(e) => return Err(e),
        };
        let mut index = lock.write().map_err(|_| poisoned())?;
        if !segments.is_empty() {
            for (id, segment) in &segments {
                index.add_named_segment(*id, segment)?;
            }
            index.finish_loading();
        }
        index.set_condemned(condemned);
        Ok(())
    }

    /// Stores an index segment for packs that are already durable.
    /// Returns its id and stored size.
    pub(crate) async fn write_index_segment(
        &self,
        packs: Vec<IndexPack>,
    ) -> Result<(IndexId, u64)> {
        let id = IndexId::random();
        let plain = IndexSegment { packs }.encode();
        let bytes = sealed::seal(&self.inner.keyring, ObjectKind::Index, &id.to_hex(), &plain);
        let len = bytes.len() as u64;
        self.inner
            .backend
            .put(ObjectKind::Index, &id.to_hex(), Bytes::from(bytes))
            .await?;
        if let Some(index) = self.inner.index.get() {
            index.write().map_err(|_| poisoned())?.note_segment(id);
        }
        Ok((id, len))
    }
}
