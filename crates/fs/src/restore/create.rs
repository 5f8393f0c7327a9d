//! Step 2 of a restore: create what holds no data (directories, empty
//! files, special files, symlinks, hard links) and size the files to be
//! written; and the removals: what stands in an entry's way, damaged
//! files, and with `--delete` what the snapshot does not have.
//!
//! Every call works on a directory descriptor from [`Target`] and the
//! entry's own name, with `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;

use rustix::fs::{AtFlags, Mode, OFlags};
use tessera_core::{BlobId, Repository};

use super::meta::set_meta;
use super::plan::{Plan, parent_of};
use super::write::read_content;
use super::{io_err, lock};
use crate::Error;
use crate::beneath::Target;
use crate::meta::FileKind;
use crate::paths::join;
use crate::walk::data_extents;

/// Creates directory `idx`; true when it is new (so empty), false when
/// one was already there.
pub(super) fn make_dir(root: &Target, plan: &Plan, idx: usize) -> Result<bool, Error> {
    let (parent, name) = parent_of(root, plan, idx)?;
    let mkdir = || {
        rustix::fs::mkdirat(
            &parent,
            OsStr::from_bytes(name),
            Mode::from_bits_truncate(0o700),
        )
    };
    match mkdir() {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => {
            let path = || plan.path(Some(idx));
            let st =
                rustix::fs::statat(&parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(&path(), "checking", e))?;
            if crate::meta::kind_of(st.st_mode) == FileKind::Dir {
                Ok(false)
            } else {
                remove_all(&parent, name, &path())?;
                mkdir().map_err(|e| io_err(&path(), "creating the directory", e))?;
                Ok(true)
            }
        }
        Err(e) => Err(io_err(&plan.path(Some(idx)), "creating the directory", e)),
    }
}

/// Creates entry `idx` with `make`, replacing whatever is there first.
fn replace_with(
    root: &Target,
    plan: &Plan,
    idx: usize,
    make: impl Fn(&OwnedFd, &OsStr) -> rustix::io::Result<()>,
) -> Result<(), Error> {
    let (parent, name) = parent_of(root, plan, idx)?;
    let name_os = OsStr::from_bytes(name);
    let path = || plan.path(Some(idx));
    match make(&parent, name_os) {
        Err(rustix::io::Errno::EXIST) => {
            remove_all(&parent, name, &path())?;
            make(&parent, name_os).map_err(|e| io_err(&path(), "creating", e))
        }
        r => r.map_err(|e| io_err(&path(), "creating", e)),
    }
}

/// Removes `name` in `parent` (whose path, for messages, is `path`),
/// recursively for a directory.
pub(super) fn remove_all(parent: &OwnedFd, name: &[u8], path: &[u8]) -> Result<(), Error> {
    let name_os = OsStr::from_bytes(name);
    match rustix::fs::unlinkat(parent, name_os, AtFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::ISDIR) | Err(rustix::io::Errno::PERM) => {
            let dir = rustix::fs::openat(
                parent,
                name_os,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(path, "opening to remove", e))?;
            let names =
                crate::ahead::list(&dir).map_err(|e| io_err(path, "listing to remove", e))?;
            for n in names {
                remove_all(&dir, &n, &join(path, &n))?;
            }
            rustix::fs::unlinkat(parent, name_os, AtFlags::REMOVEDIR)
                .map_err(|e| io_err(path, "removing", e))
        }
        Err(e) => Err(io_err(path, "removing", e)),
    }
}

/// What [`create`] did with an entry.
#[derive(Default)]
pub(super) struct Created {
    /// Blobs (with their content offsets) still to be written.
    pub missing: Vec<(BlobId, u64)>,
    /// The file is not created yet: the first write creates it.
    pub deferred: bool,
    /// Why the file cannot be restored (a blob of it is in no index).
    pub lost: Option<String>,
    /// A device node left out: creating it needs CAP_MKNOD.
    pub device_skipped: bool,
}

