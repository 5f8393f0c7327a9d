//! Restore: recreate a snapshot's entries under a target directory.
//!
//! 1. Plan ([`plan`]): walk the snapshot (or the part asked for; trees are
//!    fetched in batches), apply the include and exclude patterns, list
//!    every entry by its directory's number and its name.
//! 2. Create ([`create`]): directories level by level, then special files
//!    and empty files in parallel. A file already present with the right size is
//!    checked blob by blob: ranges that already hold the right bytes (same
//!    keyed hash) are not written again, so an interrupted restore resumes
//!    where it stopped. Files in a directory the restore made are not
//!    created yet: their first write creates them (holes stay holes: the
//!    writes skip them, and a truncate sizes a file that ends in one),
//!    which overlaps creating inodes with decrypting.
//! 3. Write ([`write`]): fetch the missing blobs in pack order (parallel range reads); each
//!    blob is opened and written to every place that needs it by one rayon
//!    task. A file's descriptor stays open between its writes (up to
//!    [`MAX_OPEN_FILES`]), and the write that completes a file sets its
//!    owner, xattrs, mode and times through that descriptor.
//! 4. Symlinks (so no path this restore writes to can meet one it made),
//!    hard links (every first member exists by now), `--delete`, then
//!    directory metadata ([`meta`]), deepest first, so writing into a
//!    directory does not change its times again.
//!
//! Every path is resolved beneath the target through no symlink (see
//! [`crate::beneath`]). Data the repository lost (a damaged blob or tree)
//! does not stop the restore: the files it belonged to are removed, not
//! left with holes, and listed in [`RestoreSummary::damaged`] with the
//! directories whose entries could not be read.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use tessera_core::{BlobId, NodeKind, Repository, Snapshot};

use crate::Error;
use crate::beneath::Target;
use crate::meta::{FileKind, FsMeta};

mod create;
mod meta;
mod plan;
mod write;

use create::{Created, Creating};
use plan::{Item, Plan};
use write::{FileSlot, Writer};

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
    /// What could not be restored because the repository lost some of its
    /// data (each `path: why`): files (the restore removes them, so none
    /// is left incomplete) and directories whose entries could not be read.
    pub damaged: Vec<String>,
}

fn io_err(path: &[u8], operation: &'static str, source: impl Into<std::io::Error>) -> Error {
    Error::Io {
        path: PathBuf::from(OsStr::from_bytes(path)),
        operation,
        source: source.into(),
    }
}

