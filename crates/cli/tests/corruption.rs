//! Bad input: wrong password, missing slots, unknown versions, flipped bytes.

use std::path::Path;

use crate::common::{TestRepo, flip_byte, random_bytes};

fn object_name(t: &TestRepo, path: &Path) -> String {
    path.strip_prefix(&t.repo)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Offsets spread over a file: start, end and some in between.
fn offsets(len: u64) -> Vec<u64> {
    let mut v = vec![
        0,
        4,
        5,
        8,
        23,
        24,
        len / 3,
        len / 2,
        len - 17,
        len - 5,
        len - 1,
    ];
    v.retain(|o| *o < len);
    v.dedup();
    v
}

/// Flips each offset in turn, runs `args`, expects failure naming the object.
fn expect_detected(t: &TestRepo, file: &Path, args: &[&str]) {
    let original = std::fs::read(file).unwrap();
    let name = object_name(t, file);
    for off in offsets(original.len() as u64) {
        flip_byte(file, off);
        let err = t.fails(args);
        assert!(
            err.contains(&name),
            "flip at {off} of {name}: {args:?} said: {err}"
        );
        std::fs::write(file, &original).unwrap();
    }
    crate::common::assert_success(&t.run(args), args);
}

fn populated() -> (TestRepo, String) {
    let t = TestRepo::new(&["--pack-size", "1"]).without_cache();
    let id = t.backup("s", &random_bytes(3 << 20, 1), &[]);
    (t, id)
}

#[test]
fn flipped_bytes_are_detected_and_named() {
    let (t, id) = populated();
    for pack in t.objects("packs") {
        expect_detected(&t, &pack, &["check", "--read-data"]);
    }
    // A flip inside a blob also stops a restore, naming the pack.
    let pack = t
        .objects("packs")
        .into_iter()
        .max_by_key(|p| p.metadata().unwrap().len())
        .unwrap();
    flip_byte(&pack, 1000);
    let err = t.fails(&["dump", &id, "s"]);
    assert!(err.contains(&object_name(&t, &pack)), "{err}");
    flip_byte(&pack, 1000);

    for index in t.objects("index") {
        expect_detected(&t, &index, &["dump", &id, "s"]);
    }
    for snapshot in t.objects("snapshots") {
        expect_detected(&t, &snapshot, &["snapshots"]);
    }
    for key in t.objects("keys") {
        expect_detected(&t, &key, &["snapshots"]);
    }
    expect_detected(&t, &t.repo.join("config"), &["snapshots"]);
    t.ok(&["check", "--read-data"]);
}

#[test]
fn check_reports_missing_and_truncated_packs() {
    let (t, snap) = populated();
    let packs = t.objects("packs");
    let truncated = &packs[0];
    let bytes = std::fs::read(truncated).unwrap();
    std::fs::write(truncated, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::remove_file(&packs[1]).unwrap();
    let out = t.run(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&object_name(&t, truncated)), "{err}");
    assert!(
        err.contains(&format!("{} is missing", object_name(&t, &packs[1]))),
        "{err}"
    );
    // And what loses data (the stream's blobs, or the root tree when
    // its pack is the damaged one), with its snapshot.
    assert!(
        err.contains(&format!("(snapshots affected: {})", &snap[..8])),
        "{err}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&t.run(&["check", "--json"]).stdout).unwrap();
    assert!(json["errors"].as_array().unwrap().len() >= 2);
}

#[test]
fn wrong_password_missing_slots_unknown_versions() {
    let (t, id) = populated();
    let out = t
        .cmd()
        .env("TESSERA_PASSWORD", "not it")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong password"));

    // A future format version is refused by name, for each object kind.
    for file in [t.repo.join("config"), t.objects("snapshots")[0].clone()] {
        let original = std::fs::read(&file).unwrap();
        let mut future = original.clone();
        future[5] = 2;
        std::fs::write(&file, &future).unwrap();
        let err = t.fails(&["snapshots"]);
        assert!(err.contains("unsupported format version 2"), "{err}");
        assert!(err.contains(&object_name(&t, &file)), "{err}");
        std::fs::write(&file, &original).unwrap();
    }
    let index = t.objects("index")[0].clone();
    let original = std::fs::read(&index).unwrap();
    let mut future = original.clone();
    future[5] = 7;
    std::fs::write(&index, &future).unwrap();
    let err = t.fails(&["dump", &id, "s"]);
    assert!(err.contains("unsupported format version 7"), "{err}");
    std::fs::write(&index, &original).unwrap();

    // No key slots at all.
    for key in t.objects("keys") {
        std::fs::remove_file(key).unwrap();
    }
    let err = t.fails(&["snapshots"]);
    assert!(err.contains("no key slots"), "{err}");

    // No repository at all.
    let empty = t.path("nothing-here");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["-r", empty.to_str().unwrap(), "snapshots"])
        .env("TESSERA_PASSWORD", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no repository at"));
    assert!(!empty.exists(), "opening must not create the directory");
}

/// The packs an index segment lists, as `cat index` prints them.
fn index_packs(t: &TestRepo, segment: &Path) -> Vec<serde_json::Value> {
    let name = segment.file_name().unwrap().to_str().unwrap();
    let v: serde_json::Value = serde_json::from_str(&t.ok(&["cat", "index", name])).unwrap();
    v["packs"].as_array().unwrap().clone()
}

/// The file of the pack with this id.
fn pack_file(t: &TestRepo, id: &str) -> std::path::PathBuf {
    t.objects("packs")
        .into_iter()
        .find(|f| f.file_name().unwrap().to_str() == Some(id))
        .unwrap()
}

/// The tree blobs an index segment lists: (pack file, offset, blob id).
fn tree_blobs(t: &TestRepo, segment: &Path) -> Vec<(std::path::PathBuf, u64, String)> {
    let mut out = Vec::new();
    for p in index_packs(t, segment) {
        for b in p["blobs"].as_array().unwrap() {
            if b["type"] == "Tree" {
                out.push((
                    pack_file(t, p["id"].as_str().unwrap()),
                    b["offset"].as_u64().unwrap(),
                    b["id"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out
}

#[test]
fn check_walks_every_tree_and_names_the_snapshots_a_damage_affects() {
    let t = TestRepo::new(&[]).without_cache();
    let src = t.path("src");
    std::fs::create_dir_all(src.join("a/deep")).unwrap();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("a/deep/f"), b"deep file").unwrap();
    std::fs::write(src.join("b/g"), b"b file").unwrap();
    let backup = |t: &TestRepo| -> String {
        let out = t.ok(&["backup", "--json", src.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        v["short_id"].as_str().unwrap().to_string()
    };
    let first = backup(&t);
    let segments_before = t.objects("index");
    std::fs::create_dir_all(src.join("c")).unwrap();
    std::fs::write(src.join("c/h"), b"new in the second").unwrap();
    let second = backup(&t);
    t.ok(&["check"]);

    // A missing index segment: the second backup's trees dangle. Only the
    // second snapshot is affected, and its root is named.
    let segment = t
        .objects("index")
        .into_iter()
        .find(|s| !segments_before.contains(s))
        .unwrap();
    let kept = std::fs::read(&segment).unwrap();
    std::fs::remove_file(&segment).unwrap();
    let err = t.fails(&["check"]);
    assert!(
        err.contains(&format!(
            "at the root of snapshot {second} is not in the index"
        )) && err.contains(&format!("(snapshots affected: {second})")),
        "{err}"
    );
    assert!(!err.contains(&first), "the first snapshot is intact: {err}");
    std::fs::write(&segment, kept).unwrap();
    t.ok(&["check"]);

    // A damaged subtree shared by both snapshots: named with its path,
    // both snapshots listed.
    // Trees are stored children first: the first one is that of a/deep.
    let trees = tree_blobs(&t, &segments_before[0]);
    let deep = trees.iter().min_by_key(|(_, offset, _)| *offset).unwrap();
    flip_byte(&deep.0, deep.1 + 30);
    let err = t.fails(&["check"]);
    assert!(err.contains(&format!("tree {} at /", deep.2)), "{err}");
    assert!(err.contains("/src/a/deep: "), "{err}");
    assert!(
        err.contains(&format!("snapshots affected: {first}, {second}"))
            || err.contains(&format!("snapshots affected: {second}, {first}")),
        "{err}"
    );
}

#[test]
fn read_data_subsets_partition_the_packs_and_time_boxed_checks_are_recorded() {
    let t = TestRepo::new(&["--pack-size", "1"]).without_cache();
    // 16 MiB in chunks of at most 4 MiB: at least 4 data packs of 1 MiB
    // plus the tree pack, whatever the repository's chunker key cuts.
    t.backup("s", &random_bytes(16 << 20, 7), &[]);
    let packs: Vec<String> = t
        .objects("packs")
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert!(packs.len() >= 5, "{} packs", packs.len());
    let cache = t.path("cache");
    let check = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["--cache-dir", cache.to_str().unwrap(), "check", "--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&t.ok(&all)).unwrap()
    };
    let verified = |v: &serde_json::Value| -> Vec<String> {
        v["packs_verified"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect()
    };
    // Parts 1/3, 2/3 and 3/3 read every pack exactly once.
    let mut seen: Vec<String> = (1..=3)
        .flat_map(|n| verified(&check(&["--read-data-subset", &format!("{n}/3")])))
        .collect();
    seen.sort();
    let mut want = packs.clone();
    want.sort();
    assert_eq!(seen, want);
    // A percentage reads that share, rounded up.
    let half = check(&["--read-data-subset", "50%"]);
    assert_eq!(verified(&half).len(), packs.len().div_ceil(2));
    // A deadline already past reads nothing and says what is left.
    let none = check(&["--max-duration", "0s"]);
    assert!(verified(&none).is_empty());
    assert_eq!(none["packs_not_reached"], packs.len());
    // A damaged pack outside the part read goes unnoticed by that part, and
    // is caught by the part that holds it.
    // A data pack (the biggest): a damaged tree pack fails every part.
    let victim = &t
        .objects("packs")
        .into_iter()
        .max_by_key(|p| p.metadata().unwrap().len())
        .unwrap();
    let name = victim.file_name().unwrap().to_str().unwrap().to_string();
    flip_byte(victim, 100);
    let part_of = (1..=3)
        .find(|n| {
            let args = ["check", "--read-data-subset", &format!("{n}/3")];
            !t.run(&args).status.success()
        })
        .expect("one part reads the damaged pack");
    let other = if part_of == 1 { 2 } else { 1 };
    let out = t.run(&["check", "--read-data-subset", &format!("{other}/3")]);
    assert!(
        out.status.success(),
        "part {other} does not hold {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = t.fails(&["check", "--max-duration", "1h"]);
    assert!(err.contains(&name), "{err}");
    let err = t.fails(&["check", "--read-data-subset", "4/3"]);
    assert!(err.contains("give N/M"), "{err}");
}

#[test]
fn repair_index_rebuilds_lost_and_damaged_segments_from_the_packs() {
    let t = TestRepo::new(&["--pack-size", "1"]).without_cache();
    let a = random_bytes(3 << 20, 11);
    let b = random_bytes(2 << 20, 12);
    let first = t.backup("a", &a, &[]);
    let second = t.backup("b", &b, &[]);
    let segments = t.objects("index");
    assert_eq!(segments.len(), 2);

    // One segment lost, the other damaged: check fails, naming the damage.
    std::fs::remove_file(&segments[0]).unwrap();
    flip_byte(&segments[1], 40);
    let err = t.fails(&["check"]);
    assert!(err.contains(&object_name(&t, &segments[1])), "{err}");

    // A dry run changes nothing.
    let v: serde_json::Value =
        serde_json::from_str(&t.ok(&["repair", "index", "--dry-run", "--json"])).unwrap();
    assert_eq!(v["packs"], t.objects("packs").len());
    assert_eq!(v["damaged_segments"].as_array().unwrap().len(), 1);
    assert!(t.objects("index").contains(&segments[1]));

    let v: serde_json::Value = serde_json::from_str(&t.ok(&["repair", "index", "--json"])).unwrap();
    assert_eq!(
        v["packs_added"],
        t.objects("packs").len(),
        "no segment decoded before"
    );
    assert!(v["unreadable"].as_array().unwrap().is_empty());
    assert!(
        !t.objects("index").contains(&segments[1]),
        "the damaged segment is gone"
    );
    t.ok(&["check", "--read-data"]);
    assert_eq!(t.dump(&first, "a"), a);
    assert_eq!(t.dump(&second, "b"), b);

    // A truncated pack is left out and named; check then names the
    // snapshot that lost blobs.
    let victim = t.objects("packs")[0].clone();
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..100]).unwrap();
    let out = t.run(&["repair", "index"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&object_name(&t, &victim)), "{err}");
    let err = t.fails(&["check"]);
    assert!(
        err.contains("is not in the index") && err.contains("snapshots affected"),
        "{err}"
    );
}

#[test]
fn check_names_the_files_and_snapshots_a_missing_data_pack_affects() {
    let t = TestRepo::new(&["--pack-size", "1"]).without_cache();
    let first = t.backup("big", &random_bytes(3 << 20, 31), &[]);
    let second = t.backup("other", &random_bytes(1 << 20, 32), &[]);
    // The data packs are the ones `cat index` lists with data blobs.
    let data_pack = t
        .objects("index")
        .iter()
        .flat_map(|s| index_packs(&t, s))
        .find(|p| p["blobs"][0]["type"] == "Data")
        .map(|p| p["id"].as_str().unwrap().to_string())
        .unwrap();
    let victim = pack_file(&t, &data_pack);
    std::fs::remove_file(&victim).unwrap();
    let err = t.fails(&["check"]);
    let name = object_name(&t, &victim);
    let line = err
        .lines()
        .find(|l| l.contains(&format!("is in the damaged {name}")))
        .unwrap_or_else(|| panic!("no line names the stream in {name}: {err}"));
    let (snap, stream) = if line.contains("/big") {
        (&first, "/big")
    } else {
        (&second, "/other")
    };
    assert!(line.contains(stream), "{line}");
    assert!(
        line.ends_with(&format!("(snapshots affected: {})", &snap[..8])),
        "{line}"
    );
}

#[test]
fn repair_snapshots_leaves_out_what_was_lost_and_keeps_the_rest() {
    let t = TestRepo::new(&["--pack-size", "1"]).without_cache();
    let src = t.path("src");
    std::fs::create_dir_all(src.join("keep")).unwrap();
    std::fs::write(src.join("keep/small.txt"), b"still here\n").unwrap();
    let kept_big = random_bytes(1 << 20, 41);
    std::fs::write(src.join("keep/big.bin"), &kept_big).unwrap();
    let backup = || -> String {
        let out = t.ok(&["backup", "--json", "--tag", "daily", src.to_str().unwrap()]);
        let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        v["short_id"].as_str().unwrap().to_string()
    };
    let first = backup();
    let segments_before = t.objects("index");
    // The second backup adds one file: its new data packs hold only that file.
    std::fs::create_dir_all(src.join("lose")).unwrap();
    std::fs::write(src.join("lose/gone.bin"), random_bytes(3 << 20, 42)).unwrap();
    let second = backup();
    t.ok(&["repair", "snapshots"]);
    assert_eq!(
        t.ok(&["snapshots", "--json"]).matches("\"id\"").count(),
        2,
        "intact: untouched"
    );

    let segment = t
        .objects("index")
        .into_iter()
        .find(|s| !segments_before.contains(s))
        .unwrap();
    let tree_packs: Vec<_> = tree_blobs(&t, &segment)
        .into_iter()
        .map(|(p, _, _)| p)
        .collect();
    let data_pack = index_packs(&t, &segment)
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .find(|id| !tree_packs.iter().any(|p| p.ends_with(id)))
        .unwrap();
    let victim = pack_file(&t, &data_pack);
    std::fs::remove_file(&victim).unwrap();
    t.ok(&["repair", "index"]);
    t.fails(&["check"]);

    let out = t.run(&["repair", "snapshots", "--forget"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/lose/gone.bin: file left out: some of its data is lost"),
        "{err}"
    );
    assert!(err.contains(&format!("snapshot {second} removed")), "{err}");
    assert!(
        !err.contains(&first),
        "the first snapshot lost nothing: {err}"
    );
    t.ok(&["check"]);
    let v: serde_json::Value = serde_json::from_str(&t.ok(&["snapshots", "--json"])).unwrap();
    let snaps = v.as_array().unwrap();
    assert_eq!(snaps.len(), 2);
    let repaired = snaps
        .iter()
        .find(|s| s["short_id"] != first.as_str())
        .unwrap();
    assert_eq!(repaired["tags"], serde_json::json!(["daily", "repaired"]));
    let dir = t.path("restored");
    let id = repaired["id"].as_str().unwrap();
    t.ok(&["restore", id, "--target", dir.to_str().unwrap()]);
    let base = dir.join(src.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read(base.join("keep/big.bin")).unwrap(), kept_big);
    assert_eq!(
        std::fs::read(base.join("keep/small.txt")).unwrap(),
        b"still here\n"
    );
    assert!(!base.join("lose/gone.bin").exists());
    assert!(base.join("lose").is_dir());
}

#[test]
fn a_restore_goes_on_past_a_damaged_blob_and_repair_leaves_out_what_check_found() {
    let t = TestRepo::new(&["--pack-size", "1"]).without_cache();
    let src = t.path("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    for i in 0..24 {
        std::fs::write(
            src.join(format!("d/f{i:02}")),
            random_bytes(96 << 10, 100 + i),
        )
        .unwrap();
    }
    t.ok(&["backup", src.to_str().unwrap()]);
    // One byte flipped inside one data blob.
    let (pack, offset) = t
        .objects("index")
        .iter()
        .flat_map(|s| index_packs(&t, s))
        .find_map(|p| {
            let b = p["blobs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["type"] == "Data")?;
            Some((
                p["id"].as_str().unwrap().to_string(),
                b["offset"].as_u64().unwrap(),
            ))
        })
        .unwrap();
    let victim = pack_file(&t, &pack);
    flip_byte(&victim, offset + 40);

    let target = t.path("restored");
    let out = t.run(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("could not be restored"), "{err}");
    let damaged: Vec<String> = err
        .lines()
        .filter_map(|l| l.strip_prefix("damaged, not restored: "))
        .map(|l| l.split(": ").next().unwrap().to_string())
        .collect();
    assert!(!damaged.is_empty(), "{err}");
    let restored_of = |name: &str| {
        target
            .join(src.strip_prefix("/").unwrap())
            .join("d")
            .join(name)
    };
    let mut intact = 0;
    for i in 0..24 {
        let name = format!("f{i:02}");
        let path = restored_of(&name);
        if damaged.iter().any(|d| d.ends_with(&format!("/d/{name}"))) {
            assert!(
                !path.exists(),
                "a damaged file was left behind: {}",
                path.display()
            );
        } else {
            assert_eq!(
                std::fs::read(&path).unwrap(),
                std::fs::read(src.join("d").join(&name)).unwrap()
            );
            intact += 1;
        }
    }
    assert!(intact > 0, "nothing but damage: {err}");

    // check --read-data names the pack; repair index --read-data drops the
    // blob; repair snapshots then leaves out the files that needed it.
    let err = t.fails(&["check", "--read-data"]);
    assert!(err.contains(&object_name(&t, &victim)), "{err}");
    let out = t.run(&["repair", "index", "--read-data"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("its bytes do not open"), "{err}");
    let err = t.ok_stderr(&["repair", "snapshots", "--forget"]);
    for d in &damaged {
        let in_snapshot = d.strip_prefix(target.to_str().unwrap()).unwrap();
        assert!(
            err.contains(&format!(
                "{in_snapshot}: file left out: some of its data is lost"
            )),
            "{err}"
        );
    }
    assert!(err.contains("1 snapshots repaired"), "{err}");
    t.ok(&["check", "--read-data"]);
    let again = t.path("again");
    t.ok(&["restore", "latest", "--target", again.to_str().unwrap()]);
}

#[test]
fn a_restore_goes_on_past_a_damaged_tree_and_deletes_nothing_below_it() {
    let t = TestRepo::new(&[]).without_cache();
    let src = t.path("src");
    std::fs::create_dir_all(src.join("a/deep")).unwrap();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("a/deep/f"), b"deep file").unwrap();
    std::fs::write(src.join("a/e"), b"beside deep").unwrap();
    std::fs::write(src.join("b/g"), b"b file").unwrap();
    t.ok(&["backup", src.to_str().unwrap()]);
    // Trees are stored children first: the first one is that of a/deep.
    let trees = tree_blobs(&t, &t.objects("index")[0]);
    let deep = trees.iter().min_by_key(|(_, offset, _)| *offset).unwrap();
    flip_byte(&deep.0, deep.1 + 30);

    let target = t.path("restored");
    let base = target.join(src.strip_prefix("/").unwrap());
    std::fs::create_dir_all(base.join("a/deep")).unwrap();
    std::fs::create_dir_all(base.join("b")).unwrap();
    std::fs::write(base.join("a/deep/mine"), b"not in the snapshot").unwrap();
    std::fs::write(base.join("b/extra"), b"").unwrap();
    let out = t.run(&[
        "restore",
        "latest",
        "--delete",
        "--target",
        target.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    let shown = format!(
        "damaged, not restored: {}/: its entries are not restored (tree {}): ",
        base.join("a/deep").display(),
        deep.2
    );
    assert!(err.contains(&shown), "{err}");
    assert_eq!(std::fs::read(base.join("a/e")).unwrap(), b"beside deep");
    assert_eq!(std::fs::read(base.join("b/g")).unwrap(), b"b file");
    // What the snapshot cannot say it lacks stays; what it does, goes.
    assert!(base.join("a/deep/mine").exists(), "{err}");
    assert!(!base.join("b/extra").exists(), "{err}");
}
