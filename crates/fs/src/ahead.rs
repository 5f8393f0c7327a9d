//! Directories read ahead of the walk.
//!
//! The walk is one thread that emits entries in order. On a tree that has
//! not changed, most of its time goes to system calls: opening and
//! listing directories and `stat`ing every entry. A helper thread does that
//! for the directories the walk will enter next (the subdirectories of
//! those it has entered, the one needed soonest first), so the walk finds
//! them ready and only decides, looks up the files cache and emits.
//!
//! Walk order (depth first, names sorted as bytes) is the byte order of
//! paths written with 0 for the separator (no name holds a 0 byte): a
//! queue sorted by that key hands out the directory needed soonest, and
//! when the walk takes a key, everything before it was passed over (an
//! excluded directory's subdirectories) and is dropped.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use rustix::fs::{AtFlags, OFlags, Stat};

use crate::paths::openat_noatime;

/// Entries of one directory `stat`ed ahead, at most (a huge directory's
/// rest is `stat`ed by the walk as it goes: memory stays bounded).
const STAT_AHEAD: usize = 4096;
/// Entries held in read-ahead listings not yet taken, at most.
const MAX_AHEAD_ENTRIES: usize = 16_384;
/// Listings not yet taken, at most: each holds its directory open, and a
/// process may have as few as 1,024 descriptors.
const MAX_AHEAD_DIRS: usize = 64;

/// A directory opened and listed, its first entries `stat`ed.
pub(crate) struct Listing {
    /// The directory, or why it could not be opened.
    pub fd: rustix::io::Result<Arc<OwnedFd>>,
    /// Its names, sorted as bytes, without `.` and `..`; or why they could
    /// not be read.
    pub names: std::io::Result<Vec<Vec<u8>>>,
    /// `lstat` of the first names (up to [`STAT_AHEAD`]), in order.
    pub stats: Vec<rustix::io::Result<Stat>>,
}

impl Listing {
    /// Opens `name` in `parent` (without updating its access time where
    /// allowed), lists and `stat`s it.
    pub(crate) fn read(parent: &OwnedFd, name: &[u8]) -> Listing {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match openat_noatime(parent, name, flags) {
            Ok(fd) => Listing::of(Arc::new(fd)),
            Err(e) => Listing {
                fd: Err(e),
                names: Ok(Vec::new()),
                stats: Vec::new(),
            },
        }
    }

    /// Lists and `stat`s an open directory.
    pub(crate) fn of(fd: Arc<OwnedFd>) -> Listing {
        let names = list(&fd);
        let stats = names.as_ref().map_or_else(
            |_| Vec::new(),
            |names| {
                names
                    .iter()
                    .take(STAT_AHEAD)
                    .map(|n| {
                        rustix::fs::statat(&*fd, OsStr::from_bytes(n), AtFlags::SYMLINK_NOFOLLOW)
                    })
                    .collect()
            },
        );
        Listing {
            fd: Ok(fd),
            names,
            stats,
        }
    }

    fn entries(&self) -> usize {
        self.names.as_ref().map_or(0, Vec::len).max(1)
    }
}

/// The names in an open directory, sorted as bytes, without `.` and `..`.
pub(crate) fn list(fd: &OwnedFd) -> std::io::Result<Vec<Vec<u8>>> {
    let dup = rustix::io::dup(fd)?;
    let mut dir = rustix::fs::Dir::new(dup)?;
    let mut names = Vec::new();
    while let Some(e) = dir.read() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    names.sort();
    Ok(names)
}

/// The read-ahead key of an absolute path: its bytes with 0 for `/`.
pub(crate) fn key(path: &[u8]) -> Vec<u8> {
    path.iter()
        .map(|b| if *b == b'/' { 0 } else { *b })
        .collect()
}

/// A directory to read ahead: `name` in `parent`.
struct Job {
    parent: Arc<OwnedFd>,
    name: Vec<u8>,
}

