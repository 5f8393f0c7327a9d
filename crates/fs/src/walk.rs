//! The walk: turns paths into the depth-first [`Entry`] sequence the engine
//! stores, with full metadata, excludes and the files cache.
//!
//! Directories are opened with `openat` relative to their parent's
//! descriptor, so paths of any length work. The walk runs on its own
//! thread, ahead of the engine's reading thread (which opens and reads
//! file content), joined by a bounded channel; a helper thread lists and
//! `stat`s the directories it will enter next ([`crate::ahead`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{AtFlags, Mode, OFlags};
use tessera_core::{Content, Entry, KnownBlobs, Meta};

use crate::ahead::{Listing, ReadAhead, key};
use crate::files_cache::{CacheSender, CachedFile, FilesCache};
use crate::meta::{FileKind, FsMeta, Names, Time, read_xattrs};
use crate::paths::{display, join, proc_path};

/// What to leave out of a backup.
#[derive(Clone, Debug, Default)]
pub struct Excludes {
    /// gitignore-style patterns, matched against absolute paths.
    pub patterns: Vec<String>,
    /// Leave out directories that contain a file with one of these names.
    pub if_present: Vec<String>,
    /// Leave out directories with a valid `CACHEDIR.TAG`.
    pub caches: bool,
    /// Stay on the filesystem of each given path (mount points are kept,
    /// empty).
    pub one_file_system: bool,
    /// Leave out files larger than this many bytes.
    pub larger_than: Option<u64>,
}

/// Counters the walk keeps.
#[derive(Debug, Default)]
pub struct WalkStats {
    /// Files not in the cache.
    pub files_new: AtomicU64,
    /// Files in the cache whose signature changed.
    pub files_changed: AtomicU64,
    /// Files taken from the cache without reading.
    pub files_unchanged: AtomicU64,
    /// Directories.
    pub dirs: AtomicU64,
    /// Other entries (symlinks, devices, FIFOs, sockets).
    pub others: AtomicU64,
    /// Bytes of files the walk has seen (apparent sizes).
    pub bytes_seen: AtomicU64,
}

/// Warnings gathered from any thread.
pub type Warnings = Arc<Mutex<Vec<String>>>;

fn warn(w: &Warnings, msg: String) {
    if let Ok(mut w) = w.lock() {
        w.push(msg);
    }
}

const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// Everything the walk thread needs.
pub(crate) struct Walker {
    /// Entries go to the engine in batches of [`BATCH`]: one channel
    /// hand-off (and thread wake-up) per entry costs more than the entry.
    pub tx: std::sync::mpsc::SyncSender<Vec<Entry>>,
    pub pending: Vec<Entry>,
    pub excludes: Excludes,
    pub matcher: ignore::gitignore::Gitignore,
    pub cache: Option<FilesCache>,
    pub cache_tx: CacheSender,
    pub known: KnownBlobs,
    pub stats: Arc<WalkStats>,
    pub warnings: Warnings,
    pub names: Names,
    pub xattr_buf: Vec<u8>,
    /// Reads the next directories ahead (see [`crate::ahead`]).
    pub ahead: ReadAhead,
    /// Directories open above the entry being walked.
    pub depth: usize,
}

/// The walk thread's stack. The walk recurses once per directory level
/// (under a kilobyte per level): the default 2 MiB overflowed at about
/// 2,500 levels and aborted the backup. Only the pages a walk touches are
/// ever committed, so a large reservation costs nothing in a shallow tree.
pub(crate) const WALK_STACK: usize = 256 << 20;

/// Directory levels walked at most; below that, directories are stored
/// empty with a warning (well inside [`WALK_STACK`]).
pub(crate) const MAX_DEPTH: usize = 100_000;