/// What every [`create`] call shares.
pub(super) struct Creating<'a> {
    pub repo: &'a Repository,
    pub root: &'a Target,
    pub plan: &'a Plan,
    pub blob_sizes: &'a HashMap<BlobId, u32>,
    pub is_root: bool,
    pub warnings: &'a Mutex<Vec<String>>,
}

impl Creating<'_> {
    /// Creates entry `idx`, which is not a directory or a hard link. A
    /// file with content in a directory the restore made (`fresh`) is
    /// left for its first write to create.
    pub fn create(&self, idx: usize, fresh: bool) -> Result<Created, Error> {
        let (root, plan) = (self.root, self.plan);
        let item = &plan.items[idx];
        let mut missing = Vec::new();
        match item.kind {
            FileKind::File => {
                let mut offset = 0u64;
                let mut layout = Vec::with_capacity(item.content.len());
                for id in &item.content {
                    let Some(size) = self.blob_sizes.get(id).copied() else {
                        return Ok(Created {
                            lost: Some(format!("blob {id} is in no index segment")),
                            ..Created::default()
                        });
                    };
                    layout.push((*id, offset, u64::from(size)));
                    offset += u64::from(size);
                }
                if fresh && !layout.is_empty() {
                    return Ok(Created {
                        missing: layout.iter().map(|(id, off, _)| (*id, *off)).collect(),
                        deferred: true,
                        ..Created::default()
                    });
                }
                missing = self.prepare_file(idx, &layout)?;
            }
            FileKind::Symlink => {
                let link = item.meta.target.clone().unwrap_or_default();
                replace_with(root, plan, idx, |parent, name| {
                    rustix::fs::symlinkat(OsStr::from_bytes(&link), parent, name)
                })?;
            }
            kind => {
                let file_type = match kind {
                    FileKind::Fifo => rustix::fs::FileType::Fifo,
                    FileKind::Chardev => rustix::fs::FileType::CharacterDevice,
                    FileKind::Blockdev => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Socket,
                };
                let rdev = item.meta.rdev.unwrap_or(0);
                let mode = Mode::from_bits_truncate(item.meta.mode & 0o777);
                let device = matches!(kind, FileKind::Chardev | FileKind::Blockdev);
                match replace_with(root, plan, idx, |parent, name| {
                    rustix::fs::mknodat(parent, name, file_type, mode, rdev)
                }) {
                    // Without CAP_MKNOD (not root, or root in a container):
                    // left out, counted in one warning at the end.
                    Err(Error::Io { source, .. })
                        if device
                            && source.raw_os_error()
                                == Some(rustix::io::Errno::PERM.raw_os_error()) =>
                    {
                        return Ok(Created {
                            device_skipped: true,
                            ..Created::default()
                        });
                    }
                    r => r?,
                }
            }
        }
        if missing.is_empty() {
            let mut w = Vec::new();
            set_meta(root, plan, Some(idx), &item.meta, self.is_root, &mut w)?;
            if !w.is_empty() {
                lock(self.warnings).extend(w);
            }
        }
        Ok(Created {
            missing,
            ..Created::default()
        })
    }

    /// Creates or reuses file `idx` at its final size; returns the blobs
    /// (and their content offsets) it still lacks. `layout` is each
    /// blob's (id, content offset, length).
    fn prepare_file(
        &self,
        idx: usize,
        layout: &[(BlobId, u64, u64)],
    ) -> Result<Vec<(BlobId, u64)>, Error> {
        let item = &self.plan.items[idx];
        let path = || self.plan.path(Some(idx));
        let size = item.meta.size;
        let (parent, name) = parent_of(self.root, self.plan, idx)?;
        let name_os = OsStr::from_bytes(name);
        let existing = rustix::fs::statat(&parent, name_os, AtFlags::SYMLINK_NOFOLLOW).ok();
        if let Some(st) = &existing {
            if crate::meta::kind_of(st.st_mode) != FileKind::File || st.st_nlink > 1 {
                // Never write through another name's inode.
                remove_all(&parent, name, &path())?;
            }
        }
        let fd = rustix::fs::openat(
            &parent,
            name_os,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io_err(&path(), "creating", e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(&path(), "checking", e))?;
        let all = || layout.iter().map(|(id, off, _)| (*id, *off)).collect();
        let resize = || -> Result<(), Error> {
            rustix::fs::ftruncate(&fd, 0).map_err(|e| io_err(&path(), "truncating", e))?;
            rustix::fs::ftruncate(&fd, size).map_err(|e| io_err(&path(), "sizing", e))
        };
        if st.st_size as u64 != size || size == 0 {
            resize()?;
            return Ok(all());
        }
        // Resume: keep the ranges that already hold the right bytes.
        let mut missing = Vec::new();
        let mut buf = Vec::new();
        for (id, off, len) in layout {
            buf.resize(*len as usize, 0);
            let ok = read_content(&fd, item.meta.extents.as_deref(), *off, &mut buf).is_ok()
                && self.repo.blob_id_of(&buf) == *id;
            if !ok {
                missing.push((*id, *off));
            }
        }
        // A file that should have holes where it holds data gets them back.
        if item.meta.extents.is_some() && data_extents(&fd, size).ok() != item.meta.extents {
            resize()?;
            return Ok(all());
        }
        Ok(missing)
    }
}

