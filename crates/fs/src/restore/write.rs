//! Step 3 of a restore: write each fetched blob into every file that
//! needs it (on rayon, in the order blobs arrive), and finish a file's
//! metadata with its last write.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags};
use tessera_core::BlobId;

use super::RestoreProgress;
use super::meta::{Done, set_fd_meta};
use super::plan::{Item, Plan, parent_of};
use super::{io_err, lock};
use crate::Error;
use crate::beneath::Target;
use crate::direct;
use crate::meta::FsMeta;

/// Files held open between writes, at most (the rest are reopened per
/// write): well under the usual limit of 1,024 descriptors.
const MAX_OPEN_FILES: usize = 256;

/// A file that still lacks blobs.
pub(super) struct FileSlot {
    state: Mutex<SlotState>,
    /// Writes still to come; the one that brings this to zero sets the
    /// file's metadata.
    remaining: AtomicU32,
    /// A blob of it was lost: it is removed at the end, not finished.
    damaged: AtomicBool,
}

struct SlotState {
    /// The descriptors, kept between writes while more are to come.
    fds: Option<Arc<FileFds>>,
    /// The file does not exist yet.
    to_create: bool,
    /// The permission bits the restore created the file with (known when
    /// the umask is), so a matching mode needs no chmod.
    created_mode: Option<u32>,
}

impl FileSlot {
    pub fn new(writes: u32, to_create: bool) -> Self {
        FileSlot {
            state: Mutex::new(SlotState {
                fds: None,
                to_create,
                created_mode: None,
            }),
            remaining: AtomicU32::new(writes),
            damaged: AtomicBool::default(),
        }
    }
}

/// Writes delivered blobs into the files that need them (on rayon).
pub(super) struct Writer {
    /// Where every path is resolved.
    pub root: Target,
    pub plan: Plan,
    /// Per blob: the files and content offsets it goes to.
    pub needed: HashMap<BlobId, Vec<(usize, u64)>>,
    pub slots: HashMap<usize, FileSlot>,
    pub open_fds: AtomicUsize,
    pub is_root: bool,
    /// Owner (uid, gid) every file the restore creates gets: known when
    /// the target was empty and its directory is not setgid (so no
    /// directory the restore made is).
    pub created_owner: Option<(u32, u32)>,
    /// This process's umask, when /proc tells it and it alone decides a
    /// new file's mode (see `created_owner`).
    pub umask: Option<u32>,
    pub warnings: Mutex<Vec<String>>,
    pub progress: Arc<RestoreProgress>,
    /// Files that lost data, and why (by item).
    pub damaged: Mutex<HashMap<usize, String>>,
}

impl Writer {
    /// A blob that cannot be read: every file that needs it is damaged
    /// (its other writes still happen; it is removed at the end).
    pub fn lose(&self, id: BlobId, e: &tessera_core::Error) {
        for (idx, _) in self.needed.get(&id).into_iter().flatten() {
            lock(&self.damaged)
                .entry(*idx)
                .or_insert_with(|| e.to_string());
            if let Some(slot) = self.slots.get(idx) {
                slot.damaged.store(true, Ordering::Release);
                self.end_write(slot);
            }
        }
    }