/// Opens `path` (absolute) however long it is: paths longer than the
/// kernel's limit are opened one piece at a time with `openat`.
pub(crate) fn open_long(path: &[u8], flags: OFlags, mode: Mode) -> std::io::Result<OwnedFd> {
    use crate::paths::{PIECE, first_piece};
    if path.len() < PIECE {
        return Ok(rustix::fs::open(OsStr::from_bytes(path), flags, mode)?);
    }
    let mut dir: Option<OwnedFd> = None;
    let mut rest = path;
    while rest.len() >= PIECE {
        let (head, tail) = first_piece(rest)?;
        let flags_dir = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let next = match &dir {
            None => rustix::fs::open(OsStr::from_bytes(head), flags_dir, Mode::empty())?,
            Some(d) => rustix::fs::openat(d, OsStr::from_bytes(head), flags_dir, Mode::empty())?,
        };
        dir = Some(next);
        rest = tail;
    }
    match &dir {
        None => Ok(rustix::fs::open(OsStr::from_bytes(rest), flags, mode)?),
        Some(d) => Ok(rustix::fs::openat(d, OsStr::from_bytes(rest), flags, mode)?),
    }
}

/// Opens for reading without updating the access time where allowed.
fn open_read(path: &[u8], extra: OFlags) -> std::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW | extra;
    match open_long(path, flags | OFlags::NOATIME, Mode::empty()) {
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::PERM.raw_os_error()) => {
            open_long(path, flags, Mode::empty())
        }
        r => r,
    }
}

/// Entries per batch sent to the engine.
pub(crate) const BATCH: usize = 256;

impl Walker {
    /// Walks every path (absolute, sorted, none inside another), emitting
    /// the ancestors of each as directories so the snapshot mirrors `/`.
    pub(crate) fn run(mut self, paths: &[PathBuf]) {
        self.walk_paths(paths);
        let _ = self.flush();
    }

    fn walk_paths(&mut self, paths: &[PathBuf]) {
        let mut open: Vec<Vec<u8>> = Vec::new();
        for path in paths {
            let comps: Vec<Vec<u8>> = path
                .components()
                .skip(1)
                .map(|c| c.as_os_str().as_bytes().to_vec())
                .collect();
            let Some((last, ancestors)) = comps.split_last() else {
                // Backing up `/` itself.
                self.walk_root(b"/");
                continue;
            };
            let common = open
                .iter()
                .zip(ancestors)
                .take_while(|(a, b)| a == b)
                .count();
            while open.len() > common {
                open.pop();
                if self.send(Entry::EndDir).is_err() {
                    return;
                }
            }
            for (i, name) in ancestors.iter().enumerate().skip(common) {
                let dir_path: Vec<u8> = ancestors
                    .get(..=i)
                    .unwrap_or_default()
                    .iter()
                    .flat_map(|c| [b"/".as_slice(), c].concat())
                    .collect();
                let meta = match rustix::fs::lstat(OsStr::from_bytes(&dir_path)) {
                    Ok(st) => self.meta_of(&st, None, name),
                    Err(e) => {
                        warn(&self.warnings, format!("{}: {e}", display(&dir_path)));
                        Meta::null()
                    }
                };
                if self
                    .send(Entry::Dir {
                        name: name.clone(),
                        meta,
                    })
                    .is_err()
                {
                    return;
                }
                open.push(name.clone());
            }
            let parent: Vec<u8> = if ancestors.is_empty() {
                b"/".to_vec()
            } else {
                ancestors
                    .iter()
                    .flat_map(|c| [b"/".as_slice(), c].concat())
                    .collect()
            };
            if self.walk_top(&parent, last).is_err() {
                return;
            }
        }
        for _ in open {
            if self.send(Entry::EndDir).is_err() {
                return;
            }
        }
    }

    /// Queues `e`; `Err` when the engine has stopped taking entries.
    fn send(&mut self, e: Entry) -> Result<(), ()> {
        self.pending.push(e);
        if self.pending.len() >= BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        self.tx.send(batch).map_err(|_| ())
    }