/// Makes item `idx` a hard link of item `first`, a regular file this
/// restore wrote (both looked up beneath the target; `first` itself is
/// linked, never what a symlink there would point to).
pub(super) fn link_to(root: &Target, plan: &Plan, first: usize, idx: usize) -> Result<(), Error> {
    let (fparent, fname) = parent_of(root, plan, first)?;
    let fname = OsStr::from_bytes(fname);
    let st = rustix::fs::statat(&fparent, fname, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        io_err(
            &plan.path(Some(first)),
            "checking the hard link's first name",
            e,
        )
    })?;
    if crate::meta::kind_of(st.st_mode) != FileKind::File {
        return Err(Error::Invalid(format!(
            "{}: hard link to {}, which is not a regular file",
            plan.show(idx),
            plan.show(first)
        )));
    }
    replace_with(root, plan, idx, |parent, name| {
        rustix::fs::linkat(&fparent, fname, parent, name, AtFlags::empty())
    })
}

/// Removes the files the restore could not complete, so none is left
/// with holes of zeros where data was lost; returns them, each with why.
pub(super) fn remove_damaged(
    root: &Target,
    plan: &Plan,
    damaged: &HashMap<usize, String>,
) -> Result<Vec<String>, Error> {
    let mut out = Vec::with_capacity(damaged.len());
    let mut order: Vec<(&usize, &String)> = damaged.iter().collect();
    order.sort();
    for (idx, why) in order {
        let (parent, name) = parent_of(root, plan, *idx)?;
        match rustix::fs::unlinkat(&parent, OsStr::from_bytes(name), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => {
                return Err(io_err(
                    &plan.path(Some(*idx)),
                    "removing the damaged file",
                    e,
                ));
            }
        }
        out.push(format!("{}: {why}", plan.show(*idx)));
    }
    Ok(out)
}

/// Removes what the snapshot does not have from the directories restored
/// whole (`plan.covered`); entries the snapshot has but the patterns left
/// out stay. Returns how many went.
pub(super) fn delete_extra(root: &Target, plan: &Plan) -> Result<u64, Error> {
    let none = Default::default();
    let mut deleted = 0;
    for dir in &plan.covered {
        let path = || plan.path(*dir);
        let fd = root
            .open_dir(plan, *dir, OFlags::RDONLY)
            .map_err(|e| io_err(&path(), "listing", e))?;
        let names = crate::ahead::list(&fd).map_err(|e| io_err(&path(), "listing", e))?;
        let has = plan.in_snapshot.get(dir).unwrap_or(&none);
        for n in names.into_iter().filter(|n| !has.contains(&n[..])) {
            remove_all(&fd, &n, &join(&path(), &n))?;
            deleted += 1;
        }
    }
    Ok(deleted)
}