    /// Counts one write of `slot` done (or lost); true when it was the
    /// last, whose descriptors are then given back.
    fn end_write(&self, slot: &FileSlot) -> bool {
        if slot.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
            return false;
        }
        if let Some(kept) = lock(&slot.state).fds.take() {
            self.open_fds.fetch_sub(kept.count(), Ordering::Relaxed);
        }
        true
    }

    /// Writes blob `id` (`plain`) everywhere it goes.
    pub fn deliver(&self, id: BlobId, plain: &[u8]) -> Result<(), Error> {
        for (idx, off) in self.needed.get(&id).into_iter().flatten() {
            let (item, slot) = match (self.plan.items.get(*idx), self.slots.get(idx)) {
                (Some(i), Some(s)) => (i, s),
                _ => return Err(Error::Internal(format!("restore item {idx} unknown"))),
            };
            let path = || self.plan.path(Some(*idx));
            let fds = self.fds_for(*idx, slot)?;
            write_ranges(item, &fds, *off, plain).map_err(|e| io_err(&path(), "writing", e))?;
            self.progress
                .bytes_written
                .fetch_add(plain.len() as u64, Ordering::Relaxed);
            if self.end_write(slot) && !slot.damaged.load(Ordering::Acquire) {
                let created_mode = lock(&slot.state).created_mode;
                let done = Done {
                    owner: created_mode.and(self.created_owner)
                        == Some((item.meta.uid, item.meta.gid)),
                    mode: created_mode == Some(item.meta.mode & 0o7777),
                };
                let mut w = Vec::new();
                set_fd_meta(&fds.fd, &path, &item.meta, self.is_root, done, &mut w)?;
                if !w.is_empty() {
                    lock(&self.warnings).extend(w);
                }
            }
        }
        Ok(())
    }

    /// The descriptors of file `idx`: those kept open, or new ones (kept
    /// when more writes follow and the budget allows). The first call
    /// creates a deferred file; the writes give it its size, or a truncate
    /// when it ends in a hole or is written direct (holes stay holes
    /// either way). A file of [`direct::MIN_FILE`] or more gets a second,
    /// direct descriptor.
    fn fds_for(&self, idx: usize, slot: &FileSlot) -> Result<Arc<FileFds>, Error> {
        let mut state = lock(&slot.state);
        if let Some(fds) = state.fds.as_ref() {
            return Ok(fds.clone());
        }
        let item = &self.plan.items[idx];
        let path = || self.plan.path(Some(idx));
        let large = item.meta.size >= direct::MIN_FILE;
        let (parent, name) = parent_of(&self.root, &self.plan, idx)?;
        let fd = if state.to_create {
            // Created with its final permission bits when the owner may
            // write it (a later reopen for writing must succeed), else 0600.
            let perm = item.meta.mode & 0o777;
            let create_mode = if perm & 0o200 != 0 { perm } else { 0o600 };
            let fd = rustix::fs::openat(
                &parent,
                OsStr::from_bytes(name),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_bits_truncate(create_mode),
            )
            .map_err(|e| io_err(&path(), "creating", e))?;
            state.created_mode = self.umask.map(|u| create_mode & !u);
            if large || ends_in_hole(&item.meta) {
                rustix::fs::ftruncate(&fd, item.meta.size)
                    .map_err(|e| io_err(&path(), "sizing", e))?;
            }
            state.to_create = false;
            fd
        } else {
            rustix::fs::openat(
                &parent,
                OsStr::from_bytes(name),
                OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(&path(), "opening to write", e))?
        };
        let direct = large.then(|| direct::reopen(&fd)).flatten();
        let fds = Arc::new(FileFds { fd, direct });
        if slot.remaining.load(Ordering::Acquire) > 1 {
            if self.open_fds.fetch_add(fds.count(), Ordering::Relaxed) < MAX_OPEN_FILES {
                state.fds = Some(fds.clone());
            } else {
                self.open_fds.fetch_sub(fds.count(), Ordering::Relaxed);
            }
        }
        Ok(fds)
    }
}

/// The descriptors a file is written through.
struct FileFds {
    fd: OwnedFd,
    /// For the aligned middles of long writes (see [`direct`]).
    direct: Option<OwnedFd>,
}

impl FileFds {
    /// Descriptors held.
    fn count(&self) -> usize {
        1 + usize::from(self.direct.is_some())
    }
}

/// True when the file's last byte lies in a hole, so no write reaches
/// its end.
fn ends_in_hole(meta: &FsMeta) -> bool {
    meta.extents
        .as_ref()
        .is_some_and(|e| e.last().is_none_or(|(start, len)| start + len < meta.size))
}

/// Maps content offsets to file offsets: content is the data extents
/// concatenated (or the whole file without extents).
fn file_ranges(extents: Option<&[(u64, u64)]>, mut off: u64, mut len: u64) -> Vec<(u64, u64)> {
    let Some(extents) = extents else {
        return vec![(off, len)];
    };
    let mut out = Vec::new();
    for (start, elen) in extents {
        if len == 0 {
            break;
        }
        if off >= *elen {
            off -= elen;
            continue;
        }
        let n = (elen - off).min(len);
        out.push((start + off, n));
        len -= n;
        off = 0;
    }
    out
}

/// Reads content offset `off` of a file (laid out by `extents`) into `buf`.
pub(super) fn read_content(
    fd: &OwnedFd,
    extents: Option<&[(u64, u64)]>,
    off: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    let mut pos = 0usize;
    for (at, n) in file_ranges(extents, off, buf.len() as u64) {
        let part = buf
            .get_mut(pos..pos + n as usize)
            .ok_or_else(|| std::io::Error::other("range outside the buffer"))?;
        let mut done = 0;
        while done < part.len() {
            let got = rustix::io::pread(
                fd,
                part.get_mut(done..).unwrap_or_default(),
                at + done as u64,
            )?;
            if got == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            done += got;
        }
        pos += n as usize;
    }
    Ok(())
}

/// Writes `data`, content offset `off` of `item`, through `fds` (the
/// aligned middles of long pieces through the direct one, when there).
fn write_ranges(item: &Item, fds: &FileFds, off: u64, data: &[u8]) -> std::io::Result<()> {
    let mut pos = 0usize;
    for (at, n) in file_ranges(item.meta.extents.as_deref(), off, data.len() as u64) {
        let part = data.get(pos..pos + n as usize).unwrap_or_default();
        direct::write_at(&fds.fd, fds.direct.as_ref(), at, part)?;
        pos += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::file_ranges;

    #[test]
    fn content_offsets_map_through_extents() {
        assert_eq!(file_ranges(None, 5, 10), vec![(5, 10)]);
        let ext = [(100, 10), (200, 10), (300, 5)];
        assert_eq!(file_ranges(Some(&ext), 0, 10), vec![(100, 10)]);
        assert_eq!(file_ranges(Some(&ext), 5, 10), vec![(105, 5), (200, 5)]);
        assert_eq!(file_ranges(Some(&ext), 15, 10), vec![(205, 5), (300, 5)]);
    }
}
