//! # tessera-fs
//!
//! Back up directory trees into a Tessera repository and restore them with
//! full fidelity: regular files (sparse ones as holes), directories,
//! symlinks, hard links, FIFOs, device nodes, sockets; mode with
//! setuid/setgid/sticky, owner and group (ids and names), times in
//! nanoseconds, extended attributes and POSIX ACLs; names that are not
//! UTF-8 and paths of any length.
//!
//! A snapshot mirrors `/`: backing up `/home/ann/docs` stores the
//! directories `home` and `ann` (with their metadata) and `docs` below.
//! Unchanged files are found in a files cache and not read again.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tessera_core::{Credential, ObjectStoreBackend, Repository};
//! use tessera_fs::{BackupOptions, RestoreOptions};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = Arc::new(ObjectStoreBackend::local("/srv/backup".as_ref(), false)?);
//! let repo = Repository::open(backend, &Credential::password("secret")).await?;
//! let done = tessera_fs::backup(&repo, &["/home".into()], BackupOptions::default()).await?;
//! tessera_fs::restore(&repo, &done.snapshot, "/".as_ref(), "/tmp/restored".as_ref(), RestoreOptions::default()).await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod ahead;
mod beneath;
mod direct;
mod dump;
pub mod files_cache;
pub mod meta;
mod paths;
mod restore;
mod snapshot_tree;
mod walk;

pub use dump::dump_file;
pub use files_cache::FilesCache;
pub use meta::{FileKind, FsMeta, Time, Xattr};
pub use paths::patterns;
pub use restore::{RestoreOptions, RestoreProgress, RestoreSummary, restore};
pub use snapshot_tree::{DiffKind, TreeEntry, diff, find_node, walk_tree};
pub use walk::{Excludes, WalkStats};

use tessera_core::{BackupProgress, Repository, Snapshot, SnapshotId};

/// `source_kind` of filesystem snapshots.
pub const SOURCE_KIND: &str = "fs";

/// Errors of the filesystem adapter.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An engine error (storage, corruption, ...).
    #[error(transparent)]
    Core(#[from] tessera_core::Error),
    /// A path given to back up cannot be used.
    #[error("{path}: {message}")]
    Path {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An I/O error while restoring, naming the path.
    #[error("{path}: {operation}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What was being done.
        operation: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The files cache failed.
    #[error("files cache {path}: {message}")]
    Cache {
        /// The cache file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// Bad patterns, a snapshot that is not a filesystem snapshot, ...
    #[error("{0}")]
    Invalid(String),
    /// An unexpected internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Options of a filesystem backup.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// What to leave out.
    pub excludes: Excludes,
    /// The files cache database (`None`: read every file).
    pub cache: Option<PathBuf>,
    /// Snapshot tags.
    pub tags: Vec<String>,
    /// Host name (default: this machine's).
    pub hostname: Option<String>,
    /// Snapshot time (default: now).
    pub time: Option<jiff::Timestamp>,
    /// Progress counters of the engine.
    pub progress: Option<Arc<BackupProgress>>,
    /// Counters of the walk (files new/changed/unchanged, bytes seen).
    pub walk_stats: Option<Arc<WalkStats>>,
}

/// The outcome of a filesystem backup.
#[derive(Clone, Debug)]
pub struct BackupSummary {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The new snapshot.
    pub snapshot: Snapshot,
    /// Files read because they were not in the cache.
    pub files_new: u64,
    /// Files read because their signature changed.
    pub files_changed: u64,
    /// Files taken from the cache without reading.
    pub files_unchanged: u64,
    /// Directories.
    pub dirs: u64,
    /// Other entries.
    pub others: u64,
    /// What was left out and why, and files that changed while read.
    pub warnings: Vec<String>,
}

/// Makes `p` absolute and normal (no `.`, `..` or repeated `/`) without
/// following symlinks.
fn normalize(p: &Path) -> Result<PathBuf, Error> {
    let abs = std::path::absolute(p).map_err(|e| Error::Path {
        path: p.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(n) => out.push(n),
            _ => {}
        }
    }
    Ok(out)
}

/// Backs up `paths` into a new snapshot of `repo`.
///
/// Raises this process's soft limit of open files to its hard limit (as
/// Go programs such as restic get from their runtime). A backup holds one
/// descriptor per directory level it is inside, plus the directories it
/// reads ahead, so the common soft limit of 1,024 would make directories
/// below about a thousand levels unreadable. Call it once at start; it
/// changes nothing when the limits are equal or cannot be read.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let below = match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) => current < maximum,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        let _ = setrlimit(Resource::Nofile, raised);
    }
}

