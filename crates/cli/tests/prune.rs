//! `prune`: what it frees, what it keeps, and how it treats backups that
//! run (or ran and died) while it works.

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestRepo, assert_success, random_bytes};

/// Small packs and chunks, so a few MiB make many packs.
const SMALL: &[&str] = &["--pack-size", "1", "--chunk-sizes", "64,256,1024"];

fn prune(t: &TestRepo, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["prune", "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&t.ok(&args)).unwrap()
}

fn listing(t: &TestRepo) -> Vec<(std::path::PathBuf, u64)> {
    t.objects("")
        .into_iter()
        .map(|p| {
            let len = p.metadata().unwrap().len();
            (p, len)
        })
        .collect()
}

fn markers(t: &TestRepo) -> usize {
    t.objects("sessions").len()
}

/// A backup reading `first` from a pipe that stays open: it has begun its
/// session (its marker exists) and waits for the rest of its input.
struct Blocked {
    child: Child,
}

impl Blocked {
    fn start(t: &TestRepo, name: &str, first: &[u8]) -> Self {
        let before = markers(t);
        let mut child = t
            .cmd()
            .args(["backup", "--stdin", "--stdin-name", name, "--json"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.as_mut().unwrap().write_all(first).unwrap();
        let started = Instant::now();
        while markers(t) == before {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the backup never created its session marker"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Blocked { child }
    }

    /// Writes the rest, closes the input and waits.
    fn finish(mut self, rest: &[u8]) -> std::process::Output {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(rest).unwrap();
        drop(stdin);
        self.child.wait_with_output().unwrap()
    }
}

fn snapshot_id(out: &std::process::Output) -> String {
    assert_success(out, &["backup (blocked)"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshot_id"].as_str().unwrap().to_string()
}

#[test]
fn prune_frees_what_forget_released_and_keeps_the_rest_intact() {
    let t = TestRepo::new(SMALL);
    let a = random_bytes(6 << 20, 1);
    let mut b = a[..3 << 20].to_vec();
    b.extend_from_slice(&random_bytes(3 << 20, 2));
    let c = random_bytes(2 << 20, 3);
    t.backup("data", &a, &["--tag", "old"]);
    let b_id = t.backup("data", &b, &["--tag", "keep"]);
    let c_id = t.backup("other", &c, &["--tag", "keep"]);

    // Nothing released yet: no round, nothing deleted.
    let r = prune(&t, &[]);
    assert_eq!(r["packs_deleted"], 0, "{r}");
    assert_eq!(r["bytes_to_free"], 0, "{r}");

    t.ok(&["forget", "--keep-tag", "keep", "--group-by", ""]);
    let before = listing(&t);
    let size_before = t.size();
    let dry = prune(&t, &["--dry-run"]);
    assert_eq!(listing(&t), before, "a dry run changed the repository");
    let to_free = dry["bytes_to_free"].as_u64().unwrap();
    assert!(to_free >= 2 << 20, "A's own 3 MiB should go: {dry}");

    let r = prune(&t, &[]);
    assert_eq!(r["round_planned"], 1, "{r}");
    assert_eq!(r["rounds_swept"], serde_json::json!([1]), "{r}");
    assert!(r["packs_deleted"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(
        r["packs_unused"], dry["packs_unused"],
        "dry run and run disagree"
    );
    let freed = size_before - t.size();
    assert!(
        freed >= 2 << 20 && freed + (1 << 20) >= to_free,
        "freed {freed} of the {to_free} announced"
    );
    assert!(t.dump(&b_id, "data") == b, "B damaged by prune");
    assert!(t.dump(&c_id, "other") == c, "C damaged by prune");
    t.ok(&["check", "--read-data"]);
    assert_eq!(markers(&t), 0, "session markers left behind");
    assert!(
        t.objects("gc")
            .iter()
            .all(|p| p.ends_with("0000000001-done")),
        "round objects left: {:?}",
        t.objects("gc")
    );

    // A second prune finds nothing to do.
    let again = prune(&t, &[]);
    assert_eq!(again["packs_deleted"], 0, "{again}");
    assert!(again["round_planned"].is_null(), "{again}");
}

#[test]
fn forget_prune_does_both_and_repacks_mostly_unused_packs() {
    // One pack holds small blobs of both snapshots: forgetting one leaves
    // it mostly unused, so it is repacked.
    let t = TestRepo::new(&["--pack-size", "4", "--chunk-sizes", "64,128,256"]);
    let keep = random_bytes(200 << 10, 10);
    let gone = random_bytes(3 << 20, 11);
    let mut both = keep.clone();
    both.extend_from_slice(&gone);
    t.backup("data", &both, &["--tag", "old"]);
    let keep_id = t.backup("data", &keep, &["--tag", "keep"]);
    let out = t.ok(&[
        "forget",
        "--keep-tag",
        "keep",
        "--group-by",
        "",
        "--prune",
        "--repack-threshold",
        "50",
    ]);
    assert!(out.contains("removed 1"), "{out}");
    assert!(out.contains("freed"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&t.ok(&["stats", "--json"])).unwrap();
    assert!(
        v["stored_bytes"].as_u64().unwrap() < 1 << 20,
        "the forgotten 3 MiB are still stored: {v}"
    );
    assert!(t.dump(&keep_id, "data") == keep);
    t.ok(&["check", "--read-data"]);
}

#[test]
fn a_backup_open_at_planning_holds_deletion_back_and_revives_what_it_reused() {
    let t = TestRepo::new(SMALL);
    let old = random_bytes(4 << 20, 20);
    t.backup("data", &old, &["--tag", "old"]);
    let kept = random_bytes(1 << 20, 21);
    let kept_id = t.backup("kept", &kept, &["--tag", "keep"]);
    // A backup of the same bytes begins, and stalls halfway.
    let writer = Blocked::start(&t, "again", &old[..2 << 20]);
    t.ok(&["forget", "--keep-tag", "keep", "--group-by", ""]);

    let r = prune(&t, &[]);
    assert_eq!(r["round_waiting"], 1, "{r}");
    assert_eq!(r["waiting_for"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["packs_deleted"], 0, "deleted while a backup ran: {r}");

    // A backup that begins after the plan does not reuse condemned packs.
    // (Reusing them, it would store at most its first and last chunk,
    // 1 MiB each, and its 512 KiB of new bytes.)
    let late = random_bytes(512 << 10, 22);
    let mut late_data = old[(1 << 20)..(4 << 20)].to_vec();
    late_data.extend_from_slice(&late);
    let size = t.size();
    let late_id = t.backup("late", &late_data, &[]);
    assert!(
        t.size() - size >= 3 << 20,
        "the late backup reused blobs of condemned packs"
    );

    // The stalled backup ends; it reused the condemned blobs.
    let again_id = snapshot_id(&writer.finish(&old[2 << 20..]));
    let r = prune(&t, &[]);
    assert_eq!(r["rounds_swept"][0], 1, "{r}");
    assert!(r["packs_revived"].as_u64().unwrap() > 0, "{r}");
    assert!(t.dump(&again_id, "again") == old, "revived data damaged");
    assert!(t.dump(&late_id, "late") == late_data);
    assert!(t.dump(&kept_id, "kept") == kept);
    t.ok(&["check", "--read-data"]);
}

#[test]
fn dead_and_overdue_backups_are_expired_by_the_storage_clock() {
    let t = TestRepo::new(SMALL);
    t.backup("data", &random_bytes(2 << 20, 30), &["--tag", "old"]);
    let kept = random_bytes(1 << 20, 31);
    let kept_id = t.backup("kept", &kept, &["--tag", "keep"]);

    // A backup killed mid-way leaves its marker: the round waits for it...
    let mut dead = Blocked::start(&t, "dead", &random_bytes(1 << 20, 32));
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    t.ok(&["forget", "--keep-tag", "keep", "--group-by", ""]);
    let r = prune(&t, &[]);
    assert_eq!(r["round_waiting"], 1, "{r}");
    // (repair index must not rewrite the index under a pending round)
    let err = t.fails(&["repair", "index"]);
    assert!(err.contains("GC round 1 is not finished"), "{err}");
    // ...until its lease runs out.
    std::thread::sleep(Duration::from_millis(1100));
    let r = prune(&t, &["--session-lease", "1s"]);
    assert_eq!(r["sessions_expired"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["rounds_swept"], serde_json::json!([1]), "{r}");
    assert!(r["packs_deleted"].as_u64().unwrap() > 0, "{r}");

    // A live backup overdue when a prune comes is expired: its commit
    // fails cleanly and nothing is damaged.
    let slow = Blocked::start(&t, "slow", &random_bytes(1 << 20, 33));
    t.backup("data", &random_bytes(1 << 20, 34), &["--tag", "old2"]);
    t.ok(&["forget", "--keep-tag", "keep", "--group-by", ""]);
    std::thread::sleep(Duration::from_millis(1100));
    let r = prune(&t, &["--session-lease", "1s"]);
    assert_eq!(r["sessions_expired"].as_array().unwrap().len(), 1, "{r}");
    let out = slow.finish(&random_bytes(1 << 20, 35));
    assert!(!out.status.success(), "an expired session committed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expired by a concurrent prune"), "{err}");

    let list: serde_json::Value = serde_json::from_str(&t.ok(&["snapshots", "--json"])).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "tombstones listed: {list}"
    );
    assert!(t.dump(&kept_id, "kept") == kept);
    t.ok(&["check", "--read-data"]);
    // repair index takes (and closes) a round of its own.
    t.ok(&["repair", "index"]);
    let r = prune(&t, &[]);
    assert!(r["round_waiting"].is_null(), "{r}");
    assert!(t.dump(&kept_id, "kept") == kept);
}

#[test]
fn an_interrupted_backup_closes_its_session_and_a_killed_one_is_named() {
    let t = TestRepo::new(SMALL);
    t.backup("data", &random_bytes(2 << 20, 40), &["--tag", "old"]);
    let kept_id = t.backup("kept", &random_bytes(1 << 20, 41), &["--tag", "keep"]);
    for (signal, code, said) in [
        (libc::SIGINT, 130, "interrupted"),
        (libc::SIGTERM, 143, "terminated"),
    ] {
        let cut = Blocked::start(&t, "cut", &random_bytes(1 << 20, 42));
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(cut.child.id() as i32, signal) }, 0);
        let out = cut.child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(
            err.contains(&format!("tessera: {said}: write session")) && err.contains("closed"),
            "{err}"
        );
        assert_eq!(markers(&t), 0, "the session marker stayed");
    }
    // Nothing to wait for: the prune frees at once.
    t.ok(&["forget", "--keep-tag", "keep", "--group-by", ""]);
    let r = prune(&t, &[]);
    assert!(r["round_waiting"].is_null(), "{r}");
    assert!(r["packs_deleted"].as_u64().unwrap() > 0, "{r}");

    // A backup killed outright (SIGKILL) cannot close its session: prune
    // and repair index name it and say how to expire it.
    let mut dead = Blocked::start(&t, "dead", &random_bytes(1 << 20, 43));
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let marker = t.objects("sessions")[0]
        .file_name()
        .unwrap()
        .to_string_lossy()[..8]
        .to_string();
    t.backup("more", &random_bytes(1 << 20, 44), &["--tag", "old"]);
    t.ok(&["forget", "--keep-tag", "keep", "--group-by", ""]);
    let said = t.ok(&["prune"]);
    assert!(
        said.contains(&marker) && said.contains("prune --session-lease 0s"),
        "{said}"
    );
    let err = t.fails(&["repair", "index"]);
    assert!(err.contains("prune --session-lease 0s"), "{err}");
    let r = prune(&t, &["--session-lease", "0s"]);
    assert_eq!(r["sessions_expired"].as_array().unwrap().len(), 1, "{r}");
    t.ok(&["check", "--read-data"]);
    assert_eq!(t.ok(&["snapshots", "--json"]).matches("\"id\"").count(), 1);
    assert!(t.ok(&["snapshots"]).contains(&kept_id[..8]));
}
