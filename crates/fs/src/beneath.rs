//! Paths resolved beneath a restore's target, never through a symlink.
//!
//! A restore writes where a snapshot's names say, and a snapshot may come
//! from a compromised host. Names are single path components (the engine
//! rejects a tree with an empty name, `.`, `..`, `/` or NUL when it decodes
//! it), but a symlink met on the way would still lead out: one already in
//! the target, one a second snapshot restored into the same target left
//! there, one another process plants while the restore runs. So every path
//! a restore touches is looked up from the target's directory descriptor
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)`: a symlink on the way is an error (`ELOOP`),
//! never followed, and nothing resolves above the target. The last
//! component is then used with an `*at` call on the parent's descriptor
//! and `O_NOFOLLOW` / `AT_SYMLINK_NOFOLLOW`. Kernels without `openat2`
//! (before 5.6) get one `openat(O_NOFOLLOW)` per component, which gives the
//! same guarantee one step at a time.
//!
//! The restore's directories are known by number ([`Dirs`]: each has a
//! parent and a name), not by path. Directories opened are kept (a few
//! hundred descriptors), and a directory is opened from its nearest kept
//! ancestor, one component per step: restoring a tree nested thousands
//! deep then costs a constant number of lookups per entry, not one per
//! level of its depth (which made a 20,000-deep tree take minutes), and no
//! full path is built but for a message. A kept descriptor follows its
//! directory if something renames it meanwhile; the restore's own
//! directories are only renamed by someone who may write into the target.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::paths::{PIECE, first_piece};

/// Directories kept open at most (the set is emptied when full).
const KEPT_DIRS: usize = 256;

/// Ancestors looked for among the kept directories, at most, before a
/// path is resolved from the target in one call.
const LOOK_UP: usize = 64;

/// Set once `openat2` turned out to be missing (`ENOSYS`).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The directories below a target, by number: each has a parent
/// directory (`None`: the target itself) and a name (one component).
pub(crate) trait Dirs: Sync {
    /// The directory `dir` is in.
    fn parent(&self, dir: usize) -> Option<usize>;
    /// Its name in its parent.
    fn name(&self, dir: usize) -> &[u8];

    /// Its path below the target (for messages, and lookups from the
    /// target): one component per ancestor.
    fn rel_path(&self, dir: usize) -> Vec<u8> {
        let mut names = vec![self.name(dir)];
        let mut at = self.parent(dir);
        while let Some(d) = at {
            names.push(self.name(d));
            at = self.parent(d);
        }
        names.reverse();
        names.join(&b'/')
    }
}

/// A restore's target directory, open, with its path for messages.
pub(crate) struct Target {
    fd: Arc<OwnedFd>,
    path: Vec<u8>,
    /// Directories below the target opened already (`O_PATH`), by number.
    kept: Mutex<HashMap<usize, Arc<OwnedFd>>>,
}

impl Target {
    /// Opens the directory `path` (absolute, resolved: the caller's own
    /// choice, so symlinks in it are followed).
    pub(crate) fn open(path: &[u8]) -> std::io::Result<Self> {
        let fd = crate::walk::open_long(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Target {
            fd: Arc::new(fd),
            path: path.to_vec(),
            kept: Mutex::new(HashMap::new()),
        })
    }

    /// The target's path.
    pub(crate) fn path(&self) -> &[u8] {
        &self.path
    }

    /// Opens directory `dir` (`None`: the target) with `flags` (`O_RDONLY`
    /// to list it, say): beneath the target, through no symlink, the last
    /// component included.
    pub(crate) fn open_dir(
        &self,
        dirs: &impl Dirs,
        dir: Option<usize>,
        flags: OFlags,
    ) -> std::io::Result<OwnedFd> {
        let flags = flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match dir {
            None => Ok(rustix::fs::openat(&*self.fd, ".", flags, Mode::empty())?),
            Some(d) => beneath(&*self.dir(dirs, dirs.parent(d))?, dirs.name(d), flags),
        }
    }

    /// Directory `dir` (`None`: the target) as an `O_PATH` descriptor, for
    /// `*at` calls on the entries in it: a kept one, or opened one
    /// component at a time from the nearest kept ancestor (see the
    /// module's note).
    pub(crate) fn dir(
        &self,
        dirs: &impl Dirs,
        dir: Option<usize>,
    ) -> std::io::Result<Arc<OwnedFd>> {
        let through = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // Up to the nearest kept ancestor (or the target), remembering
        // the directories in between, deepest first.
        let mut missing: Vec<usize> = Vec::new();
        let mut at = dir;
        let mut base = loop {
            let Some(d) = at else {
                break self.fd.clone();
            };
            if let Some(fd) = self.kept_dir(d) {
                break fd;
            }
            if missing.len() == LOOK_UP {
                // Far from anything kept: one lookup from the target.
                let fd = Arc::new(self.open_from_target(&dirs.rel_path(d), through)?);
                self.keep(d, &fd);
                break fd;
            }
            missing.push(d);
            at = dirs.parent(d);
        };
        for d in missing.into_iter().rev() {
            let fd = Arc::new(beneath(&base, dirs.name(d), through)?);
            self.keep(d, &fd);
            base = fd;
        }
        Ok(base)
    }

    fn kept_dir(&self, dir: usize) -> Option<Arc<OwnedFd>> {
        self.kept.lock().ok()?.get(&dir).cloned()
    }

    fn keep(&self, dir: usize, fd: &Arc<OwnedFd>) {
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= KEPT_DIRS {
                kept.clear();
            }
            kept.insert(dir, fd.clone());
        }
    }

    /// Opens `rel` (below the target) from the target's descriptor,
    /// however long (pieces of under [`PIECE`] bytes, each resolved
    /// beneath the last).
    fn open_from_target(&self, mut rest: &[u8], flags: OFlags) -> std::io::Result<OwnedFd> {
        let mut dir: Option<OwnedFd> = None;
        loop {
            let from = dir.as_ref().unwrap_or(&self.fd);
            if rest.len() < PIECE {
                return beneath(from, rest, flags);
            }
            let (head, tail) = first_piece(rest)?;
            dir = Some(beneath(
                from,
                head,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            )?);
            rest = tail;
        }
    }
}

/// Opens `rel` (relative, no empty, `.` or `..` component) in `dir` with
/// `flags`, following no symlink and leaving `dir` nowhere.
fn beneath(dir: &OwnedFd, rel: &[u8], flags: OFlags) -> std::io::Result<OwnedFd> {
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve =
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN: a rename elsewhere raced the lookup; it is safe to retry.
        for _ in 0..16 {
            match rustix::fs::openat2(dir, OsStr::from_bytes(rel), flags, Mode::empty(), resolve) {
                Err(Errno::AGAIN) => continue,
                Err(Errno::NOSYS) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                    break;
                }
                r => return Ok(r?),
            }
        }
    }
    step_by_step(dir, rel, flags)
}

/// [`beneath`] without `openat2`: one `openat(O_NOFOLLOW)` per component.
fn step_by_step(dir: &OwnedFd, rel: &[u8], flags: OFlags) -> std::io::Result<OwnedFd> {
    let through = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut names = rel.split(|b| *b == b'/').peekable();
    let mut current: Option<OwnedFd> = None;
    while let Some(name) = names.next() {
        if matches!(name, b"" | b"." | b"..") {
            return Err(Errno::INVAL.into());
        }
        let last = names.peek().is_none();
        let from = current.as_ref().unwrap_or(dir);
        let f = if last {
            flags | OFlags::NOFOLLOW
        } else {
            through
        };
        current = Some(rustix::fs::openat(
            from,
            OsStr::from_bytes(name),
            f,
            Mode::empty(),
        )?);
    }
    current.ok_or_else(|| Errno::INVAL.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Directories given by their paths below the target.
    struct Paths(Vec<Vec<u8>>);

    impl Paths {
        /// The number of `rel`, adding it and its ancestors as needed.
        fn of(&mut self, rel: &str) -> usize {
            let mut at = None;
            let mut path = Vec::new();
            for name in rel.split('/') {
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(name.as_bytes());
                let i = match self.0.iter().position(|p| *p == path) {
                    Some(i) => i,
                    None => {
                        self.0.push(path.clone());
                        self.0.len() - 1
                    }
                };
                assert_eq!(self.parent(i), at);
                at = Some(i);
            }
            at.unwrap()
        }
    }

    impl Dirs for Paths {
        fn parent(&self, dir: usize) -> Option<usize> {
            let p = &self.0[dir];
            let cut = p.iter().rposition(|b| *b == b'/')?;
            self.0.iter().position(|q| q[..] == p[..cut])
        }
        fn name(&self, dir: usize) -> &[u8] {
            let p = &self.0[dir];
            let cut = p.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
            &p[cut..]
        }
    }

    fn setup() -> (tempfile::TempDir, Target) {
        let scratch = tempfile::tempdir().unwrap();
        let t = scratch.path().join("t");
        std::fs::create_dir_all(t.join("a/b")).unwrap();
        std::fs::create_dir(scratch.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(scratch.path().join("outside"), t.join("a/link")).unwrap();
        std::os::unix::fs::symlink("../..", t.join("a/b/up")).unwrap();
        let target = Target::open(t.as_os_str().as_bytes()).unwrap();
        (scratch, target)
    }

    #[test]
    fn directories_open_beneath_and_symlinks_on_the_way_are_refused() {
        let (_scratch, target) = setup();
        for strict in [false, true] {
            let mut dirs = Paths(Vec::new());
            let mut open = |rel: &str| {
                let d = dirs.of(rel);
                if strict {
                    step_by_step(
                        &target.fd,
                        &dirs.rel_path(d),
                        OFlags::PATH | OFlags::DIRECTORY,
                    )
                } else {
                    target.open_dir(&dirs, Some(d), OFlags::PATH)
                }
            };
            assert!(open("a/b").is_ok());
            for bad in ["a/link", "a/link/x", "a/b/up", "a/b/up/t", "a/../.."] {
                assert!(open(bad).is_err(), "{bad} opened (step by step: {strict})");
            }
        }
        let mut dirs = Paths(Vec::new());
        let a = dirs.of("a");
        let parent = target.dir(&dirs, Some(a)).unwrap();
        let st =
            rustix::fs::statat(&parent, "link", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(
            crate::meta::kind_of(st.st_mode),
            crate::meta::FileKind::Symlink
        );
    }

    #[test]
    fn paths_longer_than_the_kernel_limit_resolve_piece_by_piece() {
        let (_scratch, target) = setup();
        let name = "d".repeat(200);
        let mut rel = String::from("a");
        for _ in 0..30 {
            rel.push('/');
            rel.push_str(&name);
        }
        let mut dirs = Paths(Vec::new());
        let a = dirs.of("a");
        let mut dir = target.open_dir(&dirs, Some(a), OFlags::PATH).unwrap();
        for _ in 0..30 {
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o700)).unwrap();
            dir = rustix::fs::openat(&dir, name.as_str(), OFlags::PATH, Mode::empty()).unwrap();
        }
        assert!(rel.len() > 4096);
        // Far from any kept directory: opened from the target, piece by piece.
        let deep = target
            .open_from_target(rel.as_bytes(), OFlags::RDONLY | OFlags::DIRECTORY)
            .unwrap();
        drop(deep);
        let d = dirs.of(&rel);
        assert!(target.open_dir(&dirs, Some(d), OFlags::RDONLY).is_ok());
        rustix::fs::symlinkat("/", &dir, "up").unwrap();
        assert!(
            target
                .open_from_target((rel.clone() + "/up").as_bytes(), OFlags::PATH)
                .is_err()
        );
        let up = dirs.of(&(rel + "/up"));
        assert!(target.open_dir(&dirs, Some(up), OFlags::PATH).is_err());
    }
}