    /// `/` itself: its entries go straight into the snapshot's root.
    fn walk_root(&mut self, root: &[u8]) {
        match open_read(root, OFlags::DIRECTORY) {
            Ok(fd) => {
                let dev = rustix::fs::fstat(&fd).map(|s| s.st_dev).unwrap_or(0);
                let fd = Arc::new(fd);
                let listing = Listing::of(fd.clone());
                match &listing.names {
                    Ok(names) => {
                        let _ = self.walk_contents(&fd, root, names, &listing.stats, dev);
                    }
                    Err(e) => warn(&self.warnings, format!("/: cannot list: {e}")),
                }
            }
            Err(e) => warn(&self.warnings, format!("/: {e}")),
        }
    }

    /// One given path, inside its open parent.
    fn walk_top(&mut self, parent: &[u8], name: &[u8]) -> Result<(), ()> {
        let parent_fd = match open_read(parent, OFlags::DIRECTORY) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                warn(&self.warnings, format!("{}: {e}", display(parent)));
                return Ok(());
            }
        };
        let dev = match rustix::fs::statat(
            &parent_fd,
            OsStr::from_bytes(name),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st.st_dev,
            Err(e) => {
                warn(
                    &self.warnings,
                    format!("{}: {e}", display(&join(parent, name))),
                );
                return Ok(());
            }
        };
        let cached = self.cached_dir(parent);
        self.entry(&parent_fd, parent, name, dev, &cached, None)
    }

    fn cached_dir(&mut self, dir: &[u8]) -> HashMap<Vec<u8>, CachedFile> {
        let Some(cache) = &self.cache else {
            return HashMap::new();
        };
        match cache.dir(dir) {
            Ok(m) => m,
            Err(e) => {
                // The cache only saves time: go on without it, and let
                // the next backup start a new one.
                warn(
                    &self.warnings,
                    format!(
                        "files cache: {e}; reading every file (the next backup starts a new cache)"
                    ),
                );
                cache.discard();
                self.cache = None;
                HashMap::new()
            }
        }
    }

    fn meta_of(&mut self, st: &rustix::fs::Stat, dir: Option<&OwnedFd>, name: &[u8]) -> Meta {
        let mut meta = FsMeta::from_stat(st);
        self.names.fill(&mut meta);
        if let Some(dir) = dir {
            self.fill_xattrs(&mut meta, dir, name);
        }
        meta.to_meta()
    }

    /// Reads the extended attributes of `name` into `meta`; false (and a
    /// warning) when they cannot be read.
    fn fill_xattrs(&mut self, meta: &mut FsMeta, dir: &OwnedFd, name: &[u8]) -> bool {
        let path = proc_path(dir, name);
        match read_xattrs(&path, &mut self.xattr_buf) {
            Ok(x) => {
                meta.xattrs = x;
                true
            }
            Err(e) => {
                warn(
                    &self.warnings,
                    format!("{}: extended attributes not read: {e}", display(name)),
                );
                false
            }
        }
    }

    /// The entries `names` (sorted; the first ones `stat`ed in `stats`) of
    /// an open directory, with the files cache's rows for it; cache rows of
    /// vanished files are dropped. Its subdirectories are queued to be read
    /// ahead first.
    fn walk_contents(
        &mut self,
        fd: &Arc<OwnedFd>,
        path: &[u8],
        names: &[Vec<u8>],
        stats: &[rustix::io::Result<rustix::fs::Stat>],
        dev: u64,
    ) -> Result<(), ()> {
        let cached = self.cached_dir(path);
        for (name, st) in names.iter().zip(stats) {
            let Ok(st) = st else { continue };
            if crate::meta::kind_of(st.st_mode) != FileKind::Dir
                || (self.excludes.one_file_system && st.st_dev != dev)
            {
                continue;
            }
            let sub = join(path, name);
            if !self
                .matcher
                .matched(OsStr::from_bytes(&sub), true)
                .is_ignore()
            {
                self.ahead.submit(key(&sub), fd.clone(), name.clone());
            }
        }
        for (i, name) in names.iter().enumerate() {
            self.entry(fd, path, name, dev, &cached, stats.get(i).copied())?;
        }
        for gone in cached.keys().filter(|k| names.binary_search(k).is_err()) {
            self.cache_tx.delete(path, gone);
        }
        Ok(())
    }

    /// One entry `name` of the open directory `dir_fd` (at `dir`), with
    /// its `lstat` when it was read ahead.
    fn entry(
        &mut self,
        dir_fd: &Arc<OwnedFd>,
        dir: &[u8],
        name: &[u8],
        root_dev: u64,
        cached: &HashMap<Vec<u8>, CachedFile>,
        stat: Option<rustix::io::Result<rustix::fs::Stat>>,
    ) -> Result<(), ()> {
        let path = join(dir, name);
        let stat = stat.unwrap_or_else(|| {
            rustix::fs::statat(
                &**dir_fd,
                OsStr::from_bytes(name),
                AtFlags::SYMLINK_NOFOLLOW,
            )
        });
        let st = match stat {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => {
                warn(
                    &self.warnings,
                    format!("{}: vanished before it was read", display(&path)),
                );
                return Ok(());
            }
            Err(e) => {
                warn(&self.warnings, format!("{}: {e}", display(&path)));
                return Ok(());
            }
        };
        let kind = crate::meta::kind_of(st.st_mode);
        if self
            .matcher
            .matched(OsStr::from_bytes(&path), kind == FileKind::Dir)
            .is_ignore()
        {
            return Ok(());
        }
        let mut meta = FsMeta::from_stat(&st);
        self.names.fill(&mut meta);
        match kind {
            FileKind::Dir => self.dir(dir_fd, &path, name, meta, &st, root_dev),
            FileKind::File => self.file(dir_fd, dir, &path, name, meta, &st, cached),
            FileKind::Symlink => {
                match rustix::fs::readlinkat(dir_fd, OsStr::from_bytes(name), Vec::new()) {
                    Ok(t) => meta.target = Some(t.into_bytes()),
                    Err(e) => {
                        warn(&self.warnings, format!("{}: {e}", display(&path)));
                        return Ok(());
                    }
                }
                // Reading a link may update its access time: record the
                // time after our own read, or every backup would differ.
                if let Ok(st) =
                    rustix::fs::statat(dir_fd, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
                {
                    meta.atime = Time(st.st_atime, st.st_atime_nsec as u32);
                }
                self.fill_xattrs(&mut meta, dir_fd, name);
                self.stats.others.fetch_add(1, Ordering::Relaxed);
                self.send(Entry::Leaf {
                    name: name.to_vec(),
                    meta: meta.to_meta(),
                })
            }
            _ => {
                self.fill_xattrs(&mut meta, dir_fd, name);
                self.stats.others.fetch_add(1, Ordering::Relaxed);
                self.send(Entry::Leaf {
                    name: name.to_vec(),
                    meta: meta.to_meta(),
                })
            }
        }
    }

    fn dir(
        &mut self,
        parent: &OwnedFd,
        path: &[u8],
        name: &[u8],
        mut meta: FsMeta,
        st: &rustix::fs::Stat,
        root_dev: u64,
    ) -> Result<(), ()> {
        self.fill_xattrs(&mut meta, parent, name);
        self.stats.dirs.fetch_add(1, Ordering::Relaxed);
        // A directory the helper could not open is opened again here: the
        // error (or success) the walk reports is its own.
        let listing = match self.ahead.take(&key(path)) {
            Some(l) if l.fd.is_ok() => l,
            _ => Listing::read(parent, name),
        };
        let fd = match listing.fd {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn(
                    &self.warnings,
                    format!("{}: cannot open directory: {e}", display(path)),
                );
                None
            }
        };
        let names = match listing.names {
            Ok(n) => n,
            Err(e) => {
                warn(
                    &self.warnings,
                    format!("{}: cannot list: {e}", display(path)),
                );
                Vec::new()
            }
        };
        if self.excluded_dir(fd.as_deref(), &names) {
            return Ok(());
        }
        self.send(Entry::Dir {
            name: name.to_vec(),
            meta: meta.to_meta(),
        })?;
        let other_fs = self.excludes.one_file_system && st.st_dev != root_dev;
        if self.depth >= MAX_DEPTH {
            warn(
                &self.warnings,
                format!(
                    "{}: more than {MAX_DEPTH} directories deep: its entries are not backed up",
                    display(path)
                ),
            );
        } else if let (Some(fd), false) = (&fd, other_fs) {
            self.depth += 1;
            let walked = self.walk_contents(fd, path, &names, &listing.stats, root_dev);
            self.depth -= 1;
            walked?;
        }
        self.send(Entry::EndDir)
    }

    fn excluded_dir(&self, fd: Option<&OwnedFd>, names: &[Vec<u8>]) -> bool {
        if self
            .excludes
            .if_present
            .iter()
            .any(|n| names.binary_search(&n.as_bytes().to_vec()).is_ok())
        {
            return true;
        }
        if self.excludes.caches && names.binary_search(&b"CACHEDIR.TAG".to_vec()).is_ok() {
            if let Some(fd) = fd {
                let mut head = [0u8; 43];
                let ok = rustix::fs::openat(
                    fd,
                    "CACHEDIR.TAG",
                    OFlags::RDONLY | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .ok()
                .map(|f| std::fs::File::from(f).read_exact(&mut head).is_ok())
                .unwrap_or(false);
                return ok && head == CACHEDIR_SIGNATURE;
            }
        }
        false
    }

    #[allow(clippy::too_many_arguments)]
    fn file(
        &mut self,
        dir_fd: &OwnedFd,
        dir: &[u8],
        path: &[u8],
        name: &[u8],
        mut meta: FsMeta,
        st: &rustix::fs::Stat,
        cached: &HashMap<Vec<u8>, CachedFile>,
    ) -> Result<(), ()> {
        let size = st.st_size as u64;
        if self.excludes.larger_than.is_some_and(|max| size > max) {
            return Ok(());
        }
        self.stats.bytes_seen.fetch_add(size, Ordering::Relaxed);
        let hit = cached.get(name);
        if let Some(c) = hit.filter(|c| c.matches(st) && self.known.contains_all(&c.content)) {
            self.stats.files_unchanged.fetch_add(1, Ordering::Relaxed);
            match &c.xattrs {
                Some(x) => meta.xattrs = x.clone(),
                None => {
                    self.fill_xattrs(&mut meta, dir_fd, name);
                }
            }
            meta.extents = c.extents.clone();
            let stored = meta
                .extents
                .as_ref()
                .map_or(size, |e| e.iter().map(|x| x.1).sum());
            return self.send(Entry::File {
                name: name.to_vec(),
                meta: meta.to_meta(),
                content: Content::Stored {
                    content: c.content.clone(),
                    size: stored,
                },
                on_stored: None,
            });
        }
        let counter = if hit.is_some() {
            &self.stats.files_changed
        } else {
            &self.stats.files_new
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let xattrs_read = self.fill_xattrs(&mut meta, dir_fd, name);
        // A file whose allocated blocks cannot hold its size has holes:
        // find its data extents now, so the metadata can record them.
        let mut fd = None;
        if size > 0 && (st.st_blocks as u64) * 512 < size {
            match open_read(path, OFlags::empty()) {
                Ok(f) => {
                    match data_extents(&f, size) {
                        Ok(e) => meta.extents = Some(e),
                        Err(e) => warn(
                            &self.warnings,
                            format!("{}: holes not detected: {e}", display(path)),
                        ),
                    }
                    fd = Some(f);
                }
                Err(e) => {
                    warn(
                        &self.warnings,
                        format!("{}: not backed up: {e}", display(path)),
                    );
                    return Ok(());
                }
            }
        }
        let changed = Arc::new(AtomicBool::new(false));
        let signature = CachedFile {
            size,
            mtime: Time(st.st_mtime, st.st_mtime_nsec as u32),
            ctime: Time(st.st_ctime, st.st_ctime_nsec as u32),
            ino: st.st_ino,
            dev: st.st_dev,
            content: Vec::new(),
            extents: meta.extents.clone(),
            xattrs: xattrs_read.then(|| meta.xattrs.clone()),
        };
        let reader = FileReader {
            path: path.to_vec(),
            fd,
            extents: meta.extents.clone(),
            next_extent: 0,
            in_extent: 0,
            signature: signature.clone(),
            changed: changed.clone(),
            warnings: self.warnings.clone(),
        };
        let cache = self.cache_tx.clone();
        let (dir, key) = (dir.to_vec(), name.to_vec());
        let on_stored: tessera_core::OnStored = Box::new(move |ids, _| {
            if !changed.load(Ordering::Relaxed) {
                cache.put(
                    &dir,
                    &key,
                    CachedFile {
                        content: ids.to_vec(),
                        ..signature
                    },
                );
            }
        });
        self.send(Entry::File {
            name: name.to_vec(),
            meta: meta.to_meta(),
            content: Content::Read(Box::new(reader)),
            on_stored: Some(on_stored),
        })
    }
}

/// The data extents of a file (`SEEK_DATA`/`SEEK_HOLE`).
pub(crate) fn data_extents(fd: &OwnedFd, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(fd, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let end = rustix::fs::seek(fd, SeekFrom::Hole(start))?.min(size);
        if end > start {
            out.push((start, end - start));
        }
        pos = end;
    }
    rustix::fs::seek(fd, SeekFrom::Start(0))?;
    Ok(out)
}

/// Reads a file's content on the engine's reading thread: opened on first
/// read, only its data extents when it has holes; at the end, a changed
/// signature is reported (and the file is not cached).
struct FileReader {
    path: Vec<u8>,
    fd: Option<OwnedFd>,
    extents: Option<Vec<(u64, u64)>>,
    next_extent: usize,
    in_extent: u64,
    signature: CachedFile,
    changed: Arc<AtomicBool>,
    warnings: Warnings,
}

impl FileReader {
    fn fd(&mut self) -> std::io::Result<&OwnedFd> {
        if self.fd.is_none() {
            let fd = open_read(&self.path, OFlags::empty()).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    std::io::Error::new(e.kind(), "vanished before it was read")
                }
                _ => e,
            })?;
            self.fd = Some(fd);
        }
        self.fd
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no descriptor"))
    }

    fn at_end(&mut self) {
        let Some(fd) = &self.fd else { return };
        let same = rustix::fs::fstat(fd).is_ok_and(|st| {
            let mut sig = self.signature.clone();
            // ctime changes with the access time updates of some filesystems; size and mtime do not.
            sig.ctime = Time(st.st_ctime, st.st_ctime_nsec as u32);
            sig.matches(&st)
        });
        if !same {
            self.changed.store(true, Ordering::Relaxed);
            warn(
                &self.warnings,
                format!(
                    "{}: changed while being read; the snapshot holds what was read",
                    display(&self.path)
                ),
            );
        }
        self.fd = None;
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = match self.extents.clone() {
            None => {
                let fd = self.fd()?;
                rustix::io::read(fd, &mut *buf)?
            }
            Some(extents) => loop {
                let Some(&(off, len)) = extents.get(self.next_extent) else {
                    break 0;
                };
                if self.in_extent >= len {
                    self.next_extent += 1;
                    self.in_extent = 0;
                    continue;
                }
                let want = buf.len().min((len - self.in_extent) as usize);
                let at = off + self.in_extent;
                let fd = self.fd()?;
                let got = rustix::io::pread(fd, buf.get_mut(..want).unwrap_or_default(), at)?;
                if got == 0 {
                    // Truncated while being read.
                    self.next_extent = extents.len();
                    break 0;
                }
                self.in_extent += got as u64;
                break got;
            },
        };
        if n == 0 {
            self.at_end();
        }
        Ok(n)
    }
}
