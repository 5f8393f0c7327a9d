//! Owners, extended attributes, modes and times of restored entries, and
//! the warnings for what a restore without root cannot set.

use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};

use super::io_err;
use super::plan::{Plan, parent_of};
use crate::Error;
use crate::beneath::Target;
use crate::meta::{FileKind, FsMeta};
use crate::paths::{display, proc_path};

/// What a file already has from its creation.
#[derive(Clone, Copy, Default)]
pub(super) struct Done {
    /// Its owner and group.
    pub owner: bool,
    /// Its mode.
    pub mode: bool,
}

/// This process's umask, from /proc (reading it with umask(2) would
/// change it for a moment, under other threads' feet).
pub(super) fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.trim_start_matches("Umask:").trim(), 8).ok()
}

/// [`set_meta`] through an open descriptor (a regular file or a
/// directory; no path lookups): owner, extended attributes, mode, times;
/// what the file got at its creation (`done`) is not set again. `path`
/// names it in messages.
pub(super) fn set_fd_meta(
    fd: &OwnedFd,
    path: &dyn Fn() -> Vec<u8>,
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
        .map_err(|e| io_err(&path(), "setting the owner", e))?;
    }
    set_xattrs(meta, path, warnings, |name, value| {
        rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty())
    });
    if !done.mode {
        rustix::fs::fchmod(fd, Mode::from_bits_truncate(meta.mode))
            .map_err(|e| io_err(&path(), "setting the mode", e))?;
    }
    rustix::fs::futimens(fd, &timestamps(meta)).map_err(|e| io_err(&path(), "setting the times", e))
}

/// Sets every extended attribute with `set`; one that fails is a warning
/// (the filesystem may not support its namespace), not an error.
fn set_xattrs(
    meta: &FsMeta,
    path: &dyn Fn() -> Vec<u8>,
    warnings: &mut Vec<String>,
    set: impl Fn(&str, &[u8]) -> rustix::io::Result<()>,
) {
    for x in &meta.xattrs {
        if let Err(e) = set(&x.name, &x.value) {
            warnings.push(format!(
                "{}: extended attribute {} not restored: {e}",
                display(&path()),
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

/// Sets the metadata of entry `at` (`None`: the target itself) to
/// `meta`: owner, extended attributes, mode, then times (in that order:
/// a chown clears setuid bits and file capabilities).
pub(super) fn set_meta(
    root: &Target,
    plan: &Plan,
    at: Option<usize>,
    meta: &FsMeta,
    is_root: bool,
    warnings: &mut Vec<String>,
) -> Result<(), Error> {
    let path = || plan.path(at);
    let idx = match at {
        Some(idx) if meta.kind != FileKind::Dir => idx,
        _ => {
            let fd = root
                .open_dir(plan, at, OFlags::RDONLY)
                .map_err(|e| io_err(&path(), "opening beneath the target", e))?;
            return set_fd_meta(&fd, &path, meta, is_root, Done::default(), warnings);
        }
    };
    let (parent, name) = parent_of(root, plan, idx)?;
    let name_os = OsStr::from_bytes(name);
    if is_root {
        rustix::fs::chownat(
            &parent,
            name_os,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| io_err(&path(), "setting the owner", e))?;
    }
    if !meta.xattrs.is_empty() {
        let p = proc_path(&parent, name);
        set_xattrs(meta, &path, warnings, |name, value| {
            rustix::fs::lsetxattr(p.as_c_str(), name, value, rustix::fs::XattrFlags::empty())
        });
    }
    if meta.kind != FileKind::Symlink {
        rustix::fs::chmodat(
            &parent,
            name_os,
            Mode::from_bits_truncate(meta.mode),
            AtFlags::empty(),
        )
        .map_err(|e| io_err(&path(), "setting the mode", e))?;
    }
    rustix::fs::utimensat(
        &parent,
        name_os,
        &timestamps(meta),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err(&path(), "setting the times", e))
}

/// One warning for all the device nodes left out (`devices`, in plan
/// order), and one when owners could not be restored (not root).
pub(super) fn sum_up_skipped(
    plan: &Plan,
    devices: &[usize],
    is_root: bool,
    warnings: &mut Vec<String>,
) {
    if let Some(first) = devices.first() {
        warnings.push(format!(
            "{} device node(s) not restored: creating one needs root (CAP_MKNOD); the first is {}",
            devices.len(),
            plan.show(*first)
        ));
    }
    if !is_root {
        let (uid, gid) = (
            rustix::process::geteuid().as_raw(),
            rustix::process::getegid().as_raw(),
        );
        let others = plan
            .items
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
