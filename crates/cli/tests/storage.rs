//! Storage for real: request counts, the metadata cache, and faults, all
//! against the S3 test server (whatever storage the rest of the suite uses).

use std::path::Path;
use std::process::Output;

use crate::common::{TestRepo, assert_success, on_s3, random_bytes};

/// An S3 repository, or `None` when this suite already runs on S3 (these
/// tests ran in the local pass) or the server is missing outside CI.
fn s3_repo(init_args: &[&str]) -> Option<TestRepo> {
    if on_s3() {
        return None;
    }
    TestRepo::new_s3(init_args)
}

#[derive(Debug, PartialEq, Eq)]
struct Requests {
    put: u64,
    get: u64,
    list: u64,
    delete: u64,
}

/// The counts `--print-requests` printed.
fn requests(out: &Output) -> Requests {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("requests to "))
        .unwrap_or_else(|| panic!("no request counts in: {err}"));
    let counts: Vec<u64> = line
        .split(": ")
        .nth(1)
        .unwrap()
        .split(", ")
        .map(|part| part.split(' ').next().unwrap().parse().unwrap())
        .collect();
    Requests {
        put: counts[0],
        get: counts[1],
        list: counts[2],
        delete: counts[3],
    }
}

fn run(t: &TestRepo, args: &[&str]) -> Output {
    let out = t.run(args);
    assert_success(&out, args);
    out
}

fn tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 50));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n").repeat(20)).unwrap();
    }
}

#[test]
fn an_unchanged_backup_makes_the_same_few_requests_whatever_the_tree_size() {
    let mut seen = Vec::new();
    for files in [40, 4000] {
        let Some(t) = s3_repo(&[]) else { return };
        let src = t.path("src");
        tree(&src, files);
        let src = src.to_str().unwrap();
        run(&t, &["backup", src]);
        let again = requests(&run(&t, &["--print-requests", "backup", src]));
        // The session marker and the snapshot; nothing per file.
        assert_eq!(again.put, 2, "{files} files: {again:?}");
        assert!(
            again.get <= 2 && again.list <= 4,
            "{files} files: {again:?}"
        );
        seen.push(again);

        // With the metadata cache, listing and browsing read nothing but
        // the config and the key slot.
        for args in [&["snapshots"][..], &["ls", "latest"]] {
            let mut all = vec!["--print-requests"];
            all.extend_from_slice(args);
            let r = requests(&run(&t, &all));
            assert!(r.get <= 2 && r.put == 0, "{args:?}: {r:?}");
        }
        // Without it, `ls` reads the index and the trees.
        let r = requests(&run(
            &t,
            &["--no-cache", "--print-requests", "ls", "latest"],
        ));
        assert!(r.get > 2, "{r:?}");
    }
    assert_eq!(seen[0], seen[1], "requests grew with the tree");
}

#[test]
fn backups_and_restores_ride_out_transient_faults() {
    let Some(t) = s3_repo(&["--pack-size", "1"]) else {
        return;
    };
    let src = t.path("src");
    tree(&src, 300);
    std::fs::write(src.join("big"), random_bytes(6 << 20, 5)).unwrap();
    let faulty = |seed: u64| format!("transient=0.1,torn=0.03,seed={seed}");
    let mut backup = t.cmd();
    backup.env("TESSERA_FAULTS", faulty(1)).args([
        "--print-requests",
        "backup",
        src.to_str().unwrap(),
    ]);
    let out = backup.output().unwrap();
    assert_success(&out, &["backup under faults"]);
    let target = t.path("restored");
    let mut restore = t.cmd();
    restore.env("TESSERA_FAULTS", faulty(2)).args([
        "--no-cache",
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_success(&restore.output().unwrap(), &["restore under faults"]);
    let restored = target.join(src.strip_prefix("/").unwrap());
    let files = crate::common::walk(&src);
    assert_eq!(files.len(), 301);
    for f in files {
        let back = restored.join(f.strip_prefix(&src).unwrap());
        assert!(
            std::fs::read(&f).unwrap() == std::fs::read(&back).unwrap(),
            "{} differs",
            back.display()
        );
    }
    run(&t, &["check", "--read-data"]);
}

#[test]
fn a_permanent_failure_mid_backup_fails_clearly_and_loses_nothing() {
    let Some(t) = s3_repo(&["--pack-size", "1"]) else {
        return;
    };
    let first = random_bytes(3 << 20, 1);
    let id = t.backup("first", &first, &[]);
    let input = t.path("second");
    std::fs::write(&input, random_bytes(8 << 20, 2)).unwrap();
    let mut c = t.cmd();
    c.env("TESSERA_FAULTS", "full-after=3")
        .args(["backup", "--stdin", "--stdin-name", "second"])
        .stdin(std::fs::File::open(&input).unwrap());
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a full store must fail the backup");
    assert!(
        err.contains("no storage space") || err.contains("No space left"),
        "{err}"
    );
    assert!(err.contains("packs/"), "names the object: {err}");
    run(&t, &["check", "--read-data"]);
    assert_eq!(t.dump(&id, "first"), first);
    let snapshots = run(&t, &["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&snapshots.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn create_only_credentials_back_up_and_a_prune_that_cannot_delete_stops_cleanly() {
    let Some(t) = s3_repo(&["--pack-size", "1"]) else {
        return;
    };
    let deny = |args: &[&str]| {
        let mut c = t.cmd();
        c.env("TESSERA_FAULTS", "deny-delete").args(args);
        c.output().unwrap()
    };
    let src = t.path("data");
    std::fs::write(&src, random_bytes(3 << 20, 3)).unwrap();
    let src = src.to_str().unwrap();
    for _ in 0..2 {
        assert_success(&deny(&["backup", src]), &["backup, no deletes"]);
    }
    std::fs::write(t.path("data"), random_bytes(3 << 20, 4)).unwrap();
    assert_success(&deny(&["backup", src]), &["backup, no deletes"]);
    // Forgetting and pruning need deletes: with create-only credentials
    // prune stops with a clear error, and the repository stays whole for
    // a prune that may delete.
    run(&t, &["forget", "--keep-last", "1"]);
    let out = deny(&["prune"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("permission denied") && err.contains("index/"),
        "{err}"
    );
    run(&t, &["check", "--read-data"]);
    let report: serde_json::Value = serde_json::from_str(&t.ok(&["prune", "--json"])).unwrap();
    assert!(report["packs_deleted"].as_u64().unwrap() > 0, "{report}");
    run(&t, &["check", "--read-data"]);
}
