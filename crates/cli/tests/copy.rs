//! `copy` and `init --copy-params-from`: 3-2-1 between repositories.

use crate::common::{PASSWORD, TestRepo, random_bytes};

fn snapshots(t: &TestRepo) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&t.ok(&["snapshots", "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

/// Runs `copy` from `from` to `to`, the target's password from the environment.
fn copy(from: &TestRepo, to: &TestRepo, extra: &[&str]) -> std::process::Output {
    from.cmd()
        .env("TESSERA_TO_PASSWORD", PASSWORD)
        .args(["copy", "--to", to.url.as_str()])
        .args(extra)
        .output()
        .unwrap()
}

/// What restoring snapshot `id` of `t` gives: (relative path, content) of every file.
fn restored(t: &TestRepo, id: &str, out: &str) -> Vec<(String, Vec<u8>)> {
    let dir = t.path(out);
    t.ok(&["restore", id, "--target", dir.to_str().unwrap()]);
    let mut files: Vec<(String, Vec<u8>)> = crate::common::walk(&dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let rel = p.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
            (rel, std::fs::read(&p).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn copy_sends_what_the_target_lacks_and_keeps_snapshots_intact() {
    let src = TestRepo::new(&["--pack-size", "1"]);
    // 32 MiB: a small edit re-stores a few chunks of at most 4 MiB each,
    // far less than half, whatever the chunker key cuts.
    let stream = random_bytes(32 << 20, 21);
    src.backup("db.dump", &stream, &["--tag", "nightly", "--host", "db1"]);
    let tree = src.path("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("sub/a.bin"), random_bytes(1 << 20, 22)).unwrap();
    std::fs::write(tree.join("b.txt"), b"hello\n".repeat(1000)).unwrap();
    std::os::unix::fs::symlink("b.txt", tree.join("link")).unwrap();
    src.ok(&[
        "backup",
        tree.to_str().unwrap(),
        "--time",
        "2026-01-02T03:04:05Z",
    ]);
    let originals = snapshots(&src);

    // A target with its own keys: everything is named anew.
    let plain = TestRepo::new(&[]);
    let out = copy(&src, &plain, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copies = snapshots(&plain);
    assert_eq!(copies.len(), 2);
    for (o, c) in originals.iter().zip(&copies) {
        for field in [
            "time",
            "hostname",
            "username",
            "paths",
            "tags",
            "source_kind",
        ] {
            assert_eq!(o[field], c[field], "{field}");
        }
        assert_ne!(o["tree"], c["tree"], "other keys, other tree ids");
    }
    // Listed oldest first: the tree backup (2026-01-02), then the stream.
    let stream_at = if originals[0]["source_kind"] == "stream" {
        0
    } else {
        1
    };
    let o_fs = originals[1 - stream_at]["id"].as_str().unwrap().to_string();
    let c_fs = copies[1 - stream_at]["id"].as_str().unwrap().to_string();
    assert_eq!(
        plain.dump(copies[stream_at]["id"].as_str().unwrap(), "db.dump"),
        stream
    );
    assert_eq!(restored(&src, &o_fs, "r1"), restored(&plain, &c_fs, "r2"));
    let link = std::fs::read_link(
        plain
            .path("r2")
            .join(tree.strip_prefix("/").unwrap())
            .join("link"),
    );
    assert_eq!(link.unwrap().to_str(), Some("b.txt"));
    plain.ok(&["check", "--read-data"]);

    // Again: nothing to do.
    let size = plain.size();
    let out = copy(&src, &plain, &[]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("copied 0 snapshots, 2 already there"));
    assert_eq!(plain.size(), size);

    // A target sharing the source's parameters keeps tree ids, and a copy
    // after a small change sends little.
    let pass = src.path("password");
    std::fs::write(&pass, PASSWORD).unwrap();
    let twin = TestRepo::new(&[
        "--copy-params-from",
        src.url.as_str(),
        "--from-password-file",
        pass.to_str().unwrap(),
    ]);
    assert!(copy(&src, &twin, &[]).status.success());
    let twins = snapshots(&twin);
    for (o, c) in originals.iter().zip(&twins) {
        assert_eq!(o["tree"], c["tree"], "shared ids: the same trees");
    }
    let mut changed = stream.clone();
    changed[1 << 20..(1 << 20) + 4096].copy_from_slice(&random_bytes(4096, 23));
    let newest = src.backup("db.dump", &changed, &["--tag", "nightly", "--host", "db1"]);
    let before = twin.size();
    assert!(copy(&src, &twin, &["latest"]).status.success());
    let added = twin.size() - before;
    assert!(added < 16 << 20, "a 4 KiB change sent {added} bytes");
    let copied = snapshots(&twin)
        .into_iter()
        .find(|s| {
            s["tree"]
                == snapshots(&src)
                    .iter()
                    .find(|o| o["id"] == newest.as_str())
                    .unwrap()["tree"]
        })
        .expect("the newest snapshot, same tree");
    assert_eq!(
        twin.dump(copied["id"].as_str().unwrap(), "db.dump"),
        changed
    );
    twin.ok(&["check", "--read-data"]);
}

#[test]
fn copy_refuses_a_wrong_target_password_and_the_source_itself() {
    let src = TestRepo::new(&[]);
    src.backup("s", b"data", &[]);
    let other = TestRepo::new(&[]);
    let out = src
        .cmd()
        .env("TESSERA_TO_PASSWORD", "wrong")
        .args(["copy", "--to", other.url.as_str()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(other.url.as_str()) && err.contains("wrong password"),
        "{err}"
    );
    assert!(snapshots(&other).is_empty());
    let out = copy(&src, &src, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("being copied from"));
}
