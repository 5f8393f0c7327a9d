//! Restore: recreate a snapshot's entries under a target directory.
//!
//! 1. Plan: walk the snapshot (or the part asked for; trees are fetched in
//!    batches), apply the include and exclude patterns, list every entry.
//! 2. Create directories in order, then symlinks, special files and empty
//!    files in parallel. A file already present with the right size is
//!    checked blob by blob: ranges that already hold the right bytes (same
//!    keyed hash) are not written again, so an interrupted restore resumes
//!    where it stopped. Files in a directory the restore made are not
//!    created yet: their first write creates them (holes stay holes: the
//!    writes skip them, and a truncate sizes a file that ends in one),
//!    which overlaps creating inodes with decrypting.
//! 3. Fetch the missing blobs in pack order (parallel range reads); each
//!    blob is opened and written to every place that needs it by one rayon
//!    task. A file's descriptor stays open between its writes (up to
//!    [`MAX_OPEN_FILES`]), and the write that completes a file sets its
//!    owner, xattrs, mode and times through that descriptor.
//! 4. Hard links (every first member exists by now), `--delete`, then
//!    directory metadata, deepest first, so writing into a directory does
//!    not change its times again.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};
use tessera_core::{BlobId, NodeKind, Repository, Snapshot};

use crate::Error;
use crate::beneath::Target;
use crate::direct;
use crate::meta::{FileKind, FsMeta};
use crate::paths::{display, join, patterns, proc_path};
use crate::snapshot_tree::{TreeEntry, find_node, walk_tree};
use crate::walk::data_extents;

