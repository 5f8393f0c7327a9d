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
//! Directories opened this way are kept (a few hundred descriptors, by
//! path), and a path is resolved from its nearest kept ancestor, one
//! component per step: restoring a tree nested thousands deep then costs
//! a constant number of lookups per entry, not one per level of its depth
//! (which made a 20,000-deep tree take minutes). A kept descriptor follows
//! its directory if something renames it meanwhile; the restore's own
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

/// A restore's target directory, open, with its path for messages.
pub(crate) struct Target {
    fd: Arc<OwnedFd>,
    path: Vec<u8>,
    /// Directories below the target opened already (`O_PATH`), by path.
    kept: Mutex<HashMap<Vec<u8>, Arc<OwnedFd>>>,
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
    #[cfg(test)]
    pub(crate) fn path(&self) -> &[u8] {
        &self.path
    }

    /// The part of `full` (a path under the target, as the restore builds
    /// them with [`crate::paths::join`]) below the target: empty for the
    /// target itself.
    pub(crate) fn rel<'a>(&self, full: &'a [u8]) -> &'a [u8] {
        let below = full.get(self.path.len()..).unwrap_or_default();
        below.strip_prefix(b"/").unwrap_or(below)
    }

    /// Opens the directory at `full` (see [`Target::rel`]) with `flags`
    /// (`O_RDONLY` to list it, say): beneath the target, through no
    /// symlink, the last component included.
    pub(crate) fn open_dir(&self, full: &[u8], flags: OFlags) -> std::io::Result<OwnedFd> {
        let flags = flags | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match self.split(full) {
            None => Ok(rustix::fs::openat(&*self.fd, ".", flags, Mode::empty())?),
            Some((parent, name)) => beneath(&*self.dir(parent)?, name, flags),
        }
    }

    /// The directory at `full` as an `O_PATH` descriptor, for `*at` calls:
    /// a kept one, or opened one component at a time from the nearest
    /// kept ancestor (see the module's note).
    pub(crate) fn dir(&self, full: &[u8]) -> std::io::Result<Arc<OwnedFd>> {
        let through = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        // Up to the nearest kept ancestor (or the target), remembering
        // the directories in between, deepest first.
        let mut missing: Vec<&[u8]> = Vec::new();
        let mut at = full;
        let mut base = loop {
            let Some((parent, _)) = self.split(at) else {
                break self.fd.clone();
            };
            if let Some(fd) = self.kept_dir(at) {
                break fd;
            }
            if missing.len() == LOOK_UP {
                // Far from anything kept: one lookup from the target.
                let fd = Arc::new(self.open_from_target(at, through)?);
                self.keep(at, &fd);
                break fd;
            }
            missing.push(at);
            at = parent;
        };
        for dir in missing.into_iter().rev() {
            let name = self.split(dir).map(|(_, n)| n).unwrap_or_default();
            let fd = Arc::new(beneath(&base, name, through)?);
            self.keep(dir, &fd);
            base = fd;
        }
        Ok(base)
    }

    /// The parent directory of `full` (an `O_PATH` descriptor, for `*at`
    /// calls) and the last component's name. The target itself has no
    /// parent here: its parent is not the restore's to touch.
    pub(crate) fn parent<'a>(&self, full: &'a [u8]) -> std::io::Result<(Arc<OwnedFd>, &'a [u8])> {
        let (parent, name) = self
            .split(full)
            .ok_or_else(|| std::io::Error::other("the target itself is not an entry to replace"))?;
        Ok((self.dir(parent)?, name))
    }

    /// `full` as (its parent's path, its name); `None` for the target.
    fn split<'a>(&self, full: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        let rel = self.rel(full);
        if rel.is_empty() {
            return None;
        }
        let (dir_len, name) = match rel.iter().rposition(|b| *b == b'/') {
            Some(i) => (
                full.len() - rel.len() + i,
                rel.get(i + 1..).unwrap_or_default(),
            ),
            None => (self.path.len(), rel),
        };
        Some((full.get(..dir_len).unwrap_or_default(), name))
    }

    fn kept_dir(&self, full: &[u8]) -> Option<Arc<OwnedFd>> {
        self.kept.lock().ok()?.get(full).cloned()
    }

    fn keep(&self, full: &[u8], fd: &Arc<OwnedFd>) {
        if let Ok(mut kept) = self.kept.lock() {
            if kept.len() >= KEPT_DIRS {
                kept.clear();
            }
            kept.insert(full.to_vec(), fd.clone());
        }
    }

    /// Opens `full` from the target's descriptor, however long its path
    /// (pieces of under [`PIECE`] bytes, each resolved beneath the last).
    fn open_from_target(&self, full: &[u8], flags: OFlags) -> std::io::Result<OwnedFd> {
        let mut rest = self.rel(full);
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

    fn full(target: &Target, rel: &str) -> Vec<u8> {
        crate::paths::join(target.path(), rel.as_bytes())
    }

    #[test]
    fn directories_open_beneath_and_symlinks_on_the_way_are_refused() {
        let (_scratch, target) = setup();
        for strict in [false, true] {
            let open = |rel: &str| {
                let p = full(&target, rel);
                if strict {
                    step_by_step(&target.fd, target.rel(&p), OFlags::PATH | OFlags::DIRECTORY)
                } else {
                    target.open_dir(&p, OFlags::PATH)
                }
            };
            assert!(open("a/b").is_ok());
            for bad in ["a/link", "a/link/x", "a/b/up", "a/b/up/t", "a/../.."] {
                assert!(open(bad).is_err(), "{bad} opened (step by step: {strict})");
            }
        }
        let link = full(&target, "a/link");
        let (parent, name) = target.parent(&link).unwrap();
        assert_eq!(name, b"link");
        let st =
            rustix::fs::statat(&parent, "link", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(
            crate::meta::kind_of(st.st_mode),
            crate::meta::FileKind::Symlink
        );
        assert!(target.parent(target.path()).is_err());
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
        let mut dir = target.open_dir(&full(&target, "a"), OFlags::PATH).unwrap();
        for _ in 0..30 {
            rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_bits_truncate(0o700)).unwrap();
            dir = rustix::fs::openat(&dir, name.as_str(), OFlags::PATH, Mode::empty()).unwrap();
        }
        assert!(rel.len() > 4096);
        assert!(
            target
                .open_dir(&full(&target, &rel), OFlags::RDONLY)
                .is_ok()
        );
        rustix::fs::symlinkat("/", &dir, "up").unwrap();
        assert!(
            target
                .open_dir(&full(&target, &(rel + "/up")), OFlags::PATH)
                .is_err()
        );
    }
}