/// A mutex guard, even from a mutex a panicking thread poisoned (the data
/// here are counters and lists that stay valid).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Restores `path` of `snapshot` (`/` for all of it) into `target`: the
/// contents of a directory go straight into `target`; a file or other
/// entry goes into `target` under its own name.
///
/// # Errors
/// A path not in the snapshot, a snapshot that is not a filesystem
/// snapshot, one whose trees expand past any real filesystem's (see
/// [`crate::snapshot_tree`]), storage errors, and write errors naming the
/// target path (a full disk among them). The repository is only read.
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
    let (target, target_empty) = open_target(target)?;
    let plan = plan::plan(repo, snapshot, path, target.path().to_vec(), &options).await?;
    let mut summary = RestoreSummary::default();
    let is_root = rustix::process::geteuid().is_root();
    let blob_sizes = blob_sizes(repo, &plan.items).await?;
    let warnings = Mutex::new(Vec::new());
    let fresh = make_dirs(&target, &plan, target_empty, &mut summary)?;
    let creating = Creating {
        repo,
        root: &target,
        plan: &plan,
        blob_sizes: &blob_sizes,
        is_root,
        warnings: &warnings,
    };
    // Symlinks come last (after every file is written), so no path this
    // restore writes to can meet one it made.
    let created: Vec<(usize, Created)> = (0..plan.items.len())
        .into_par_iter()
        .filter(|i| {
            let item = &plan.items[*i];
            !matches!(item.kind, FileKind::Dir | FileKind::Symlink) && item.link_to.is_none()
        })
        .map(|idx| {
            let fresh_dir = plan.items[idx]
                .parent
                .map_or(fresh.target, |p| fresh.dirs[p]);
            creating.create(idx, fresh_dir).map(|c| (idx, c))
        })
        .collect::<Result<_, Error>>()?;
    for item in plan.items.iter().filter(|i| i.kind != FileKind::Dir) {
        match item.kind {
            FileKind::File => summary.files += 1,
            _ => summary.others += 1,
        }
    }
    let mut writes = Writes::default();
    for (idx, created) in created {
        writes.add(&plan, idx, created, &mut summary);
    }
    let devices_skipped = std::mem::take(&mut writes.devices_skipped);

    // 3. Write the missing blobs.
    let progress = options.progress.clone().unwrap_or_default();
    let total: u64 = writes
        .needed
        .iter()
        .map(|(id, t)| u64::from(blob_sizes.get(id).copied().unwrap_or(0)) * t.len() as u64)
        .sum();
    progress.bytes_total.store(total, Ordering::Relaxed);
    let owner = created_owner(target.path(), target_empty);
    let writer = Writer {
        root: target,
        plan,
        needed: writes.needed,
        slots: writes.slots,
        open_fds: AtomicUsize::new(0),
        is_root,
        created_owner: owner,
        umask: owner.and_then(|_| meta::umask()),
        warnings,
        progress: progress.clone(),
        damaged: Mutex::new(writes.damaged),
    };
    let writer = write_all(repo, writer).await?;
    summary.bytes_written = progress.bytes_written.load(Ordering::Relaxed);
    let (target, plan) = (writer.root, writer.plan);
    let damaged = writer
        .damaged
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    summary.warnings = writer
        .warnings
        .into_inner()
        .map_err(|_| Error::Internal("a restore thread panicked".into()))?;

    // 4. Symlinks, hard links, --delete, directory metadata.
    let creating = Creating {
        repo,
        root: &target,
        plan: &plan,
        blob_sizes: &blob_sizes,
        is_root,
        warnings: &Mutex::new(Vec::new()),
    };
    finish(&creating, &damaged, options.delete, &mut summary)?;
    meta::sum_up_skipped(&plan, &devices_skipped, is_root, &mut summary.warnings);
    Ok(summary)
}

/// Step 4: symlinks (after every file is written, so no path this restore
/// writes to can meet one it made), damaged files removed, hard links,
/// `--delete`, then directory metadata, deepest first.
fn finish(
    creating: &Creating,
    damaged: &HashMap<usize, String>,
    delete: bool,
    summary: &mut RestoreSummary,
) -> Result<(), Error> {
    let (target, plan, is_root) = (creating.root, creating.plan, creating.is_root);
    (0..plan.items.len())
        .into_par_iter()
        .filter(|i| plan.items[*i].kind == FileKind::Symlink)
        .try_for_each(|idx| creating.create(idx, false).map(|_| ()))?;
    let mut warnings = std::mem::take(&mut *lock(creating.warnings));
    summary.damaged = create::remove_damaged(target, plan, damaged)?;
    for (idx, item) in plan.items.iter().enumerate() {
        if let Some(first) = item.link_to {
            if let Some(why) = damaged.get(&first) {
                summary.damaged.push(format!(
                    "{}: not linked to {}, which is damaged ({why})",
                    plan.show(idx),
                    plan.show(first)
                ));
                continue;
            }
            create::link_to(target, plan, first, idx)?;
        }
    }
    for (dir, why) in &plan.lost_dirs {
        summary.damaged.push(format!(
            "{}/: its entries are not restored {why}",
            plan.show(*dir)
        ));
    }
    if delete {
        summary.deleted = create::delete_extra(target, plan)?;
    }
    for idx in (0..plan.items.len()).rev() {
        let item = &plan.items[idx];
        if item.kind == FileKind::Dir {
            meta::set_meta(target, plan, Some(idx), &item.meta, is_root, &mut warnings)?;
        }
    }
    if let Some(node) = &plan.start {
        if let (NodeKind::Dir { .. }, Ok(m)) = (&node.kind, FsMeta::from_meta(&node.meta)) {
            meta::set_meta(target, plan, None, &m, is_root, &mut warnings)?;
        }
    }
    summary.warnings.extend(warnings);
    Ok(())
}

