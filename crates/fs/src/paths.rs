//! Raw-byte path helpers and pattern sets shared by the walk, restore,
//! the snapshot tree readers and the CLI.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

use crate::Error;

/// `dir/name`, without doubling a trailing `/`.
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    if !dir.ends_with(b"/") {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// Longest piece of a path handed to one open call (the kernel's limit is
/// 4,096 bytes; longer paths are opened piece by piece).
pub(crate) const PIECE: usize = 3000;

/// Splits off the first piece of a path of [`PIECE`] bytes or more, at a
/// `/` (returns the piece and the rest after that `/`).
///
/// # Errors
/// A component longer than [`PIECE`] bytes.
pub(crate) fn first_piece(path: &[u8]) -> std::io::Result<(&[u8], &[u8])> {
    let cut = path
        .get(..PIECE)
        .and_then(|head| head.iter().rposition(|b| *b == b'/'))
        .filter(|i| *i > 0)
        .ok_or_else(|| std::io::Error::other("a path component is longer than 3000 bytes"))?;
    let (head, tail) = path.split_at(cut);
    Ok((head, tail.strip_prefix(b"/").unwrap_or(tail)))
}

/// A path for messages (lossy when not UTF-8).
pub(crate) fn display(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// `/proc/self/fd/N/name`: a short path to `name` in an open directory,
/// for the calls that have no `*at` form (extended attributes), so they
/// work below paths longer than the kernel's limit.
pub(crate) fn proc_path(dir: &OwnedFd, name: &[u8]) -> CString {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    CString::new(p).unwrap_or_default()
}

/// `openat` without updating the access time where that is allowed
/// (`O_NOATIME` needs ownership or `CAP_FOWNER`; otherwise a plain open).
pub(crate) fn openat_noatime(
    dir: &OwnedFd,
    name: &[u8],
    flags: OFlags,
) -> rustix::io::Result<OwnedFd> {
    let name = <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
    match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        Err(rustix::io::Errno::PERM) => rustix::fs::openat(dir, name, flags, Mode::empty()),
        r => r,
    }
}

/// A set of gitignore-style patterns matched against absolute paths.
///
/// # Errors
/// [`Error::Invalid`] naming the pattern that does not parse.
pub fn patterns(patterns: &[String]) -> Result<ignore::gitignore::Gitignore, Error> {
    let mut b = ignore::gitignore::GitignoreBuilder::new("/");
    for p in patterns {
        b.add_line(None, p)
            .map_err(|e| Error::Invalid(format!("pattern {p:?}: {e}")))?;
    }
    b.build()
        .map_err(|e| Error::Invalid(format!("patterns: {e}")))
}