/// Unreadable or vanished entries are left out and listed in
/// `warnings`; the snapshot is still written (the CLI exits 3).
///
/// # Errors
/// A path that does not exist, bad exclude patterns, storage errors. On
/// error nothing is committed and the repository stays valid.
pub async fn backup(
    repo: &Repository,
    paths: &[PathBuf],
    options: BackupOptions,
) -> Result<BackupSummary, Error> {
    let mut roots = Vec::new();
    for p in paths {
        let n = normalize(p)?;
        std::fs::symlink_metadata(&n).map_err(|e| Error::Path {
            path: p.clone(),
            message: e.to_string(),
        })?;
        roots.push(n);
    }
    roots.sort();
    roots.dedup();
    // A path inside another given path is already covered.
    let roots: Vec<PathBuf> = roots
        .iter()
        .filter(|r| !roots.iter().any(|o| o != *r && r.starts_with(o)))
        .cloned()
        .collect();
    if roots.is_empty() {
        return Err(Error::Invalid("no path to back up".into()));
    }
    let matcher = patterns(&options.excludes.patterns)?;
    let cache = options.cache.as_deref().map(FilesCache::open).transpose()?;
    let writer = cache.as_ref().map(FilesCache::writer).transpose()?;
    let stats = options.walk_stats.clone().unwrap_or_default();
    let warnings: walk::Warnings = Arc::default();
    // The walk runs at most 16 batches (4,096 entries) ahead.
    let (tx, rx) = std::sync::mpsc::sync_channel(16);
    let walker = walk::Walker {
        tx,
        pending: Vec::with_capacity(walk::BATCH),
        excludes: options.excludes.clone(),
        matcher,
        cache,
        cache_tx: writer.as_ref().map_or_else(
            files_cache::CacheSender::none,
            files_cache::CacheWriter::sender,
        ),
        known: repo.known_blobs().await?,
        stats: stats.clone(),
        warnings: warnings.clone(),
        names: meta::Names::default(),
        xattr_buf: Vec::new(),
        ahead: ahead::ReadAhead::start(),
        depth: 0,
    };
    let walk_roots = roots.clone();
    let walk_thread = match std::thread::Builder::new()
        .name("tessera-walk".into())
        .stack_size(walk::WALK_STACK)
        .spawn(move || walker.run(&walk_roots))
    {
        Ok(t) => t,
        Err(e) => {
            repo.abandon_session().await;
            return Err(Error::Internal(format!("starting the walk thread: {e}")));
        }
    };
    let stored = repo
        .store_tree(rx.into_iter().flatten(), options.progress.clone())
        .await;
    walk_thread
        .join()
        .map_err(|_| Error::Internal("the walk thread panicked".into()))?;
    let stored = stored?;
    let mut all_warnings = warnings.lock().map(|w| w.clone()).unwrap_or_default();
    all_warnings.extend(stored.warnings.iter().cloned());
    // The walk thread has ended: the counters are final.
    let count = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    let (files_new, files_changed, files_unchanged, dirs, others) = (
        count(&stats.files_new),
        count(&stats.files_changed),
        count(&stats.files_unchanged),
        count(&stats.dirs),
        count(&stats.others),
    );
    let summary_meta = serde_json::json!({
        "files_new": files_new,
        "files_changed": files_changed,
        "files_unchanged": files_unchanged,
        "dirs": dirs,
        "others": others,
        "warnings": all_warnings.len(),
    });
    let core_options = tessera_core::BackupOptions {
        time: options.time,
        hostname: options.hostname,
        tags: options.tags,
        paths: roots
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect(),
        source_kind: Some(SOURCE_KIND.into()),
        source_meta: summary_meta,
        progress: options.progress,
        username: None,
    };
    let done = repo.commit_snapshot(stored, core_options).await?;
    if let Some(w) = writer {
        if let Err(e) = w.commit() {
            all_warnings.push(format!("{e} (the next backup reads every file again)"));
        }
    }
    Ok(BackupSummary {
        id: done.id,
        snapshot: done.snapshot,
        files_new,
        files_changed,
        files_unchanged,
        dirs,
        others,
        warnings: all_warnings,
    })
}