#[derive(Default)]
struct State {
    queue: BTreeMap<Vec<u8>, Job>,
    /// The key being read by the helper.
    running: Option<Vec<u8>>,
    done: BTreeMap<Vec<u8>, Listing>,
    done_entries: usize,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The helper finished a listing.
    ready: Condvar,
    /// Work was queued, a listing taken, or the walk ended.
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The helper thread and its queue; dropping it stops the thread.
pub(crate) struct ReadAhead {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts the helper thread (none when it cannot start: the walk then
    /// reads every directory itself).
    pub(crate) fn start() -> ReadAhead {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-ahead".into())
            .spawn(move || run(&worker))
            .ok();
        ReadAhead { shared, thread }
    }

    /// Queues `name` in `parent` (whose key is `key`) to be read ahead.
    pub(crate) fn submit(&self, key: Vec<u8>, parent: Arc<OwnedFd>, name: Vec<u8>) {
        if self.thread.is_none() {
            return;
        }
        self.shared.lock().queue.insert(key, Job { parent, name });
        self.shared.wake.notify_one();
    }

    /// The listing of the directory with this key when it was read ahead
    /// (waiting if it is being read); `None` when the caller must read it.
    /// Drops what lies before `key` in walk order: the walk passed it over.
    pub(crate) fn take(&self, key: &[u8]) -> Option<Listing> {
        let mut state = self.shared.lock();
        let later = state.queue.split_off(key);
        state.queue = later;
        let later = state.done.split_off(key);
        let dropped: usize = state.done.values().map(Listing::entries).sum();
        state.done = later;
        state.done_entries -= dropped;
        loop {
            if let Some(listing) = state.done.remove(key) {
                state.done_entries -= listing.entries();
                self.shared.wake.notify_one();
                return Some(listing);
            }
            if state.queue.remove(key).is_some() {
                return None;
            }
            if state.running.as_deref() != Some(key) {
                return None;
            }
            state = self
                .shared
                .ready
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The helper: reads the queued directory needed soonest, while fewer
/// than [`MAX_AHEAD_DIRS`] listings and [`MAX_AHEAD_ENTRIES`] entries wait
/// to be taken.
fn run(shared: &Shared) {
    let mut state = shared.lock();
    loop {
        if state.stop {
            return;
        }
        let room = state.done_entries < MAX_AHEAD_ENTRIES && state.done.len() < MAX_AHEAD_DIRS;
        let job = room.then(|| state.queue.pop_first()).flatten();
        let Some((key, job)) = job else {
            state = shared
                .wake
                .wait(state)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        };
        state.running = Some(key.clone());
        drop(state);
        let listing = Listing::read(&job.parent, &job.name);
        state = shared.lock();
        state.running = None;
        state.done_entries += listing.entries();
        state.done.insert(key, listing);
        shared.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_in_walk_order() {
        // Depth first, names as bytes: "a" and all below it before "a.c".
        let walk = ["/a", "/a/b", "/a/b/c", "/a/z", "/a.c", "/ab"];
        let mut keys: Vec<Vec<u8>> = walk.iter().map(|p| key(p.as_bytes())).collect();
        keys.sort();
        let back: Vec<String> = keys
            .iter()
            .map(|k| {
                String::from_utf8(k.iter().map(|b| if *b == 0 { b'/' } else { *b }).collect())
                    .unwrap()
            })
            .collect();
        assert_eq!(back, walk);
    }

    /// Subdirectories `names` (each holding a file `f` when `with_file`)
    /// of a new directory, all queued on a started read-ahead.
    struct Queued {
        _dir: tempfile::TempDir,
        base: Vec<u8>,
        root: Arc<OwnedFd>,
        ahead: ReadAhead,
    }

    impl Queued {
        fn new(names: &[String], with_file: bool) -> Queued {
            let dir = tempfile::tempdir().unwrap();
            for d in names {
                std::fs::create_dir(dir.path().join(d)).unwrap();
                if with_file {
                    std::fs::write(dir.path().join(d).join("f"), d).unwrap();
                }
            }
            let root = Arc::new(
                rustix::fs::open(
                    dir.path(),
                    OFlags::RDONLY | OFlags::DIRECTORY,
                    rustix::fs::Mode::empty(),
                )
                .unwrap(),
            );
            let q = Queued {
                base: dir.path().as_os_str().as_bytes().to_vec(),
                _dir: dir,
                root,
                ahead: ReadAhead::start(),
            };
            for d in names {
                q.ahead
                    .submit(q.key(d), q.root.clone(), d.as_bytes().to_vec());
            }
            q
        }

        fn key(&self, name: &str) -> Vec<u8> {
            key(&[self.base.as_slice(), b"/", name.as_bytes()].concat())
        }
    }

    #[test]
    fn listings_read_ahead_are_handed_out_once_and_passed_over_ones_dropped() {
        let q = Queued::new(&["a".into(), "b".into(), "c".into()], true);
        let (ahead, root) = (&q.ahead, &q.root);
        let k = |n: &str| q.key(n);
        // "a" is passed over; "b" comes back listed and stat'ed.
        let b = ahead
            .take(&k("b"))
            .or_else(|| Some(Listing::read(root, b"b")))
            .unwrap();
        assert_eq!(b.names.unwrap(), vec![b"f".to_vec()]);
        assert_eq!(b.stats.len(), 1);
        assert!(b.stats[0].is_ok());
        assert!(ahead.take(&k("b")).is_none(), "handed out once");
        assert!(ahead.take(&k("a")).is_none(), "passed over: dropped");
        let c = ahead
            .take(&k("c"))
            .or_else(|| Some(Listing::read(root, b"c")))
            .unwrap();
        assert_eq!(c.names.unwrap(), vec![b"f".to_vec()]);
        let state = ahead.shared.lock();
        assert!(state.queue.is_empty() && state.done.is_empty());
        assert_eq!(state.done_entries, 0);
    }

    /// Each listing holds its directory open: no more than
    /// [`MAX_AHEAD_DIRS`] wait, however small they are.
    #[test]
    fn listings_waiting_are_bounded_in_number() {
        let n = 500;
        let names: Vec<String> = (0..n).map(|i| format!("d{i:03}")).collect();
        let q = Queued::new(&names, false);
        let ahead = &q.ahead;
        let waited = std::time::Instant::now();
        while ahead.shared.lock().done.len() < MAX_AHEAD_DIRS
            && waited.elapsed() < std::time::Duration::from_secs(10)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let state = ahead.shared.lock();
        assert_eq!(state.done.len(), MAX_AHEAD_DIRS);
        assert_eq!(state.queue.len(), n - MAX_AHEAD_DIRS);
    }
}
