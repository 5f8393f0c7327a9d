//! The metadata of one filesystem entry, as stored in a tree node's `meta`
//! (see `docs/FORMAT.md`, "fs node metadata").
#![deny(clippy::indexing_slicing, clippy::unwrap_used)]

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tessera_core::Meta;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (stored, never followed).
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device.
    Chardev,
    /// A block device.
    Blockdev,
    /// A Unix socket (recreated as a plain node by `mknod`).
    Socket,
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Time(pub i64, pub u32);

/// One extended attribute (POSIX ACLs are the `system.posix_acl_*` ones).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Name, including its namespace (`user.`, `security.`, `system.`, `trusted.`).
    pub name: String,
    /// Value bytes, hex.
    #[serde(with = "hex::serde")]
    pub value: Vec<u8>,
}

/// Metadata of one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsMeta {
    /// What it is.
    #[serde(rename = "type")]
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name, when the id has one here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group name, when the id has one here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Modification time.
    pub mtime: Time,
    /// Access time.
    pub atime: Time,
    /// Apparent size in bytes (regular files).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: u64,
    /// Data extents `[offset, length]` of a file with holes: the node's
    /// content is these ranges concatenated; the rest reads as zeros.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<(u64, u64)>>,
    /// Symlink target bytes, hex.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "tessera_core::tree::hex_opt"
    )]
    pub target: Option<Vec<u8>>,
    /// Device number of a device node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdev: Option<u64>,
    /// Hard-link identity `[device, inode, links]`, kept for entries with
    /// more than one link so restore can link them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardlink: Option<(u64, u64, u64)>,
    /// Extended attributes, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl FsMeta {
    /// Parses a node's `meta` (untrusted input: errors, never panics).
    ///
    /// # Errors
    /// A message saying what does not parse.
    pub fn from_meta(v: &Meta) -> Result<Self, String> {
        v.parse()
            .map_err(|e| format!("file metadata does not parse: {e}"))
    }

    /// The node's `meta`.
    pub fn to_meta(&self) -> Meta {
        #[allow(clippy::expect_used)]
        Meta::to_json(self).expect("metadata serializes")
    }

    /// The metadata of an `lstat` result, without xattrs, names or extents.
    pub fn from_stat(st: &rustix::fs::Stat) -> Self {
        let kind = kind_of(st.st_mode);
        let hardlink = (kind != FileKind::Dir && st.st_nlink > 1).then_some((
            st.st_dev,
            st.st_ino,
            st.st_nlink,
        ));
        FsMeta {
            kind,
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            user: None,
            group: None,
            mtime: Time(st.st_mtime, st.st_mtime_nsec as u32),
            atime: Time(st.st_atime, st.st_atime_nsec as u32),
            size: if kind == FileKind::File {
                st.st_size as u64
            } else {
                0
            },
            extents: None,
            target: None,
            rdev: matches!(kind, FileKind::Chardev | FileKind::Blockdev).then_some(st.st_rdev),
            hardlink,
            xattrs: Vec::new(),
        }
    }

    /// `ls -l`-style mode string, e.g. `drwxr-sr-t`.
    pub fn mode_string(&self) -> String {
        let t = match self.kind {
            FileKind::File => '-',
            FileKind::Dir => 'd',
            FileKind::Symlink => 'l',
            FileKind::Fifo => 'p',
            FileKind::Chardev => 'c',
            FileKind::Blockdev => 'b',
            FileKind::Socket => 's',
        };
        let m = self.mode;
        let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
        let special = |x: bool, special: bool, lower: char, upper: char| match (x, special) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        };
        [
            t,
            bit(0o400, 'r'),
            bit(0o200, 'w'),
            special(m & 0o100 != 0, m & 0o4000 != 0, 's', 'S'),
            bit(0o040, 'r'),
            bit(0o020, 'w'),
            special(m & 0o010 != 0, m & 0o2000 != 0, 's', 'S'),
            bit(0o004, 'r'),
            bit(0o002, 'w'),
            special(m & 0o001 != 0, m & 0o1000 != 0, 't', 'T'),
        ]
        .iter()
        .collect()
    }
}

/// The kind encoded in `st_mode`.
pub fn kind_of(mode: u32) -> FileKind {
    match mode & 0o170000 {
        0o040000 => FileKind::Dir,
        0o120000 => FileKind::Symlink,
        0o010000 => FileKind::Fifo,
        0o020000 => FileKind::Chardev,
        0o060000 => FileKind::Blockdev,
        0o140000 => FileKind::Socket,
        _ => FileKind::File,
    }
}

/// Caches uid/gid → name lookups (one `getpwuid_r` per id per backup).
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
}

