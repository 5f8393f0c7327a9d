//! Changed-block tracking with persistent qcow2 dirty bitmaps: one bitmap
//! per repository on each image, named `tessera-<repository id>-<snapshot
//! id>` after the snapshot whose point in time it counts writes from. A
//! backup reads only the chunks it marks dirty, when it can be trusted:
//! the bitmap is consistent, its snapshot still exists, and the disk kept
//! its size and chunk size. Otherwise the disk is read in full (and
//! deduplication keeps the stored bytes the same). The bitmap moves on
//! only once the new snapshot is committed.

use std::path::Path;

use tessera_core::{Repository, SnapshotId};

use crate::Result;
use crate::image::{self, ImageInfo};
use crate::restore::{DiskMap, disk_map, vm_meta};

/// The start of this repository's bitmap names.
pub fn prefix(repo_id: &str) -> String {
    let id: String = repo_id.chars().take(16).collect();
    format!("tessera-{id}-")
}

/// The bitmap that counts writes since snapshot `sid`.
pub fn name(repo_id: &str, sid: SnapshotId) -> String {
    format!("{}{}", prefix(repo_id), sid.to_hex())
}

/// What to read relative to.
pub enum Base {
    /// Read the chunks this bitmap marks; take the rest from `map`.
    Use {
        /// The bitmap's name.
        bitmap: String,
        /// The disk in the snapshot the bitmap is named after.
        map: DiskMap,
    },
    /// Read in full, for this reason.
    None(String),
}

/// The choice for one disk, and this repository's bitmaps on the image
/// (dropped once the new snapshot is committed).
pub struct Choice {
    /// The base, if any.
    pub base: Base,
    /// Every bitmap of this repository on the image.
    pub ours: Vec<String>,
}

/// Chooses how to read disk `disk` of VM `vm` from image `info`.
///
/// # Errors
/// Storage errors reading the base snapshot.
pub async fn choose(
    repo: &Repository,
    info: &ImageInfo,
    repo_id: &str,
    vm: &str,
    disk: &str,
    chunk_size: u32,
    full: bool,
) -> Result<Choice> {
    let pre = prefix(repo_id);
    let ours: Vec<&image::BitmapInfo> = info
        .bitmaps
        .iter()
        .filter(|b| b.name.starts_with(&pre))
        .collect();
    let names: Vec<String> = ours.iter().map(|b| b.name.clone()).collect();
    let none = |why: String| {
        Ok(Choice {
            base: Base::None(why),
            ours: names.clone(),
        })
    };
    if info.format != "qcow2" {
        return none(format!("a {} image has no dirty bitmaps", info.format));
    }
    if full {
        return none("a full read was asked for".into());
    }
    // A consistent, recording one; several survive only a backup that
    // died between its steps.
    let usable = |b: &&&image::BitmapInfo| !b.inconsistent() && b.recording();
    let Some(b) = ours.iter().rev().find(usable).or(ours.last()) else {
        return none("no dirty bitmap of this repository on the image yet".into());
    };
    if b.inconsistent() {
        return none(format!(
            "dirty bitmap {} is inconsistent (QEMU stopped without saving it)",
            b.name
        ));
    }
    if !b.recording() {
        return none(format!(
            "dirty bitmap {} is not recording (a backup stopped while holding it)",
            b.name
        ));
    }
    let Some(sid) = b
        .name
        .strip_prefix(&pre)
        .and_then(|s| s.parse::<SnapshotId>().ok())
    else {
        return none(format!(
            "dirty bitmap {} is not named after a snapshot",
            b.name
        ));
    };
    let snapshot = match repo.read_snapshot_object(sid).await {
        Ok(Some(s)) => s,
        Ok(None) | Err(tessera_core::Error::Missing { .. }) => {
            return none(format!(
                "snapshot {} of dirty bitmap {} does not exist (forgotten, or its backup never finished)",
                sid.short(),
                b.name
            ));
        }
        Err(e) => return Err(e.into()),
    };
    match vm_meta(&snapshot) {
        Ok(m) if m.name == vm && m.disks.iter().any(|d| d.name == disk) => {}
        _ => {
            return none(format!(
                "snapshot {} is not a backup of disk {disk} of VM {vm}",
                sid.short()
            ));
        }
    }
    let map = disk_map(repo, &snapshot, disk).await?;
    if map.size != info.size {
        return none(format!(
            "the disk was resized ({} bytes in snapshot {}, {} now)",
            map.size,
            sid.short(),
            info.size
        ));
    }
    if map.chunk_size != chunk_size {
        return none(format!(
            "snapshot {} used chunks of {} bytes, not {chunk_size}",
            sid.short(),
            map.chunk_size
        ));
    }
    Ok(Choice {
        base: Base::Use {
            bitmap: b.name.clone(),
            map,
        },
        ours: names,
    })
}

/// After a committed snapshot `sid`: a new bitmap named after it, and the
/// old ones of this repository removed.
///
/// # Errors
/// [`crate::Error::Tool`] adding the bitmap (the image is in use, ...).
pub fn advance(image: &Path, repo_id: &str, sid: SnapshotId, old: &[String]) -> Result<String> {
    let new = name(repo_id, sid);
    image::add_bitmap(image, &new)?;
    for b in old.iter().filter(|b| **b != new) {
        image::remove_bitmap(image, b)?;
    }
    Ok(new)
}