/// Options of a restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Restore only entries matching one of these gitignore-style patterns
    /// (matched against snapshot paths) and what is inside them.
    pub include: Vec<String>,
    /// Leave out entries matching these patterns.
    pub exclude: Vec<String>,
    /// Remove entries of the target that the snapshot does not have, in
    /// the directories restored whole (every one without `include`, the
    /// included ones with it). Entries the snapshot has but the patterns
    /// leave out are kept.
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
    /// Files that could not be restored whole because the repository lost
    /// some of their data (each `path: why`). They are not left behind
    /// incomplete: the restore removes them.
    pub damaged: Vec<String>,
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
    let target_empty = std::fs::read_dir(target)
        .map_err(|e| io_err(target.as_os_str().as_bytes(), "listing the target", e))?
        .next()
        .is_none();
    let target = std::fs::canonicalize(target)
        .map_err(|e| io_err(target.as_os_str().as_bytes(), "resolving the target", e))?;
    let target = target.as_os_str().as_bytes().to_vec();
    // Every path below is resolved from this descriptor, through no symlink.
    let root = Target::open(&target).map_err(|e| io_err(&target, "opening the target", e))?;
    let include = matcher(&options.include)?;
    let exclude = matcher(&options.exclude)?;
    let start = find_node(repo, snapshot, path).await?;
    let start_path = path.as_os_str().as_bytes().to_vec();

    // 1. Plan.
    let mut items: Vec<Item> = Vec::new();
    let mut dirs_kept: HashSet<Vec<u8>> = HashSet::new();
    // For --delete: every snapshot entry met (restored or filtered out),
    // and the directories restored whole (included, not just ancestors).
    let mut in_snapshot: HashSet<Vec<u8>> = HashSet::new();
    let mut covered: HashSet<Vec<u8>> = HashSet::new();
    if include.is_none() {
        covered.insert(target.clone());
    }
    let mut add = |e: &TreeEntry, rel: &[u8]| -> Result<bool, Error> {
        if options.delete {
            in_snapshot.insert(join(&target, rel));
        }
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
        // Every ancestor of an included entry is created (without
        // --include, every directory met is kept: no bookkeeping).
        if included && include.is_some() {
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
        if included && is_dir && options.delete {
            covered.insert(join(&target, rel));
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
    if start
        .as_ref()
        .is_some_and(|n| !matches!(n.kind, NodeKind::Dir { .. }))
    {
        // One file restored into the target: the target's other entries are not its business.
        covered.clear();
    }
    // Directories kept only for what they hold: drop those that hold nothing included.
    let tlen = target.len() + 1;
    if include.is_some() {
        items.retain(|i| {
            i.kind != FileKind::Dir || dirs_kept.contains(i.target.get(tlen..).unwrap_or_default())
        });
    }
    // Hard links: later members of a group link to the first. Only
    // between regular files: a hard link to a directory cannot exist, and
    // other kinds are simply created again.
    let mut groups: HashMap<(u64, u64), usize> = HashMap::new();
    for (i, item) in items.iter_mut().enumerate() {
        if let Some((dev, ino, _)) = item.meta.hardlink.filter(|_| item.kind == FileKind::File) {
            match groups.get(&(dev, ino)) {
                Some(first) => item.link_to = Some(*first),
                None => {
                    groups.insert((dev, ino), i);
                }
            }
        }
    }

    // 2. Create: directories in order, then everything else in parallel,
    //    then hard links (their first member exists by then).
    let mut summary = RestoreSummary::default();
    let is_root = rustix::process::geteuid().is_root();
    let blob_sizes = blob_sizes(repo, &items).await?;
    let warnings = Mutex::new(Vec::new());
    // Directories the restore made: nothing in them needs checking, and
    // their files are created when their first blob arrives (so creating
    // inodes overlaps with decrypting).
    let mut fresh: HashSet<&[u8]> = HashSet::new();
    if target_empty {
        fresh.insert(&target);
    }
    // Directories level by level (parents first), each level in parallel.
    let depth = |i: &&Item| i.target.iter().filter(|b| **b == b'/').count();
    let mut dirs: Vec<&Item> = items.iter().filter(|i| i.kind == FileKind::Dir).collect();
    dirs.sort_by_cached_key(depth);
    for level in dirs.chunk_by(|a, b| depth(a) == depth(b)) {
        let made: Vec<bool> = level
            .par_iter()
            .map(|item| make_dir(&root, &item.target))
            .collect::<Result<_, Error>>()?;
        for (item, new) in level.iter().zip(made) {
            if new {
                fresh.insert(&item.target);
            }
        }
        summary.dirs += level.len() as u64;
    }
    let in_fresh_dir = |item: &Item| {
        let cut = item.target.iter().rposition(|b| *b == b'/').unwrap_or(0);
        fresh.contains(item.target.get(..cut).unwrap_or_default())
    };
    // Symlinks come last (after every file is written), so no path this
    // restore writes to can meet one it made.
    let created: Vec<(usize, Created)> = (0..items.len())
        .into_par_iter()
        .filter(|i| {
            let kind = items[*i].kind;
            kind != FileKind::Dir && kind != FileKind::Symlink && items[*i].link_to.is_none()
        })
        .map(|idx| {
            let item = &items[idx];
            create(
                repo,
                &root,
                item,
                &blob_sizes,
                in_fresh_dir(item),
                is_root,
                &warnings,
            )
            .map(|c| (idx, c))
        })
        .collect::<Result<_, Error>>()?;
    for item in items.iter().filter(|i| i.kind != FileKind::Dir) {
        match item.kind {
            FileKind::File => summary.files += 1,
            _ => summary.others += 1,
        }
    }
    let mut needed: HashMap<BlobId, Vec<(usize, u64)>> = HashMap::new();
    let mut slots: HashMap<usize, FileSlot> = HashMap::new();
    let mut damaged: HashMap<usize, String> = HashMap::new();
    let mut devices_skipped: Vec<usize> = Vec::new();
    for (idx, created) in created {
        if created.device_skipped {
            devices_skipped.push(idx);
        }
        if items[idx].kind != FileKind::File {
            continue;
        }
        if let Some(why) = created.lost {
            damaged.insert(idx, why);
            continue;
        }
        if created.missing.is_empty() {
            summary.files_unchanged += 1;
            continue;
        }
        slots.insert(
            idx,
            FileSlot::new(created.missing.len() as u32, created.deferred),
        );
        for (id, off) in created.missing {
            needed.entry(id).or_default().push((idx, off));
        }
    }

    // 3. Write the missing blobs in pack order; each file gets its metadata
    //    as soon as its last blob is written.
    let total: u64 = needed
        .iter()
        .map(|(id, t)| u64::from(blob_sizes.get(id).copied().unwrap_or(0)) * t.len() as u64)
        .sum();
    let progress = options.progress.clone().unwrap_or_default();
    progress.bytes_total.store(total, Ordering::Relaxed);
    // In an empty target whose directory is neither setgid nor carries a
    // default ACL, no directory the restore makes does either: a file it
    // creates gets this process's owner and its mode less the umask.
    let plain_target = target_empty
        && rustix::fs::stat(OsStr::from_bytes(&target)).is_ok_and(|st| st.st_mode & 0o2000 == 0)
        && matches!(
            rustix::fs::getxattr(
                OsStr::from_bytes(&target),
                "system.posix_acl_default",
                &mut [0u8; 0][..]
            ),
            Err(rustix::io::Errno::NODATA)
        );
    let created_owner = plain_target.then(|| {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    });
    let writer = Arc::new(Writer {
        root,
        items,
        needed,
        slots,
        open_fds: AtomicUsize::new(0),
        is_root,
        created_owner,
        umask: if plain_target { umask() } else { None },
        warnings,
        progress: progress.clone(),
        damaged: Mutex::new(damaged),
    });
    {
        let (writer, loser) = (writer.clone(), writer.clone());
        let ids: Vec<BlobId> = writer.needed.keys().copied().collect();
        repo.fetch_blobs_past_damage(
            ids,
            "restore",
            move |id, plain| writer.deliver(id, plain),
            move |id, e| loser.lose(id, e),
        )
        .await?;
    }
    summary.bytes_written = progress.bytes_written.load(Ordering::Relaxed);
    let Ok(writer) = Arc::try_unwrap(writer) else {
        return Err(Error::Internal("restore writer still shared".into()));
    };
    let (items, root) = (writer.items, writer.root);
    let damaged = writer
        .damaged
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    summary.warnings = writer
        .warnings
        .into_inner()
        .map_err(|_| Error::Internal("a restore thread panicked".into()))?;
    // Symlinks, then hard links (every first member exists by now).
    let link_warnings = Mutex::new(Vec::new());
    items
        .par_iter()
        .filter(|i| i.kind == FileKind::Symlink)
        .try_for_each(|item| {
            create(
                repo,
                &root,
                item,
                &blob_sizes,
                false,
                is_root,
                &link_warnings,
            )
            .map(|_| ())
        })?;
    let mut warnings = link_warnings
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    summary.damaged = remove_damaged(&root, &items, &damaged)?;
    for item in &items {
        if let Some(first) = item.link_to {
            if let Some(why) = damaged.get(&first) {
                summary.damaged.push(format!(
                    "{}: not linked to {}, which is damaged ({why})",
                    display(&item.target),
                    display(&items[first].target)
                ));
                continue;
            }
            link_to(&root, &items[first].target, &item.target)?;
        }
    }

    // 4. Directory metadata, deepest first.
    if options.delete {
        summary.deleted = delete_extra(&root, &covered, &in_snapshot)?;
    }
    for item in items.iter().rev().filter(|i| i.kind == FileKind::Dir) {
        set_meta(&root, &item.target, &item.meta, is_root, &mut warnings)?;
    }
    if let Some(node) = &start {
        if let (NodeKind::Dir { .. }, Some(meta)) = (&node.kind, FsMeta::from_meta(&node.meta).ok())
        {
            set_meta(&root, &target, &meta, is_root, &mut warnings)?;
        }
    }
    summary.warnings.extend(warnings);
    devices_skipped.sort_unstable();
    let devices: Vec<&[u8]> = devices_skipped
        .iter()
        .filter_map(|i| items.get(*i).map(|item| item.target.as_slice()))
        .collect();
    sum_up_skipped(&items, &devices, is_root, &mut summary.warnings);
    Ok(summary)
}

/// Opens the parent directory of `path` beneath the target (through no
/// symlink); returns it and the final name.
fn parent_of<'a>(root: &Target, path: &'a [u8]) -> Result<(Arc<OwnedFd>, &'a [u8]), Error> {
    root.parent(path)
        .map_err(|e| io_err(path, "opening its directory beneath the target", e))
}

/// Creates the directory `path`; true when it is new (so empty), false
/// when one was already there.
fn make_dir(root: &Target, path: &[u8]) -> Result<bool, Error> {
    let (parent, name) = parent_of(root, path)?;
    match rustix::fs::mkdirat(
        &parent,
        OsStr::from_bytes(name),
        Mode::from_bits_truncate(0o700),
    ) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::EXIST) => {
            let st =
                rustix::fs::statat(&parent, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| io_err(path, "checking", e))?;
            if crate::meta::kind_of(st.st_mode) == FileKind::Dir {
                Ok(false)
            } else {
                remove_all(&parent, name, path)?;
                rustix::fs::mkdirat(
                    &parent,
                    OsStr::from_bytes(name),
                    Mode::from_bits_truncate(0o700),
                )
                .map_err(|e| io_err(path, "creating the directory", e))?;
                Ok(true)
            }
        }
        Err(e) => Err(io_err(path, "creating the directory", e)),
    }
}

