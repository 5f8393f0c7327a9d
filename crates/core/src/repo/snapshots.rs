//! Listing, reading, resolving and forgetting snapshots.

use futures::{StreamExt, TryStreamExt};

use super::{METADATA_CONCURRENCY, Repository};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::id::SnapshotId;
use crate::sealed;
use crate::snapshot::{self, DamagedSnapshot, Snapshot, SnapshotEntry, SnapshotListing};
use crate::storage::StorageError;

impl Repository {
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
}
