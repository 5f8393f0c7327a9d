//! Key slots: listing, adding, removing and changing passwords.

use bytes::Bytes;

use super::{Repository, poisoned};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::id::KeySlotId;
use crate::key::{Credential, KdfParams, KeySlot};

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

impl Repository {
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
}
