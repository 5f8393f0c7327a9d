//! Helpers: a repository, and a walker that describes every entry of a
//! tree (by `*at` calls, so paths of any length work) for comparison.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, Mode, OFlags};
use tessera_core::{Credential, InitOptions, KdfParams, ObjectStoreBackend, Repository};

pub async fn repo() -> Repository {
    let backend = Arc::new(ObjectStoreBackend::memory());
    let options = InitOptions {
        kdf: KdfParams::insecure_fast(),
        ..Default::default()
    };
    Repository::init(backend, &Credential::password("pw"), options)
        .await
        .unwrap()
}

/// Everything the fidelity test compares about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Described {
    pub kind: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub atime: (i64, i64),
    pub size: u64,
    pub blocks: u64,
    pub rdev: u64,
    pub target: Option<Vec<u8>>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub content_hash: Option<[u8; 32]>,
    pub extents: Option<Vec<(u64, u64)>>,
    /// Paths (relative) sharing this entry's inode, for hard links.
    pub link_group: Vec<Vec<u8>>,
}

fn open_dir_noatime(parent: &OwnedFd, name: &[u8]) -> OwnedFd {
    rustix::fs::openat(
        parent,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::NOATIME,
        Mode::empty(),
    )
    .unwrap()
}

fn xattrs(parent: &OwnedFd, name: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut p = format!("/proc/self/fd/{}/", std::os::fd::AsRawFd::as_raw_fd(parent)).into_bytes();
    p.extend_from_slice(name);
    let p = std::ffi::CString::new(p).unwrap();
    let mut buf = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(p.as_c_str(), &mut buf[..]).unwrap_or(0);
    let names: Vec<String> = buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8(s.to_vec()).unwrap())
        .collect();
    let mut out: Vec<(String, Vec<u8>)> = names
        .into_iter()
        .map(|name| {
            let mut v = vec![0u8; 65536];
            let len = rustix::fs::lgetxattr(p.as_c_str(), name.as_str(), &mut v[..]).unwrap();
            v.truncate(len);
            (name, v)
        })
        .collect();
    out.sort();
    out
}

fn extents(fd: &OwnedFd, size: u64) -> Vec<(u64, u64)> {
    use rustix::fs::SeekFrom;
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < size {
        let Ok(start) = rustix::fs::seek(fd, SeekFrom::Data(pos)) else {
            break;
        };
        let end = rustix::fs::seek(fd, SeekFrom::Hole(start))
            .unwrap()
            .min(size);
        out.push((start, end - start));
        pos = end;
    }
    out
}

/// Describes every entry under `root` (not `root` itself), by relative path.
pub fn describe(root: &Path) -> BTreeMap<Vec<u8>, Described> {
    let top = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOATIME,
        Mode::empty(),
    )
    .unwrap();
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    walk(&top, b"", &mut out, &mut inodes);
    for group in inodes.values().filter(|g| g.len() > 1) {
        for p in group {
            out.get_mut(p).unwrap().link_group = group.clone();
        }
    }
    out
}

fn walk(
    dir: &OwnedFd,
    rel: &[u8],
    out: &mut BTreeMap<Vec<u8>, Described>,
    inodes: &mut BTreeMap<(u64, u64), Vec<Vec<u8>>>,
) {
    let mut d = rustix::fs::Dir::new(rustix::io::dup(dir).unwrap()).unwrap();
    let mut names = Vec::new();
    while let Some(e) = d.read() {
        let n = e.unwrap().file_name().to_bytes().to_vec();
        if n != b"." && n != b".." {
            names.push(n);
        }
    }
    names.sort();
    for name in names {
        let path = if rel.is_empty() {
            name.clone()
        } else {
            [rel, b"/", &name].concat()
        };
        let st =
            rustix::fs::statat(dir, OsStr::from_bytes(&name), AtFlags::SYMLINK_NOFOLLOW).unwrap();
        let kind = st.st_mode & 0o170000;
        let mut desc = Described {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime: (st.st_mtime, st.st_mtime_nsec as i64),
            atime: (st.st_atime, st.st_atime_nsec as i64),
            size: if kind == 0o040000 {
                0
            } else {
                st.st_size as u64
            },
            blocks: if kind == 0o100000 {
                st.st_blocks as u64
            } else {
                0
            },
            rdev: st.st_rdev,
            target: None,
            xattrs: xattrs(dir, &name),
            content_hash: None,
            extents: None,
            link_group: Vec::new(),
        };
        match kind {
            0o120000 => {
                // Reading a link updates its access time (there is no
                // O_NOATIME for readlink): the backup's own read moves it.
                desc.atime = (0, 0);
                desc.target = Some(
                    rustix::fs::readlinkat(dir, OsStr::from_bytes(&name), Vec::new())
                        .unwrap()
                        .into_bytes(),
                );
            }
            0o100000 => {
                let fd = rustix::fs::openat(
                    dir,
                    OsStr::from_bytes(&name),
                    OFlags::RDONLY | OFlags::NOATIME,
                    Mode::empty(),
                )
                .unwrap();
                desc.extents = Some(extents(&fd, st.st_size as u64));
                let mut h = blake3::Hasher::new();
                let mut f = std::fs::File::from(fd);
                std::io::copy(&mut f, &mut h).unwrap();
                desc.content_hash = Some(*h.finalize().as_bytes());
                inodes
                    .entry((st.st_dev, st.st_ino))
                    .or_default()
                    .push(path.clone());
            }
            _ => {}
        }
        if kind == 0o040000 {
            let sub = open_dir_noatime(dir, &name);
            walk(&sub, &path, out, inodes);
        }
        out.insert(path, desc);
    }
}
