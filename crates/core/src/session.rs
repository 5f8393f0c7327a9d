//! Write sessions (FORMAT.md §10): the marker a writer creates before it
//! stores anything, its expiry by tombstone, and how an interrupted
//! process ends its sessions. A session's id is the name its snapshot
//! will take, so it is typed [`SnapshotId`].

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::id::SnapshotId;
use crate::repo::{Repository, poisoned};
use crate::sealed;
use crate::snapshot;
use crate::storage::StorageError;

/// `sessions/<sid>`: who is writing (informational; only the name and the
/// storage's timestamp matter to the protocol).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMarker {
    /// Host name.
    pub hostname: String,
    /// User name.
    pub username: String,
    /// Program and version.
    pub program: String,
    /// When the session began, by the writer's clock (shown, never trusted).
    pub started: jiff::Timestamp,
}

impl SessionMarker {
    fn here() -> Self {
        SessionMarker {
            hostname: crate::host::hostname(),
            username: crate::host::username(),
            program: format!("tessera {}", env!("CARGO_PKG_VERSION")),
            started: jiff::Timestamp::now(),
        }
    }

    /// Encodes the plaintext (JSON).
    pub fn encode(&self) -> Vec<u8> {
        #[allow(clippy::expect_used)]
        serde_json::to_vec(self).expect("session marker serializes")
    }

    /// Decodes the plaintext.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `object`.
    pub fn decode(plain: &[u8], object: &str) -> Result<Self> {
        serde_json::from_slice(plain)
            .map_err(|e| Error::corrupt(object, format!("session marker does not decode: {e}")))
    }
}

impl Repository {
    /// This handle's open session, begun now if there is none: the marker
    /// is created first, then the plans are read and the index refreshed.
    /// [`Repository::store_tree`] takes the session over; its
    /// [`Repository::commit_snapshot`] ends it.
    pub(crate) async fn ensure_session(&self) -> Result<SnapshotId> {
        let mut slot = self.inner.session.lock().await;
        if let Some(sid) = *slot {
            return Ok(sid);
        }
        let sid = self.create_marker().await?;
        // From here on the session is open: any failure must close it.
        let prepared = async {
            let condemned = self.condemned_packs().await?;
            self.refresh_index(&condemned).await
        }
        .await;
        if let Err(e) = prepared {
            self.delete_marker(sid).await;
            return Err(e);
        }
        *slot = Some(sid);
        Ok(sid)
    }

    /// The id of this handle's write session, begun now if there is none:
    /// the name the snapshot of the next [`Repository::store_tree`] takes
    /// when [`Repository::commit_snapshot`] succeeds (an adapter can name
    /// things after the snapshot before it exists, e.g. a VM's dirty
    /// bitmap). A caller that stores nothing after all calls
    /// [`Repository::abandon_session`].
    ///
    /// # Errors
    /// Storage errors creating the marker or loading the index.
    pub async fn session_id(&self) -> Result<SnapshotId> {
        self.ensure_session().await
    }

    /// Creates the marker of a new session.
    pub(crate) async fn create_marker(&self) -> Result<SnapshotId> {
        let sid = SnapshotId::random();
        let name = sid.to_hex();
        let marker = sealed::seal(
            &self.inner.keyring,
            ObjectKind::Session,
            &name,
            &SessionMarker::here().encode(),
        );
        // Tracked before the put: an interruption during it must end the
        // session too (it may have landed).
        self.live_sessions()?.insert(sid);
        let put = self
            .inner
            .backend
            .put(ObjectKind::Session, &name, Bytes::from(marker))
            .await;
        if let Err(e) = put {
            self.live_sessions()?.remove(&sid);
            return Err(e.into());
        }
        Ok(sid)
    }

    fn live_sessions(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, std::collections::BTreeSet<SnapshotId>>> {
        self.inner.live_sessions.lock().map_err(|_| poisoned())
    }

    /// Ends every write session this handle has open, as a process that
    /// is interrupted (SIGINT, SIGTERM) must before it exits, so no prune
    /// holds its deletions back for a whole lease. Each session is expired
    /// the way a prune expires one: a tombstone created create-only under
    /// its snapshot's name, so a commit that already landed stands and
    /// none can land after; then its marker is deleted. Returns the
    /// sessions closed.
    ///
    /// # Errors
    /// A storage error writing a tombstone: that session's marker stays
    /// (a prune then expires it after the lease).
    pub async fn interrupt_sessions(&self) -> Result<Vec<SnapshotId>> {
        let open: Vec<SnapshotId> = self.live_sessions()?.iter().copied().collect();
        for sid in &open {
            self.expire_session(*sid).await?;
            self.delete_marker(*sid).await;
        }
        Ok(open)
    }

    /// Takes this handle's open session (begun if none), so the next
    /// writer begins its own.
    pub(crate) async fn take_session(&self) -> Result<SnapshotId> {
        self.ensure_session().await?;
        self.inner
            .session
            .lock()
            .await
            .take()
            .ok_or_else(|| Error::Internal("write session vanished".into()))
    }

    /// Closes the handle's open session without a snapshot (nothing it
    /// wrote is referenced). Harmless when there is none.
    pub async fn abandon_session(&self) {
        let open = self.inner.session.lock().await.take();
        if let Some(sid) = open {
            self.delete_marker(sid).await;
        }
    }

    /// Expires a session: a tombstone under its snapshot's name,
    /// create-only, so it can commit nothing after (FORMAT.md §10). True
    /// when this call put the tombstone, false when the name was taken
    /// (the session committed, or was expired already).
    ///
    /// # Errors
    /// Storage errors.
    pub(crate) async fn expire_session(&self, sid: SnapshotId) -> Result<bool> {
        let name = sid.to_hex();
        let tomb = sealed::seal(
            &self.inner.keyring,
            ObjectKind::Snapshot,
            &name,
            snapshot::TOMBSTONE,
        );
        match self
            .inner
            .backend
            .put(ObjectKind::Snapshot, &name, Bytes::from(tomb))
            .await
        {
            Ok(()) => Ok(true),
            Err(StorageError::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a session's marker. A failure only leaves the marker for a
    /// prune to wait on (until the lease runs out): not worth failing for.
    pub(crate) async fn delete_marker(&self, sid: SnapshotId) {
        let deleted = self
            .inner
            .backend
            .delete(ObjectKind::Session, &sid.to_hex())
            .await;
        if matches!(deleted, Ok(()) | Err(StorageError::NotFound { .. })) {
            if let Ok(mut live) = self.live_sessions() {
                live.remove(&sid);
            }
        }
    }
}