/// Creates an entry with `make`, replacing whatever is there first.
fn replace_with(
    root: &Target,
    path: &[u8],
    make: impl Fn(&OwnedFd, &OsStr) -> rustix::io::Result<()>,
) -> Result<(), Error> {
    let (parent, name) = parent_of(root, path)?;
    let name_os = OsStr::from_bytes(name);
    match make(&parent, name_os) {
        Err(rustix::io::Errno::EXIST) => {
            remove_all(&parent, name, path)?;
            make(&parent, name_os).map_err(|e| io_err(path, "creating", e))
        }
        r => r.map_err(|e| io_err(path, "creating", e)),
    }
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
    root: &Target,
    item: &Item,
    plan: &[(BlobId, u64, u64)],
) -> Result<Vec<(BlobId, u64)>, Error> {
    let size = item.meta.size;
    let (parent, name) = parent_of(root, &item.target)?;
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

/// Writes `data`, content offset `off` of `item`, through `fd` (the
/// aligned middles of long pieces through `direct`, when given).
fn write_ranges(item: &Item, fds: &FileFds, off: u64, data: &[u8]) -> Result<(), Error> {
    let mut pos = 0usize;
    for (at, n) in file_ranges(item.meta.extents.as_deref(), off, data.len() as u64) {
        let part = data.get(pos..pos + n as usize).unwrap_or_default();
        direct::write_at(&fds.fd, fds.direct.as_ref(), at, part)
            .map_err(|e| io_err(&item.target, "writing", e))?;
        pos += n as usize;
    }
    Ok(())
}

/// Plaintext sizes of every blob the items need, with one index lookup.
async fn blob_sizes(repo: &Repository, items: &[Item]) -> Result<HashMap<BlobId, u32>, Error> {
    let mut all: Vec<BlobId> = items
        .iter()
        .filter(|i| i.link_to.is_none())
        .flat_map(|i| i.content.iter().copied())
        .collect();
    all.sort_unstable();
    all.dedup();
    let sizes = repo.blob_sizes(&all).await?;
    Ok(all
        .iter()
        .zip(sizes)
        .filter_map(|(id, size)| Some((*id, size?)))
        .collect())
}

/// What [`create`] did with an entry.
#[derive(Default)]
struct Created {
    /// Blobs (with their content offsets) still to be written.
    missing: Vec<(BlobId, u64)>,
    /// The file is not created yet: the first write creates it.
    deferred: bool,
    /// Why the file cannot be restored (a blob of it is in no index).
    lost: Option<String>,
    /// A device node left out: creating it needs CAP_MKNOD.
    device_skipped: bool,
}

/// Removes the files the restore could not complete, so none is left
/// with holes of zeros where data was lost; returns them, each with why.
fn remove_damaged(
    root: &Target,
    items: &[Item],
    damaged: &HashMap<usize, String>,
) -> Result<Vec<String>, Error> {
    let mut out = Vec::with_capacity(damaged.len());
    let mut order: Vec<(&usize, &String)> = damaged.iter().collect();
    order.sort();
    for (idx, why) in order {
        let item = items
            .get(*idx)
            .ok_or_else(|| Error::Internal(format!("restore item {idx} unknown")))?;
        let (parent, name) = parent_of(root, &item.target)?;
        match rustix::fs::unlinkat(&parent, OsStr::from_bytes(name), AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(io_err(&item.target, "removing the damaged file", e)),
        }
        out.push(format!("{}: {why}", display(&item.target)));
    }
    Ok(out)
}

/// Creates one entry that is not a directory or a hard link. A file with
/// content in a directory the restore made (`fresh`) is left for its
/// first write to create.
fn create(
    repo: &Repository,
    root: &Target,
    item: &Item,
    blob_sizes: &HashMap<BlobId, u32>,
    fresh: bool,
    is_root: bool,
    warnings: &Mutex<Vec<String>>,
) -> Result<Created, Error> {
    let mut missing = Vec::new();
    match item.kind {
        FileKind::File => {
            let mut offset = 0u64;
            let mut plan = Vec::with_capacity(item.content.len());
            for id in &item.content {
                let Some(size) = blob_sizes.get(id).copied() else {
                    return Ok(Created {
                        lost: Some(format!("blob {id} is in no index segment")),
                        ..Created::default()
                    });
                };
                plan.push((*id, offset, u64::from(size)));
                offset += u64::from(size);
            }
            if fresh && !plan.is_empty() {
                return Ok(Created {
                    missing: plan.iter().map(|(id, off, _)| (*id, *off)).collect(),
                    deferred: true,
                    ..Created::default()
                });
            }
            missing = prepare_file(repo, root, item, &plan)?;
        }
        FileKind::Symlink => {
            let link = item.meta.target.clone().unwrap_or_default();
            replace_with(root, &item.target, |parent, name| {
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
            match replace_with(root, &item.target, |parent, name| {
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
        set_meta(root, &item.target, &item.meta, is_root, &mut w)?;
        if !w.is_empty() {
            lock(warnings).extend(w);
        }
    }
    Ok(Created {
        missing,
        ..Created::default()
    })
}

/// One warning for all the device nodes left out (`devices`), and one
/// when owners could not be restored (not root).
fn sum_up_skipped(items: &[Item], devices: &[&[u8]], is_root: bool, warnings: &mut Vec<String>) {
    if let Some(first) = devices.first() {
        warnings.push(format!(
            "{} device node(s) not restored: creating one needs root (CAP_MKNOD); the first is {}",
            devices.len(),
            display(first)
        ));
    }
    if !is_root {
        let (uid, gid) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let others = items
            .iter()
            .filter(|i| i.meta.uid != uid || i.meta.gid != gid)
            .count();
        if others > 0 {
            warnings.push(format!(
                "{others} entries owned by other users or groups now belong to the restoring user: setting owners needs root"
            ));
        }
    }
}

/// Makes `target` a hard link of `first`, a regular file this restore
/// wrote (both looked up beneath the target; `first` itself is linked,
/// never what a symlink there would point to).
fn link_to(root: &Target, first: &[u8], target: &[u8]) -> Result<(), Error> {
    let (fparent, fname) = parent_of(root, first)?;
    let fname = OsStr::from_bytes(fname);
    let st = rustix::fs::statat(&fparent, fname, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| io_err(first, "checking the hard link's first name", e))?;
    if crate::meta::kind_of(st.st_mode) != FileKind::File {
        return Err(Error::Invalid(format!(
            "{}: hard link to {}, which is not a regular file",
            String::from_utf8_lossy(target),
            String::from_utf8_lossy(first)
        )));
    }
    replace_with(root, target, |parent, name| {
        rustix::fs::linkat(&fparent, fname, parent, name, AtFlags::empty())
    })
}

/// A mutex guard, even from a mutex a panicking thread poisoned (the data
/// here are counters and lists that stay valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Files held open between writes, at most (the rest are reopened per
/// write): well under the usual limit of 1,024 descriptors.
const MAX_OPEN_FILES: usize = 256;

/// A file that still lacks blobs.
struct FileSlot {
    state: Mutex<SlotState>,
    /// Writes still to come; the one that brings this to zero sets the
    /// file's metadata.
    remaining: AtomicU32,
    /// A blob of it was lost: it is removed at the end, not finished.
    damaged: std::sync::atomic::AtomicBool,
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
    fn new(writes: u32, to_create: bool) -> Self {
        FileSlot {
            state: Mutex::new(SlotState {
                fds: None,
                to_create,
                created_mode: None,
            }),
            remaining: AtomicU32::new(writes),
            damaged: Default::default(),
        }
    }
}

/// Writes delivered blobs into the files that need them (on rayon).
struct Writer {
    /// Where every path is resolved.
    root: Target,
    items: Vec<Item>,
    /// Per blob: the files and content offsets it goes to.
    needed: HashMap<BlobId, Vec<(usize, u64)>>,
    slots: HashMap<usize, FileSlot>,
    open_fds: AtomicUsize,
    is_root: bool,
    /// Owner (uid, gid) every file the restore creates gets: known when
    /// the target was empty and its directory is not setgid (so no
    /// directory the restore made is).
    created_owner: Option<(u32, u32)>,
    /// This process's umask, when /proc tells it and it alone decides a
    /// new file's mode (see `created_owner`).
    umask: Option<u32>,
    warnings: Mutex<Vec<String>>,
    progress: Arc<RestoreProgress>,
    /// Files that lost data, and why (by item).
    damaged: Mutex<HashMap<usize, String>>,
}

impl Writer {
    /// A blob that cannot be read: every file that needs it is damaged
    /// (its other writes still happen; it is removed at the end).
    fn lose(&self, id: BlobId, e: &tessera_core::Error) {
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

    fn deliver(&self, id: BlobId, plain: &[u8]) -> Result<(), Error> {
        for (idx, off) in self.needed.get(&id).into_iter().flatten() {
            let (item, slot) = match (self.items.get(*idx), self.slots.get(idx)) {
                (Some(i), Some(s)) => (i, s),
                _ => return Err(Error::Internal(format!("restore item {idx} unknown"))),
            };
            let fds = self.fds_for(item, slot)?;
            write_ranges(item, &fds, *off, plain)?;
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
                set_fd_meta(
                    &fds.fd,
                    &item.target,
                    &item.meta,
                    self.is_root,
                    done,
                    &mut w,
                )?;
                if !w.is_empty() {
                    lock(&self.warnings).extend(w);
                }
            }
        }
        Ok(())
    }

    /// The file's descriptors: those kept open, or new ones (kept when
    /// more writes follow and the budget allows). The first call creates
    /// a deferred file; the writes give it its size, or a truncate when
    /// it ends in a hole or is written direct (holes stay holes either
    /// way). A file of [`direct::MIN_FILE`] or more gets a second,
    /// direct descriptor.
    fn fds_for(&self, item: &Item, slot: &FileSlot) -> Result<Arc<FileFds>, Error> {
        let mut state = lock(&slot.state);
        if let Some(fds) = state.fds.as_ref() {
            return Ok(fds.clone());
        }
        let large = item.meta.size >= direct::MIN_FILE;
        let fd = if state.to_create {
            // Created with its final permission bits when the owner may
            // write it (a later reopen for writing must succeed), else 0600.
            let perm = item.meta.mode & 0o777;
            let create_mode = if perm & 0o200 != 0 { perm } else { 0o600 };
            let (parent, name) = parent_of(&self.root, &item.target)?;
            let fd = rustix::fs::openat(
                &parent,
                OsStr::from_bytes(name),
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_bits_truncate(create_mode),
            )
            .map_err(|e| io_err(&item.target, "creating", e))?;
            state.created_mode = self.umask.map(|u| create_mode & !u);
            if large || ends_in_hole(&item.meta) {
                rustix::fs::ftruncate(&fd, item.meta.size)
                    .map_err(|e| io_err(&item.target, "sizing", e))?;
            }
            state.to_create = false;
            fd
        } else {
            let (parent, name) = parent_of(&self.root, &item.target)?;
            rustix::fs::openat(
                &parent,
                OsStr::from_bytes(name),
                OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(&item.target, "opening to write", e))?
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

/// What a file already has from its creation.
#[derive(Clone, Copy, Default)]
struct Done {
    /// Its owner and group.
    owner: bool,
    /// Its mode.
    mode: bool,
}

/// This process's umask, from /proc (reading it with umask(2) would
/// change it for a moment, under other threads' feet).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

/// [`set_meta`] through an open descriptor (a regular file or a
/// directory; no path lookups): owner, extended attributes, mode, times; what the file got
/// at its creation (`done`) is not set again.
fn set_fd_meta(
    fd: &OwnedFd,
    path: &[u8],
    meta: &FsMeta,
    is_root: bool,
    done: Done,
    warnings: &mut Vec<String>,
) -> Result<(), Error> {
    if is_root && !done.owner {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        )
        .map_err(|e| io_err(path, "setting the owner", e))?;
    }
    set_xattrs(meta, path, warnings, |name, value| {
        rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty())
    });
    if !done.mode {
        rustix::fs::fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| io_err(path, "setting the mode", e))?;
    }
    rustix::fs::futimens(fd, &timestamps(meta)).map_err(|e| io_err(path, "setting the times", e))
}

/// Sets every extended attribute with `set`; one that fails is a warning
/// (the filesystem may not support its namespace), not an error.
fn set_xattrs(
    meta: &FsMeta,
    path: &[u8],
    warnings: &mut Vec<String>,
    set: impl Fn(&str, &[u8]) -> rustix::io::Result<()>,
) {
    for x in &meta.xattrs {
        if let Err(e) = set(&x.name, &x.value) {
            warnings.push(format!(
                "{}: extended attribute {} not restored: {e}",
                String::from_utf8_lossy(path),
                x.name
            ));
        }
    }
}

fn timestamps(meta: &FsMeta) -> Timestamps {
    let ts = |t: crate::meta::Time| rustix::fs::Timespec {
        tv_sec: t.0,
        tv_nsec: i64::from(t.1),
    };
    Timestamps {
        last_access: ts(meta.atime),
        last_modification: ts(meta.mtime),
    }
}

/// Owner, extended attributes, mode, then times (in that order: a chown
/// clears setuid bits and file capabilities).
fn set_meta(
    root: &Target,
    path: &[u8],
    meta: &FsMeta,
    is_root: bool,
    warnings: &mut Vec<String>,
) -> Result<(), Error> {
    if meta.kind == FileKind::Dir {
        let fd = root
            .open_dir(path, OFlags::RDONLY)
            .map_err(|e| io_err(path, "opening beneath the target", e))?;
        return set_fd_meta(&fd, path, meta, is_root, Done::default(), warnings);
    }
    let (parent, name) = parent_of(root, path)?;
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
        set_xattrs(meta, path, warnings, |name, value| {
            rustix::fs::lsetxattr(p.as_c_str(), name, value, rustix::fs::XattrFlags::empty())
        });
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
    rustix::fs::utimensat(
        &parent,
        name_os,
        &timestamps(meta),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(path, "setting the times", e))
}

/// Removes what the snapshot does not have from the directories restored
/// whole (`covered`); entries the snapshot has but the filters left out
/// (`in_snapshot` lists every entry met) stay. Returns how many went.
fn delete_extra(
    root: &Target,
    covered: &HashSet<Vec<u8>>,
    in_snapshot: &HashSet<Vec<u8>>,
) -> Result<u64, Error> {
    let mut dirs: Vec<&Vec<u8>> = covered.iter().collect();
    dirs.sort();
    let mut deleted = 0;
    for dir in dirs {
        let fd = root
            .open_dir(dir, OFlags::RDONLY)
            .map_err(|e| io_err(dir, "listing", e))?;
        let names = crate::ahead::list(&fd).map_err(|e| io_err(dir, "listing", e))?;
        let extra = names
            .into_iter()
            .filter(|n| !in_snapshot.contains(join(dir, n).as_slice()));
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
