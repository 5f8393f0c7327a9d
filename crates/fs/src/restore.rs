//! Restore: recreate a snapshot's entries under a target directory.
//!
//! 1. Plan: walk the snapshot (or the part asked for), apply the include
//!    and exclude patterns, and list every entry.
//! 2. Create directories, then files (at their final size, so holes stay
//!    holes), links, symlinks and special files. A file already present
//!    with the right size is checked blob by blob: ranges that already
//!    hold the right bytes (same keyed hash) are not written again, so an
//!    interrupted restore resumes where it stopped.
//! 3. Fetch the missing blobs in pack order (parallel range reads) and
//!    write each to every place that needs it, in place.
//! 4. Set metadata: files as they are done, directories last, deepest
//!    first, so writing into a directory does not change its times again.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};
use tessera_core::{BlobId, NodeKind, Repository, Snapshot};

use crate::Error;
use crate::meta::{FileKind, FsMeta};
use crate::paths::{join, patterns, proc_path};
use crate::snapshot_tree::{TreeEntry, find_node, walk_tree};
use crate::walk::{data_extents, open_long};

/// Options of a restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Restore only entries matching one of these gitignore-style patterns
    /// (matched against snapshot paths) and what is inside them.
    pub include: Vec<String>,
    /// Leave out entries matching these patterns.
    pub exclude: Vec<String>,
    /// Remove entries of the target that the snapshot does not have.
    pub delete: bool,
    /// Counters to show progress.
    pub progress: Option<Arc<RestoreProgress>>,
}

/// Live counters of a restore.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    /// Bytes to write in all.
    pub bytes_total: AtomicU64,
    /// Bytes written so far.
    pub bytes_written: AtomicU64,
}

/// The outcome of a restore.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RestoreSummary {
    /// Regular files restored (including hard links).
    pub files: u64,
    /// Files that were already correct in the target.
    pub files_unchanged: u64,
    /// Directories.
    pub dirs: u64,
    /// Symlinks, devices, FIFOs, sockets.
    pub others: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Entries removed by `delete`.
    pub deleted: u64,
    /// Problems that did not stop the restore (ownership not settable, ...).
    pub warnings: Vec<String>,
}

fn io_err(path: &[u8], operation: &'static str, source: impl Into<std::io::Error>) -> Error {
    Error::Io {
        path: PathBuf::from(OsStr::from_bytes(path)),
        operation,
        source: source.into(),
    }
}

/// One entry to restore.
struct Item {
    /// Target path.
    target: Vec<u8>,
    kind: FileKind,
    meta: FsMeta,
    content: Vec<BlobId>,
    /// For a later member of a hard-link group: the item it links to.
    link_to: Option<usize>,
}

/// The pattern set, or `None` for no patterns (so "include" means all).
fn matcher(list: &[String]) -> Result<Option<ignore::gitignore::Gitignore>, Error> {
    (!list.is_empty()).then(|| patterns(list)).transpose()
}

