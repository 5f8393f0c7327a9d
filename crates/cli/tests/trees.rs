//! Directory backups through the binary: round trip, ls/find/diff/dump,
//! warnings with exit status 3, and a full disk during restore.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;

use crate::common::{TestRepo, random_bytes};

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout == b"0\n")
        .unwrap_or(false)
}

#[test]
fn directories_round_trip_and_can_be_browsed() {
    let t = TestRepo::new(&[]);
    let src = t.path("src");
    std::fs::create_dir_all(src.join("etc/conf.d")).unwrap();
    std::fs::write(src.join("etc/app.conf"), b"key = value\n").unwrap();
    std::fs::write(src.join("etc/conf.d/big.bin"), random_bytes(3 << 20, 1)).unwrap();
    // A sparse file: data at 1 MiB and at its end, holes elsewhere.
    let sparse = std::fs::File::create(src.join("etc/sparse.img")).unwrap();
    sparse.set_len(8 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    sparse
        .write_all_at(&random_bytes(70_000, 2), 1 << 20)
        .unwrap();
    sparse.write_all_at(b"tail", (8 << 20) - 4).unwrap();
    drop(sparse);
    let cache = t.path("cache");
    let cache = cache.to_str().unwrap();
    let src_s = src.to_str().unwrap();
    let first = t.ok(&["--cache-dir", cache, "backup", src_s, "--json"]);
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(first["files_new"], 3);
    std::fs::write(src.join("etc/new.conf"), b"x").unwrap();
    let second = t.ok(&["--cache-dir", cache, "backup", src_s, "--json"]);
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(
        (
            second["files_new"].as_u64(),
            second["files_unmodified"].as_u64()
        ),
        (Some(1), Some(3))
    );
    let ls = t.ok(&["ls", "latest", &format!("{src_s}/etc"), "--long"]);
    assert!(
        ls.contains("-rw-r--r--") && ls.contains("app.conf") && ls.contains("new.conf"),
        "{ls}"
    );
    let found = t.ok(&["find", "*.conf"]);
    assert_eq!(
        found.lines().filter(|l| l.contains("app.conf")).count(),
        2,
        "{found}"
    );
    let (a, b) = (
        first["short_id"].as_str().unwrap(),
        second["short_id"].as_str().unwrap(),
    );
    let diff = t.ok(&["diff", a, b]);
    assert!(
        diff.contains(&format!("+    {src_s}/etc/new.conf")),
        "{diff}"
    );
    let dumped = t
        .cmd()
        .args(["dump", "latest", &format!("{src_s}/etc/conf.d/big.bin")])
        .output()
        .unwrap();
    assert_eq!(dumped.stdout, random_bytes(3 << 20, 1));
    let dumped = t
        .cmd()
        .args(["dump", "latest", &format!("{src_s}/etc/sparse.img")])
        .output()
        .unwrap();
    assert!(
        dumped.stdout == std::fs::read(src.join("etc/sparse.img")).unwrap(),
        "the sparse file dumps with its holes as zeros"
    );
    // JSON shapes: one object per line.
    let ls = t.ok(&["ls", "latest", &format!("{src_s}/etc"), "--json"]);
    let entries: Vec<serde_json::Value> = ls
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let app = entries
        .iter()
        .find(|e| e["name"] == "app.conf")
        .expect("app.conf listed");
    assert_eq!(app["path"], format!("{src_s}/etc/app.conf"));
    assert_eq!(
        (app["type"].as_str(), app["size"].as_u64()),
        (Some("file"), Some(12))
    );
    assert!(app["mode"].is_u64() && app["uid"].is_u64() && app["mtime"].is_string());
    let dir = entries
        .iter()
        .find(|e| e["name"] == "conf.d")
        .expect("conf.d listed");
    assert_eq!(dir["type"], "dir");
    let found = t.ok(&["find", "sparse.img", "--json"]);
    let hit: serde_json::Value = serde_json::from_str(found.lines().next().unwrap()).unwrap();
    assert_eq!(hit["path"], format!("{src_s}/etc/sparse.img"));
    assert_eq!(hit["size"], 8 << 20);
    assert!(hit["snapshot"].is_string(), "{hit}");
    let out = t.path("out");
    t.ok(&[
        "restore",
        &format!("latest:{src_s}/etc"),
        "--target",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(out.join("app.conf")).unwrap(),
        b"key = value\n"
    );
    assert_eq!(
        std::fs::read(out.join("conf.d/big.bin")).unwrap(),
        random_bytes(3 << 20, 1)
    );
}

#[test]
fn unreadable_files_are_warnings_with_exit_status_3() {
    let t = TestRepo::new(&[]);
    std::fs::set_permissions(t.dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let src = t.path("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("readable"), b"fine").unwrap();
    std::fs::write(src.join("secret"), b"nope").unwrap();
    std::fs::set_permissions(src.join("secret"), std::fs::Permissions::from_mode(0o000)).unwrap();
    let mut cmd = t.cmd();
    cmd.args([
        "--cache-dir",
        t.path("cache").to_str().unwrap(),
        "backup",
        src.to_str().unwrap(),
    ]);
    if is_root() {
        // root reads anything: back up as nobody, who owns the repository.
        let status = std::process::Command::new("chown")
            .args(["-R", "65534:65534"])
            .arg(&t.repo)
            .status()
            .unwrap();
        assert!(status.success());
        cmd.uid(65534).gid(65534);
    }
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("secret") && stderr.contains("ermission denied"),
        "{stderr}"
    );
    assert!(stderr.contains("saved with 1 warning"), "{stderr}");
    let ls = t.ok(&["ls", "latest"]);
    assert!(ls.contains("readable") && !ls.contains("secret"), "{ls}");
    t.ok(&["check", "--read-data"]);
}

#[test]
fn a_full_disk_during_restore_is_a_clear_error() {
    if !is_root() {
        if std::env::var_os("CI").is_some() {
            panic!("CI must run this test as root (it mounts a small tmpfs)");
        }
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let t = TestRepo::new(&[]);
    let src = t.path("src");
    std::fs::create_dir(&src).unwrap();
    // Large enough to be written direct (past the page cache).
    std::fs::write(src.join("big"), random_bytes(12 << 20, 2)).unwrap();
    t.ok(&["backup", src.to_str().unwrap()]);
    let small = t.path("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success(), "mount a 1 MiB tmpfs");
    let out = t.run(&["restore", "latest", "--target", small.to_str().unwrap()]);
    let _ = std::process::Command::new("umount").arg(&small).status();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("No space left on device") && stderr.contains("/big"),
        "{stderr}"
    );
    t.ok(&["check", "--read-data"]);
}

#[test]
fn exclude_file_one_file_system_and_a_missing_path() {
    let t = TestRepo::new(&[]);
    let src = t.path("src");
    std::fs::create_dir_all(src.join("keep")).unwrap();
    std::fs::create_dir_all(src.join("mnt")).unwrap();
    std::fs::write(src.join("keep/a.txt"), b"a").unwrap();
    std::fs::write(src.join("keep/b.tmp"), b"b").unwrap();
    let rules = t.path("rules");
    std::fs::write(&rules, "# temporary files\n*.tmp\n\n").unwrap();
    let src_s = src.to_str().unwrap();
    let missing = t.fails(&["backup", &format!("{src_s}/nope")]);
    assert!(
        missing.contains("nope") && missing.contains("No such file"),
        "{missing}"
    );
    let mounted = is_root()
        && std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(src.join("mnt"))
            .status()
            .unwrap()
            .success();
    if mounted {
        std::fs::write(src.join("mnt/other-fs"), b"x").unwrap();
    } else if std::env::var_os("CI").is_some() {
        panic!("CI must run this test as root (it mounts a small tmpfs)");
    }
    let out = t.run(&[
        "backup",
        src_s,
        "--exclude-file",
        rules.to_str().unwrap(),
        "-x",
    ]);
    if mounted {
        let _ = std::process::Command::new("umount")
            .arg(src.join("mnt"))
            .status();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ls = t.ok(&["ls", "latest", src_s]);
    assert!(ls.contains("keep/a.txt") && !ls.contains("b.tmp"), "{ls}");
    // The mount point is kept, empty.
    assert!(
        ls.contains(&format!("{src_s}/mnt\n")) && !ls.contains("other-fs"),
        "{ls}"
    );
}
