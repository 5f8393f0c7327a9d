//! Back up a tree holding every kind of entry and metadata, restore it,
//! and compare everything: zero differences allowed.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, Timespec, Timestamps};
use tessera_fs::{BackupOptions, RestoreOptions};

use crate::common::{describe, repo};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn set_times(path: &Path, m: (i64, i64), a: (i64, i64)) {
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &Timestamps {
            last_access: Timespec {
                tv_sec: a.0,
                tv_nsec: a.1,
            },
            last_modification: Timespec {
                tv_sec: m.0,
                tv_nsec: m.1,
            },
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A POSIX ACL in the kernel's xattr form (version 2; entries of tag,
/// permissions, id).
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

const NO_ID: u32 = u32::MAX;

/// Builds the tree and returns the path of the deep directory chain.
fn build(root: &Path) {
    let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).unwrap();
    std::fs::create_dir_all(root.join("dir/sub")).unwrap();
    std::fs::create_dir(root.join("empty-dir")).unwrap();
    w("dir/small.txt", b"hello\n");
    w("empty", b"");
    let big: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    w("dir/sub/big.bin", &big);
    // Sparse: 64 MiB with three data regions, one crossing nothing, one at the end.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(root.join("sparse.img")).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(&big[..1 << 20], 4 << 20).unwrap();
        f.write_all_at(b"middle", 30 << 20).unwrap();
        f.write_all_at(&big[..100_000], (64 << 20) - 100_000)
            .unwrap();
        // Ending in a hole: no write reaches its end.
        let f = std::fs::File::create(root.join("tail-hole.img")).unwrap();
        f.set_len(16 << 20).unwrap();
        f.write_all_at(&big[..1 << 20], 1 << 20).unwrap();
    }
    // Symlinks: relative, absolute, dangling, a loop.
    std::os::unix::fs::symlink("dir/small.txt", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    std::os::unix::fs::symlink("loop-b", root.join("loop-a")).unwrap();
    std::os::unix::fs::symlink("loop-a", root.join("loop-b")).unwrap();
    // Hard links: a group of three, one in another directory.
    w("hard-1", b"shared inode\n");
    std::fs::hard_link(root.join("hard-1"), root.join("hard-2")).unwrap();
    std::fs::hard_link(root.join("hard-1"), root.join("dir/hard-3")).unwrap();
    // FIFO and socket.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        Mode::from_bits_truncate(0o640),
        0,
    )
    .unwrap();
    {
        let short = tempfile::Builder::new()
            .prefix("s")
            .tempdir_in("/tmp")
            .unwrap();
        let sock = short.path().join("s");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        std::fs::rename(&sock, root.join("socket")).unwrap();
        drop(l);
    }
    if is_root() {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("null-dev"),
            rustix::fs::FileType::CharacterDevice,
            Mode::from_bits_truncate(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("loop-dev"),
            rustix::fs::FileType::BlockDevice,
            Mode::from_bits_truncate(0o660),
            rustix::fs::makedev(7, 200),
        )
        .unwrap();
    }
    // Modes with setuid, setgid, sticky.
    w("setuid", b"#!/bin/sh\n");
    std::fs::set_permissions(root.join("setuid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    w("setgid", b"x");
    std::fs::set_permissions(root.join("setgid"), std::fs::Permissions::from_mode(0o2710)).unwrap();
    std::fs::create_dir(root.join("sticky")).unwrap();
    std::fs::set_permissions(root.join("sticky"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    w("private", b"secret");
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o600)).unwrap();
    // Names: not UTF-8, with a newline.
    std::fs::write(
        root.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")),
        b"bytes name",
    )
    .unwrap();
    std::fs::write(root.join("new\nline"), b"newline name").unwrap();
    std::fs::create_dir(root.join(OsStr::from_bytes(b"dir-\xff"))).unwrap();
    // Extended attributes and ACLs.
    let x = |p: &str, name: &str, value: &[u8]| {
        rustix::fs::lsetxattr(root.join(p), name, value, rustix::fs::XattrFlags::empty()).unwrap()
    };
    x("dir/small.txt", "user.comment", b"a note");
    x("dir/small.txt", "user.binary", &[0, 1, 2, 255]);
    x("dir", "user.on-dir", b"yes");
    // user:1001 rw, group:2002 r, mask rw.
    x(
        "private",
        "system.posix_acl_access",
        &acl(&[
            (0x01, 6, NO_ID),
            (0x02, 6, 1001),
            (0x04, 0, NO_ID),
            (0x08, 4, 2002),
            (0x10, 6, NO_ID),
            (0x20, 0, NO_ID),
        ]),
    );
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o660)).unwrap();
    x(
        "dir/sub",
        "system.posix_acl_default",
        &acl(&[
            (0x01, 7, NO_ID),
            (0x02, 5, 1001),
            (0x04, 5, NO_ID),
            (0x10, 5, NO_ID),
            (0x20, 0, NO_ID),
        ]),
    );
    // Owners.
    if is_root() {
        rustix::fs::chownat(
            rustix::fs::CWD,
            root.join("dir/small.txt"),
            Some(rustix::fs::Uid::from_raw(1234)),
            Some(rustix::fs::Gid::from_raw(5678)),
            AtFlags::empty(),
        )
        .unwrap();
        rustix::fs::chownat(
            rustix::fs::CWD,
            root.join("dangling"),
            Some(rustix::fs::Uid::from_raw(4321)),
            Some(rustix::fs::Gid::from_raw(8765)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
        rustix::fs::chownat(
            rustix::fs::CWD,
            root.join("sticky"),
            Some(rustix::fs::Uid::from_raw(65534)),
            Some(rustix::fs::Gid::from_raw(65534)),
            AtFlags::empty(),
        )
        .unwrap();
        // chown cleared the bit: set it again.
        std::fs::set_permissions(root.join("sticky"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
    }
    // A path longer than 4096 bytes: 24 levels of 200-byte names.
    let mut fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for i in 0..24 {
        let name = format!("{i:02}{}", "d".repeat(198));
        rustix::fs::mkdirat(&fd, name.as_str(), Mode::from_bits_truncate(0o755)).unwrap();
        fd = rustix::fs::openat(
            &fd,
            name.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
    }
    let f = rustix::fs::openat(
        &fd,
        "deep-file",
        OFlags::WRONLY | OFlags::CREATE,
        Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    rustix::io::write(&f, b"far down").unwrap();
    drop(f);
    rustix::fs::symlinkat("../deep-file", &fd, "deep-link").unwrap();
    // Times with nanoseconds, on everything we can name by a short path;
    // directories last (creating entries changes their mtime).
    let mut n = 0i64;
    for p in [
        "dir/small.txt",
        "empty",
        "dir/sub/big.bin",
        "sparse.img",
        "tail-hole.img",
        "rel-link",
        "dangling",
        "hard-1",
        "fifo",
        "socket",
        "setuid",
        "setgid",
        "private",
        "new\nline",
    ] {
        n += 1;
        set_times(
            &root.join(p),
            (1_600_000_000 + n * 1000, 123_456_789 + n),
            (1_650_000_000 + n, 987_654_321 - n),
        );
    }
    for p in ["dir/sub", "dir", "empty-dir", "sticky"] {
        n += 1;
        set_times(
            &root.join(p),
            (1_500_000_000 + n, 111_111_111 * (n % 9)),
            (1_550_000_000 + n, 42),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_entry_comes_back_identical() {
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("tree");
    std::fs::create_dir(&root).unwrap();
    build(&root);
    let repo = repo().await;
    let done = tessera_fs::backup(&repo, std::slice::from_ref(&root), BackupOptions::default())
        .await
        .unwrap();
    assert!(done.warnings.is_empty(), "{:?}", done.warnings);
    let out = tempfile::tempdir().unwrap();
    let summary = tessera_fs::restore(
        &repo,
        &done.snapshot,
        &root,
        out.path(),
        RestoreOptions::default(),
    )
    .await
    .unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    let want = describe(&root);
    let got = describe(out.path());
    assert!(want.len() > 40, "the tree has {} entries", want.len());
    let names = |m: &std::collections::BTreeMap<Vec<u8>, crate::common::Described>| {
        m.keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&got), names(&want));
    let mut diffs = Vec::new();
    for (path, w) in &want {
        let g = &got[path];
        if g != w {
            diffs.push(format!(
                "{}:\n  want {w:?}\n  got  {g:?}",
                String::from_utf8_lossy(path)
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} differences:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
    // The sparse file really is sparse (and kept its layout).
    let sparse = &got[&b"sparse.img".to_vec()];
    assert!(
        sparse.blocks * 512 < 2 << 20,
        "sparse file restored with {} blocks",
        sparse.blocks
    );
    if is_root() {
        assert_eq!(got[&b"dir/small.txt".to_vec()].uid, 1234);
        assert_eq!(got[&b"null-dev".to_vec()].rdev, rustix::fs::makedev(1, 3));
    }
}