/// Restores `path` of `snapshot` (`/` for all of it) into `target`: the
/// contents of a directory go straight into `target`; a file or other
/// entry goes into `target` under its own name.
///
/// # Errors
/// A path not in the snapshot, a snapshot that is not a filesystem
/// snapshot, storage errors, and write errors naming the target path (a
/// full disk among them). The repository is only read.
pub async fn restore(
    repo: &Repository,
    snapshot: &Snapshot,
    path: &Path,
    target: &Path,
    options: RestoreOptions,
) -> Result<RestoreSummary, Error> {
    if snapshot.source_kind != crate::SOURCE_KIND {
        return Err(Error::Invalid(format!(
            "this is a {:?} snapshot, not a filesystem one: use `dump`",
            snapshot.source_kind
        )));
    }
    std::fs::create_dir_all(target)
        .map_err(|e| io_err(target.as_os_str().as_bytes(), "creating the target", e))?;
    let target = std::fs::canonicalize(target)
        .map_err(|e| io_err(target.as_os_str().as_bytes(), "resolving the target", e))?;
    let target = target.as_os_str().as_bytes().to_vec();
    let include = matcher(&options.include)?;
    let exclude = matcher(&options.exclude)?;
    let start = find_node(repo, snapshot, path).await?;
    let start_path = path.as_os_str().as_bytes().to_vec();

    // 1. Plan.
    let mut items: Vec<Item> = Vec::new();
    let mut dirs_kept: HashSet<Vec<u8>> = HashSet::new();
    let mut add = |e: &TreeEntry, rel: &[u8]| -> Result<bool, Error> {
        let Some(meta) = e.meta.clone() else {
            return Err(Error::Invalid(format!(
                "{}: no filesystem metadata in the snapshot",
                String::from_utf8_lossy(&e.path)
            )));
        };
        let is_dir = meta.kind == FileKind::Dir;
        if exclude
            .as_ref()
            .is_some_and(|m| m.matched(OsStr::from_bytes(&e.path), is_dir).is_ignore())
        {
            return Ok(false);
        }
        let included = include.as_ref().is_none_or(|m| {
            m.matched_path_or_any_parents(OsStr::from_bytes(&e.path), is_dir)
                .is_ignore()
        });
        if !included && !is_dir {
            return Ok(false);
        }
        let content = match &e.node.kind {
            NodeKind::Stream { content } => content.clone(),
            _ => Vec::new(),
        };
        if included {
            // Every ancestor of an included entry is created.
            let mut p = rel.to_vec();
            while let Some(i) = p.iter().rposition(|b| *b == b'/') {
                p.truncate(i);
                if !dirs_kept.insert(p.clone()) {
                    break;
                }
            }
            if is_dir {
                dirs_kept.insert(rel.to_vec());
            }
        }
        items.push(Item {
            target: join(&target, rel),
            kind: meta.kind,
            meta,
            content,
            link_to: None,
        });
        Ok(true)
    };
    match &start {
        None => {
            walk_tree(repo, snapshot.tree, b"/", |e| {
                let rel = e.path.strip_prefix(b"/").unwrap_or(&e.path).to_vec();
                add(e, &rel)
            })
            .await?
        }
        Some(node) => {
            let entry = TreeEntry {
                path: start_path.clone(),
                meta: FsMeta::from_meta(&node.meta).ok(),
                node: node.clone(),
                depth: 0,
            };
            match &node.kind {
                NodeKind::Dir { subtree } => {
                    let base_len = start_path.len();
                    walk_tree(repo, *subtree, &start_path, |e| {
                        let rel = e.path.get(base_len..).unwrap_or_default();
                        let rel = rel.strip_prefix(b"/").unwrap_or(rel).to_vec();
                        add(e, &rel)
                    })
                    .await?
                }
                _ => {
                    add(&entry, node.name_bytes())?;
                }
            }
        }
    }
    // Directories kept only for what they hold: drop those that hold nothing included.
    let tlen = target.len() + 1;
    items.retain(|i| {
        i.kind != FileKind::Dir || dirs_kept.contains(i.target.get(tlen..).unwrap_or_default())
    });
    // Hard links: later members of a group link to the first.
    let mut groups: HashMap<(u64, u64), usize> = HashMap::new();
    for (i, item) in items.iter_mut().enumerate() {
        if let Some((dev, ino, _)) = item.meta.hardlink.filter(|_| item.kind != FileKind::Dir) {
            match groups.get(&(dev, ino)) {
                Some(first) => item.link_to = Some(*first),
                None => {
                    groups.insert((dev, ino), i);
                }
            }
        }
    }

    // 2. Create.
    let mut summary = RestoreSummary::default();
    let is_root = rustix::process::geteuid().is_root();
    let mut needed: HashMap<BlobId, Vec<(usize, u64)>> = HashMap::new();
    // Every blob's size, with one index lookup for the whole restore.
    let all: Vec<BlobId> = {
        let mut v: Vec<BlobId> = items
            .iter()
            .filter(|i| i.link_to.is_none())
            .flat_map(|i| i.content.iter().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let blob_sizes: HashMap<BlobId, u32> = all
        .iter()
        .zip(repo.blob_sizes(&all).await?)
        .filter_map(|(id, size)| Some((*id, size?)))
        .collect();
    let mut pending_files: Vec<usize> = Vec::new();
    for idx in 0..items.len() {
        let item = &items[idx];
        match (item.kind, item.link_to) {
            (FileKind::Dir, _) => {
                make_dir(&item.target)?;
                summary.dirs += 1;
            }
            (_, Some(first)) => {
                replace_with(&item.target, |parent, name| {
                    let first = &items[first].target;
                    rustix::fs::linkat(
                        rustix::fs::CWD,
                        OsStr::from_bytes(first),
                        parent,
                        name,
                        AtFlags::empty(),
                    )
                    .or_else(|e| {
                        if first.len() >= 3000 {
                            link_long(first, parent, name)
                        } else {
                            Err(e)
                        }
                    })
                })?;
                summary.files += 1;
            }
            (FileKind::File, None) => {
                summary.files += 1;
                let mut offset = 0u64;
                let mut plan = Vec::with_capacity(item.content.len());
                for id in &item.content {
                    let size = *blob_sizes.get(id).ok_or_else(|| {
                        Error::Core(tessera_core::Error::BlobNotIndexed {
                            blob: id.to_hex(),
                            referrer: String::from_utf8_lossy(&item.target).into_owned(),
                        })
                    })?;
                    plan.push((*id, offset, u64::from(size)));
                    offset += u64::from(size);
                }
                let missing = prepare_file(repo, item, &plan)?;
                if missing.is_empty() {
                    summary.files_unchanged += 1;
                    set_meta(&item.target, &item.meta, is_root, &mut summary.warnings)?;
                } else {
                    pending_files.push(idx);
                    for (id, off) in missing {
                        needed.entry(id).or_default().push((idx, off));
                    }
                }
            }
            (FileKind::Symlink, None) => {
                let link = item.meta.target.clone().unwrap_or_default();
                replace_with(&item.target, |parent, name| {
                    rustix::fs::symlinkat(OsStr::from_bytes(&link), parent, name)
                })?;
                summary.others += 1;
            }
            (kind, None) => {
                let file_type = match kind {
                    FileKind::Fifo => rustix::fs::FileType::Fifo,
                    FileKind::Chardev => rustix::fs::FileType::CharacterDevice,
                    FileKind::Blockdev => rustix::fs::FileType::BlockDevice,
                    _ => rustix::fs::FileType::Socket,
                };
                let rdev = item.meta.rdev.unwrap_or(0);
                let mode = Mode::from_bits_truncate(item.meta.mode & 0o777);
                replace_with(&item.target, |parent, name| {
                    rustix::fs::mknodat(parent, name, file_type, mode, rdev)
                })?;
                summary.others += 1;
            }
        }
        if item.kind != FileKind::Dir && item.kind != FileKind::File {
            set_meta(&item.target, &item.meta, is_root, &mut summary.warnings)?;
        }
    }

    // 3. Write the missing blobs in pack order.
    let total: u64 = needed
        .iter()
        .map(|(id, t)| u64::from(blob_sizes.get(id).copied().unwrap_or(0)) * t.len() as u64)
        .sum();
    let progress = options.progress.clone().unwrap_or_default();
    progress.bytes_total.store(total, Ordering::Relaxed);
    let items = Arc::new(items);
    let needed = Arc::new(needed);
    {
        let (items, needed, progress) = (items.clone(), needed.clone(), progress.clone());
        let ids: Vec<BlobId> = needed.keys().copied().collect();
        repo.fetch_blobs(ids, "restore", move |id, plain| -> Result<(), Error> {
            for (idx, off) in needed.get(&id).into_iter().flatten() {
                let item = &items[*idx];
                write_at(item, *off, &plain)?;
                progress
                    .bytes_written
                    .fetch_add(plain.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        })
        .await?;
    }
    summary.bytes_written = progress.bytes_written.load(Ordering::Relaxed);

    // 4. Metadata: files, then directories deepest first.
    for idx in pending_files {
        let item = &items[idx];
        set_meta(&item.target, &item.meta, is_root, &mut summary.warnings)?;
    }
    if options.delete {
        summary.deleted = delete_extra(&items, &target)?;
    }
    for item in items.iter().rev().filter(|i| i.kind == FileKind::Dir) {
        set_meta(&item.target, &item.meta, is_root, &mut summary.warnings)?;
    }
    if let Some(node) = &start {
        if let (NodeKind::Dir { .. }, Some(meta)) = (&node.kind, FsMeta::from_meta(&node.meta).ok())
        {
            set_meta(&target, &meta, is_root, &mut summary.warnings)?;
        }
    }
    Ok(summary)
}

/// Opens the parent directory of `path`; returns it and the final name.
fn parent_of(path: &[u8]) -> Result<(OwnedFd, &[u8]), Error> {
    let i = path
        .iter()
        .rposition(|b| *b == b'/')
        .ok_or_else(|| Error::Invalid("relative target path".into()))?;
    let (dir, name) = (
        path.get(..i.max(1)).unwrap_or(b"/"),
        path.get(i + 1..).unwrap_or_default(),
    );
    let fd = open_long(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(dir, "opening the directory", e))?;
    Ok((fd, name))
}

fn make_dir(path: &[u8]) -> Result<(), Error> {
    let (parent, name) = parent_of(path)?;
    match rustix::fs::mkdirat(
        &parent,
        OsStr::from_bytes(name),
        Mode::from_bits_truncate(0o700),
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => {
            let st =
                rustix::fs::statat(&parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(path, "checking", e))?;
            if crate::meta::kind_of(st.st_mode) == FileKind::Dir {
                Ok(())
            } else {
                remove_all(&parent, name, path)?;
                rustix::fs::mkdirat(
                    &parent,
                    OsStr::from_bytes(name),
                    Mode::from_bits_truncate(0o700),
                )
                .map_err(|e| io_err(path, "creating the directory", e))
            }
        }
        Err(e) => Err(io_err(path, "creating the directory", e)),
    }
}

/// Creates an entry with `make`, replacing whatever is there first.
fn replace_with(
    path: &[u8],
    make: impl Fn(&OwnedFd, &OsStr) -> rustix::io::Result<()>,
) -> Result<(), Error> {
    let (parent, name) = parent_of(path)?;
    let name_os = OsStr::from_bytes(name);
    match make(&parent, name_os) {
        Err(rustix::io::Errno::EXIST) => {
            remove_all(&parent, name, path)?;
            make(&parent, name_os).map_err(|e| io_err(path, "creating", e))
        }
        r => r.map_err(|e| io_err(path, "creating", e)),
    }
}

fn link_long(first: &[u8], parent: &OwnedFd, name: &OsStr) -> rustix::io::Result<()> {
    let (fparent, fname) = parent_of(first).map_err(|_| rustix::io::Errno::NAMETOOLONG)?;
    rustix::fs::linkat(
        &fparent,
        OsStr::from_bytes(fname),
        parent,
        name,
        AtFlags::empty(),
    )
}

/// Removes `name` in `parent`, recursively for a directory.
fn remove_all(parent: &OwnedFd, name: &[u8], path: &[u8]) -> Result<(), Error> {
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
            let mut d = rustix::fs::Dir::new(
                dir.try_clone()
                    .map_err(|e| io_err(path, "opening to remove", e))?,
            )
            .map_err(|e| io_err(path, "listing to remove", e))?;
            let mut names = Vec::new();
            while let Some(e) = d.read() {
                let e = e.map_err(|e| io_err(path, "listing to remove", e))?;
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            for n in names {
                remove_all(&dir, &n, &join(path, &n))?;
            }
            rustix::fs::unlinkat(parent, name_os, AtFlags::REMOVEDIR)
                .map_err(|e| io_err(path, "removing", e))
        }
        Err(e) => Err(io_err(path, "removing", e)),
    }
}

/// Creates or reuses the file at its final size; returns the blobs (and
/// their content offsets) it still lacks.
fn prepare_file(
    repo: &Repository,
    item: &Item,
    plan: &[(BlobId, u64, u64)],
) -> Result<Vec<(BlobId, u64)>, Error> {
    let size = item.meta.size;
    let (parent, name) = parent_of(&item.target)?;
    let name_os = OsStr::from_bytes(name);
    let existing = rustix::fs::statat(&parent, name_os, AtFlags::SYMLINK_NOFOLLOW).ok();
    if let Some(st) = &existing {
        if crate::meta::kind_of(st.st_mode) != FileKind::File || st.st_nlink > 1 {
            // Never write through another name's inode.
            remove_all(&parent, name, &item.target)?;
        }
    }
    let fd = rustix::fs::openat(
        &parent,
        name_os,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| io_err(&item.target, "creating", e))?;
    let st = rustix::fs::fstat(&fd).map_err(|e| io_err(&item.target, "checking", e))?;
    let mut missing = Vec::new();
    if st.st_size as u64 == size && size > 0 {
        // Resume: keep the ranges that already hold the right bytes.
        let mut buf = Vec::new();
        for (id, off, len) in plan {
            buf.resize(*len as usize, 0);
            let ok = read_content(&fd, item.meta.extents.as_deref(), *off, &mut buf).is_ok()
                && repo.blob_id_of(&buf) == *id;
            if !ok {
                missing.push((*id, *off));
            }
        }
        // A file that should have holes where it holds data gets them back.
        if item.meta.extents.is_some() && data_extents(&fd, size).ok() != item.meta.extents {
            rustix::fs::ftruncate(&fd, 0).map_err(|e| io_err(&item.target, "truncating", e))?;
            rustix::fs::ftruncate(&fd, size).map_err(|e| io_err(&item.target, "sizing", e))?;
            missing = plan.iter().map(|(id, off, _)| (*id, *off)).collect();
        }
    } else {
        rustix::fs::ftruncate(&fd, 0).map_err(|e| io_err(&item.target, "truncating", e))?;
        rustix::fs::ftruncate(&fd, size).map_err(|e| io_err(&item.target, "sizing", e))?;
        missing = plan.iter().map(|(id, off, _)| (*id, *off)).collect();
    }
    Ok(missing)
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

fn read_content(
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

fn write_at(item: &Item, off: u64, data: &[u8]) -> Result<(), Error> {
    let fd = open_long(
        &item.target,
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(&item.target, "opening to write", e))?;
    let mut pos = 0usize;
    for (at, n) in file_ranges(item.meta.extents.as_deref(), off, data.len() as u64) {
        let part = data.get(pos..pos + n as usize).unwrap_or_default();
        let mut done = 0;
        while done < part.len() {
            let w = rustix::io::pwrite(&fd, part.get(done..).unwrap_or_default(), at + done as u64)
                .map_err(|e| io_err(&item.target, "writing", e))?;
            done += w;
        }
        pos += n as usize;
    }
    Ok(())
}

/// Owner, extended attributes, mode, then times (in that order: a chown
/// clears setuid bits and file capabilities).
fn set_meta(
    path: &[u8],
    meta: &FsMeta,
    is_root: bool,
    warnings: &mut Vec<String>,
) -> Result<(), Error> {
    let (parent, name) = parent_of(path)?;
    let name_os = OsStr::from_bytes(name);
    let link = meta.kind == FileKind::Symlink;
    if is_root {
        rustix::fs::chownat(
            &parent,
            name_os,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(path, "setting the owner", e))?;
    }
    if !meta.xattrs.is_empty() {
        let p = proc_path(&parent, name);
        for x in &meta.xattrs {
            if let Err(e) = rustix::fs::lsetxattr(
                p.as_c_str(),
                x.name.as_str(),
                &x.value,
                rustix::fs::XattrFlags::empty(),
            ) {
                warnings.push(format!(
                    "{}: extended attribute {} not restored: {e}",
                    String::from_utf8_lossy(path),
                    x.name
                ));
            }
        }
    }
    if !link {
        rustix::fs::chmodat(
            &parent,
            name_os,
            Mode::from_bits_truncate(meta.mode),
            AtFlags::empty(),
        )
        .map_err(|e| io_err(path, "setting the mode", e))?;
    }
    let ts = |t: crate::meta::Time| rustix::fs::Timespec {
        tv_sec: t.0,
        tv_nsec: i64::from(t.1),
    };
    rustix::fs::utimensat(
        &parent,
        name_os,
        &Timestamps {
            last_access: ts(meta.atime),
            last_modification: ts(meta.mtime),
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(path, "setting the times", e))
}

/// Removes target entries under restored directories that the snapshot
/// does not have; returns how many.
fn delete_extra(items: &[Item], target: &[u8]) -> Result<u64, Error> {
    let known: HashSet<&[u8]> = items.iter().map(|i| i.target.as_slice()).collect();
    let mut dirs: Vec<&[u8]> = items
        .iter()
        .filter(|i| i.kind == FileKind::Dir)
        .map(|i| i.target.as_slice())
        .collect();
    dirs.push(target);
    let mut deleted = 0;
    for dir in dirs {
        let fd = open_long(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(dir, "listing", e))?;
        let mut d = rustix::fs::Dir::new(fd.try_clone().map_err(|e| io_err(dir, "listing", e))?)
            .map_err(|e| io_err(dir, "listing", e))?;
        let mut extra = Vec::new();
        while let Some(e) = d.read() {
            let e = e.map_err(|e| io_err(dir, "listing", e))?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." && !known.contains(join(dir, n).as_slice()) {
                extra.push(n.to_vec());
            }
        }
        for n in extra {
            remove_all(&fd, &n, &join(dir, &n))?;
            deleted += 1;
        }
    }
    Ok(deleted)
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