impl Names {
    /// Fills `meta.user` and `meta.group`.
    pub fn fill(&mut self, meta: &mut FsMeta) {
        fn cached(
            map: &mut HashMap<u32, Option<String>>,
            id: u32,
            lookup: impl FnOnce() -> Option<String>,
        ) -> Option<String> {
            map.entry(id).or_insert_with(lookup).clone()
        }
        meta.user = cached(&mut self.users, meta.uid, || {
            nix::unistd::User::from_uid(meta.uid.into())
                .ok()
                .flatten()
                .map(|u| u.name)
        });
        meta.group = cached(&mut self.groups, meta.gid, || {
            nix::unistd::Group::from_gid(meta.gid.into())
                .ok()
                .flatten()
                .map(|g| g.name)
        });
    }
}

/// Reads every extended attribute of `path` (not following a final
/// symlink), sorted by name. A filesystem without xattr support yields none.
///
/// # Errors
/// Other I/O errors.
pub fn read_xattrs(path: &std::ffi::CStr, buf: &mut Vec<u8>) -> std::io::Result<Vec<Xattr>> {
    buf.resize(64 * 1024, 0);
    let n = match rustix::fs::llistxattr(path, &mut buf[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let names: Vec<String> = buf
        .get(..n)
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        match rustix::fs::lgetxattr(path, name.as_str(), &mut buf[..]) {
            Ok(len) => out.push(Xattr {
                value: buf.get(..len).unwrap_or_default().to_vec(),
                name,
            }),
            // Removed between list and get.
            Err(rustix::io::Errno::NODATA) => {}
            Err(e) => return Err(e.into()),
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn meta(json: &str) -> Meta {
        serde_json::from_str(json).unwrap()
    }

    /// Format v1 of fs node metadata, as documented in docs/FORMAT.md: this
    /// exact JSON must keep decoding to these values.
    #[test]
    fn golden_v1_metadata_decodes() {
        let v1 = r#"{"type":"file","mode":2541,"uid":1000,"gid":100,"user":"ann","group":"users",
            "mtime":[1700000000,123456789],"atime":[1700000001,5],"size":1048576,
            "extents":[[0,4096],[65536,8192]],"hardlink":[2049,1234,2],
            "xattrs":[{"name":"user.k","value":"00ff"}]}"#;
        let m = FsMeta::from_meta(&meta(v1)).unwrap();
        let compact: String = v1.split_whitespace().collect();
        assert_eq!(m.to_meta().as_str(), compact, "encoding changed");
        assert_eq!(m.kind, FileKind::File);
        assert_eq!(m.mode, 0o4755);
        assert_eq!(
            (m.uid, m.gid, m.user.as_deref(), m.group.as_deref()),
            (1000, 100, Some("ann"), Some("users"))
        );
        assert_eq!(
            (m.mtime, m.atime),
            (Time(1_700_000_000, 123_456_789), Time(1_700_000_001, 5))
        );
        assert_eq!(m.extents, Some(vec![(0, 4096), (65536, 8192)]));
        assert_eq!(m.hardlink, Some((2049, 1234, 2)));
        assert_eq!(
            m.xattrs,
            vec![Xattr {
                name: "user.k".into(),
                value: vec![0, 255]
            }]
        );
        let link = r#"{"type":"symlink","mode":511,"uid":0,"gid":0,"mtime":[1,0],"atime":[1,0],"target":"2e2e2f78"}"#;
        let m = FsMeta::from_meta(&meta(link)).unwrap();
        assert_eq!(m.target.as_deref(), Some(&b"../x"[..]));
        assert_eq!(m.to_meta().as_str(), link, "encoding changed");
        let dev = r#"{"type":"chardev","mode":438,"uid":0,"gid":0,"mtime":[1,0],"atime":[1,0],"rdev":259}"#;
        assert_eq!(FsMeta::from_meta(&meta(dev)).unwrap().rdev, Some(259));
    }

    #[test]
    fn mode_strings() {
        let mut m = FsMeta {
            kind: FileKind::Dir,
            mode: 0o3755,
            uid: 0,
            gid: 0,
            user: None,
            group: None,
            mtime: Time::default(),
            atime: Time::default(),
            size: 0,
            extents: None,
            target: None,
            rdev: None,
            hardlink: None,
            xattrs: vec![],
        };
        assert_eq!(m.mode_string(), "drwxr-sr-t");
        m.kind = FileKind::File;
        m.mode = 0o4644;
        assert_eq!(m.mode_string(), "-rwSr--r--");
        let back = FsMeta::from_meta(&m.to_meta()).unwrap();
        assert_eq!(back, m);
        assert!(FsMeta::from_meta(&meta(r#"{"type": "file"}"#)).is_err());
    }
}