/// Creates `target` if needed and opens it: every path below is resolved
/// from this descriptor, through no symlink. Also says whether it was
/// empty.
fn open_target(target: &Path) -> Result<(Target, bool), Error> {
    let raw = target.as_os_str().as_bytes();
    std::fs::create_dir_all(target).map_err(|e| io_err(raw, "creating the target", e))?;
    let empty = std::fs::read_dir(target)
        .map_err(|e| io_err(raw, "listing the target", e))?
        .next()
        .is_none();
    let resolved =
        std::fs::canonicalize(target).map_err(|e| io_err(raw, "resolving the target", e))?;
    let resolved = resolved.as_os_str().as_bytes();
    let root = Target::open(resolved).map_err(|e| io_err(resolved, "opening the target", e))?;
    Ok((root, empty))
}

/// Which directories the restore made (so are empty): nothing in them
/// needs checking, and their files are created by their first write (so
/// creating inodes overlaps with decrypting).
struct Fresh {
    target: bool,
    /// Per item (false for all but directories).
    dirs: Vec<bool>,
}

/// Creates the directories level by level (parents first), each level in
/// parallel.
fn make_dirs(
    root: &Target,
    plan: &Plan,
    target_empty: bool,
    summary: &mut RestoreSummary,
) -> Result<Fresh, Error> {
    let mut fresh = Fresh {
        target: target_empty,
        dirs: vec![false; plan.items.len()],
    };
    let mut dirs: Vec<usize> = (0..plan.items.len())
        .filter(|i| plan.items[*i].kind == FileKind::Dir)
        .collect();
    dirs.sort_by_key(|i| plan.items[*i].depth);
    let depth = |i: &usize| plan.items[*i].depth;
    for level in dirs.chunk_by(|a, b| depth(a) == depth(b)) {
        let made: Vec<bool> = level
            .par_iter()
            .map(|idx| create::make_dir(root, plan, *idx))
            .collect::<Result<_, Error>>()?;
        for (idx, new) in level.iter().zip(made) {
            fresh.dirs[*idx] = new;
        }
        summary.dirs += level.len() as u64;
    }
    Ok(fresh)
}

/// The writes step 2 left: per blob, where it goes; per file, its slot.
#[derive(Default)]
struct Writes {
    needed: HashMap<BlobId, Vec<(usize, u64)>>,
    slots: HashMap<usize, FileSlot>,
    damaged: HashMap<usize, String>,
    devices_skipped: Vec<usize>,
}

impl Writes {
    fn add(&mut self, plan: &Plan, idx: usize, created: Created, summary: &mut RestoreSummary) {
        if created.device_skipped {
            self.devices_skipped.push(idx);
        }
        if plan.items[idx].kind != FileKind::File {
            return;
        }
        if let Some(why) = created.lost {
            self.damaged.insert(idx, why);
            return;
        }
        if created.missing.is_empty() {
            summary.files_unchanged += 1;
            return;
        }
        self.slots.insert(
            idx,
            FileSlot::new(created.missing.len() as u32, created.deferred),
        );
        for (id, off) in created.missing {
            self.needed.entry(id).or_default().push((idx, off));
        }
    }
}

/// Step 3: fetches the missing blobs in pack order and writes them; each
/// file gets its metadata as soon as its last blob is written.
async fn write_all(repo: &Repository, writer: Writer) -> Result<Writer, Error> {
    let writer = Arc::new(writer);
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
    Arc::try_unwrap(writer).map_err(|_| Error::Internal("restore writer still shared".into()))
}

/// The owner (uid, gid) every file the restore creates gets, when that is
/// known: in an empty target whose directory is neither setgid nor
/// carries a default ACL, no directory the restore makes does either, so
/// a file it creates gets this process's owner and its mode less the
/// umask.
fn created_owner(target: &[u8], target_empty: bool) -> Option<(u32, u32)> {
    let target = OsStr::from_bytes(target);
    let plain = target_empty
        && rustix::fs::stat(target).is_ok_and(|st| st.st_mode & 0o2000 == 0)
        && matches!(
            rustix::fs::getxattr(target, "system.posix_acl_default", &mut [0u8; 0][..]),
            Err(rustix::io::Errno::NODATA)
        );
    plain.then(|| {
        (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        )
    })
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
