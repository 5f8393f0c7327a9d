//! Restore safety and repository permissions seen from the binary.

use crate::common::TestRepo;

#[test]
fn a_stream_restore_replaces_a_symlink_instead_of_writing_through_it() {
    let t = TestRepo::new(&[]);
    let id = t.backup("db.dump", b"the stream", &[]);
    let target = t.path("out");
    std::fs::create_dir(&target).unwrap();
    let victim = t.path("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    std::os::unix::fs::symlink(&victim, target.join("db.dump")).unwrap();
    t.ok(&["restore", &id, "--target", target.to_str().unwrap()]);
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    let restored = target.join("db.dump");
    assert!(!std::fs::symlink_metadata(&restored).unwrap().is_symlink());
    assert_eq!(std::fs::read(&restored).unwrap(), b"the stream");
}

/// Every file and directory under `dir` that lets group or others in.
fn open_to_others(dir: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        if m.permissions().mode() & 0o077 != 0 {
            found.push(format!("{} {:o}", p.display(), m.permissions().mode()));
        }
        if m.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        }
    }
    found
}

#[test]
fn repository_objects_and_caches_are_readable_by_their_owner_only() {
    // SAFETY: umask has no preconditions; 022 is every test's default.
    unsafe { libc::umask(0o022) };
    let t = TestRepo::new(&[]);
    let src = t.path("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/secret-name.txt"), b"x").unwrap();
    t.ok(&["backup", src.to_str().unwrap()]);
    t.backup("stream", b"data", &[]);
    t.ok(&["check", "--read-data"]);
    t.ok(&[
        "key",
        "add",
        "--new-password-file",
        write_pw(&t).to_str().unwrap(),
    ]);
    if !crate::common::on_s3() {
        assert_eq!(open_to_others(&t.repo), Vec::<String>::new());
    }
    let cache = t.path("default-cache");
    assert!(cache.exists(), "the test expects a files cache");
    assert_eq!(open_to_others(&cache), Vec::<String>::new());
}

fn write_pw(t: &TestRepo) -> std::path::PathBuf {
    let p = t.path("new-pw");
    std::fs::write(&p, "another password").unwrap();
    p
}

#[test]
fn a_snapshot_object_that_does_not_read_is_reported_skipped_and_forgettable() {
    let t = TestRepo::new(&[]).without_cache();
    let good = t.backup("s", b"good data", &["--time", "2026-01-01T00:00:00Z"]);
    let bad = t.backup("s", b"newer data", &[]);
    if crate::common::on_s3() {
        return; // the object is damaged in place, on local disk
    }
    std::fs::write(t.repo.join("snapshots").join(&bad), b"junk, not a snapshot").unwrap();
    let short = &bad[..8];
    let out = t.run(&["snapshots"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&good[..8]));
    assert!(
        err.contains(&format!("snapshots/{bad}"))
            && err.contains(&format!("tessera forget {short}")),
        "{err}"
    );
    // `latest` is the newest snapshot that reads.
    assert_eq!(t.dump("latest", "s"), b"good data");
    // check reports it; prune will not guess what it referenced.
    let err = t.fails(&["check"]);
    assert!(err.contains(&format!("snapshots/{bad}")), "{err}");
    let err = t.fails(&["prune"]);
    assert!(err.contains(&format!("tessera forget {short}")), "{err}");
    let err = t.fails(&["forget", "--keep-last", "5", "--prune"]);
    assert!(err.contains("not pruning"), "{err}");
    // Forgotten by its id, it is gone, and everything works again.
    t.ok(&["forget", short]);
    t.ok(&["snapshots"]);
    t.ok(&["prune"]);
    t.ok(&["check", "--read-data"]);
    assert_eq!(t.dump(&good, "s"), b"good data");
    let err = t.fails(&["forget", short]);
    assert!(err.contains(short), "{err}");
}

/// `chown -R` of `dir` (no symlinks followed).
fn chown_all(dir: &std::path::Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid)).unwrap();
    if std::fs::symlink_metadata(dir).unwrap().is_dir() {
        for e in std::fs::read_dir(dir).unwrap() {
            chown_all(&e.unwrap().path(), uid, gid);
        }
    }
}

#[test]
fn a_restore_by_another_user_skips_devices_and_owners_with_one_warning_each() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // needs root to make the device node and to switch users
    }
    let t = TestRepo::new(&[]);
    if crate::common::on_s3() {
        return; // the repository's files are handed to the other user on disk
    }
    let src = t.path("src");
    std::fs::create_dir_all(src.join("dev")).unwrap();
    std::fs::write(src.join("owned-by-4242"), b"data").unwrap();
    std::os::unix::fs::chown(src.join("owned-by-4242"), Some(4242), Some(4242)).unwrap();
    std::fs::write(src.join("plain"), b"plain").unwrap();
    for name in ["null", "zero"] {
        let path = std::ffi::CString::new(src.join("dev").join(name).to_str().unwrap()).unwrap();
        let dev = libc::makedev(1, if name == "null" { 3 } else { 5 });
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(
            unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o666, dev) },
            0
        );
    }
    t.ok(&["backup", src.to_str().unwrap()]);

    // The restoring user: nobody, with its own cache and target.
    let (uid, gid) = (65534, 65534);
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_all(&t.repo, uid, gid);
    let home = t.path("nobody");
    std::fs::create_dir(&home).unwrap();
    chown_all(&home, uid, gid);
    let target = home.join("restored");
    let out = t
        .cmd()
        .env("TESSERA_CACHE_DIR", home.join("cache"))
        .uid(uid)
        .gid(gid)
        .args(["restore", "latest", "--target", target.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let restored = target.join(src.strip_prefix("/").unwrap());
    assert!(
        err.contains("2 device node(s) not restored: creating one needs root")
            && err.contains(&restored.join("dev/").display().to_string()),
        "{err}"
    );
    assert!(
        err.contains("owned by other users or groups now belong to the restoring user"),
        "{err}"
    );
    assert_eq!(
        err.matches("device node").count(),
        1,
        "one warning for all: {err}"
    );
    assert_eq!(std::fs::read(restored.join("plain")).unwrap(), b"plain");
    assert_eq!(
        std::fs::read(restored.join("owned-by-4242")).unwrap(),
        b"data"
    );
    assert!(!restored.join("dev/null").exists());
}
