//! Several hosts back up into one repository while another forgets and
//! prunes in a loop, with random SIGKILLs of both: every snapshot that is
//! listed at the end restores bit for bit and `check --read-data` passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{TestRepo, random_bytes};

const WRITERS: u64 = 3;
const RUN: Duration = Duration::from_secs(30);
/// Short enough that killed writers do not hold deletion back for the
/// whole run, long enough that live ones are rarely expired.
const LEASE: &str = "6s";

/// xorshift, seeded per thread from the run's seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.next() % one_in == 0
    }
}

/// The files writer `w` backs up in iteration `i`: some shared by all
/// writers (so they dedup against each other), some shared with the
/// writer's earlier iterations, some new. Contents come back after
/// `forget --keep-last 3` dropped every snapshot holding them, so backups
/// reuse blobs a prune has just found unused: the race that matters.
fn tree(w: u64, i: u64) -> Vec<(String, Vec<u8>)> {
    let mut files = vec![
        ("shared/a".into(), random_bytes(300 << 10, 1000 + i % 6)),
        ("shared/b".into(), random_bytes(200 << 10, 2000 + i % 2)),
        ("shared/c".into(), b"the same for everyone\n".repeat(1000)),
        (
            format!("own/{w}"),
            random_bytes(400 << 10, 3000 + w * 100 + i / 3),
        ),
        (
            "own/new".into(),
            random_bytes(250 << 10, 4000 + w * 1000 + i),
        ),
        (
            "big".into(),
            random_bytes(1536 << 10, 5000 + w * 10 + i % 5),
        ),
    ];
    files.push(("empty".into(), Vec::new()));
    files
}

/// Writes the tree, leaving files whose content is already right alone
/// (so the files cache sees them unchanged).
fn write_tree(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, data) in files {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() == Some(&data[..]) {
            continue;
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
    }
}

/// Waits for a child, killing it (SIGKILL) after `kill_after` if given.
/// Returns its output, or `None` if it was killed before it ended.
fn run_maybe_killed(mut child: Child, kill_after: Option<Duration>) -> Option<Output> {
    if let Some(after) = kill_after {
        let start = Instant::now();
        while start.elapsed() < after {
            if child.try_wait().unwrap().is_some() {
                return Some(child.wait_with_output().unwrap());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        return if out.status.code().is_none() {
            None
        } else {
            Some(out)
        };
    }
    Some(child.wait_with_output().unwrap())
}

#[derive(Default)]
struct Tally {
    backups_ok: AtomicU64,
    backups_killed: AtomicU64,
    backups_expired: AtomicU64,
    prunes_ok: AtomicU64,
    prunes_killed: AtomicU64,
    packs_deleted: AtomicU64,
}

fn writer(
    t: &TestRepo,
    w: u64,
    seed: u64,
    stop: &AtomicBool,
    tally: &Tally,
    failures: &Mutex<Vec<String>>,
) {
    let mut rng = Rng(seed ^ (w + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let dir = t.path(&format!("host{w}"));
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        write_tree(&dir, &tree(w, i));
        let child = t
            .cmd()
            .env("TESSERA_CACHE_DIR", t.path(&format!("cache{w}")))
            .args(["backup", "--quiet", "--host", &format!("host{w}")])
            .args(["--tag", &format!("w{w}-i{i}")])
            .arg(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let kill = rng
            .chance(4)
            .then(|| Duration::from_millis(rng.next() % 80));
        match run_maybe_killed(child, kill) {
            None => tally.backups_killed.fetch_add(1, Ordering::Relaxed),
            Some(out) if out.status.success() => tally.backups_ok.fetch_add(1, Ordering::Relaxed),
            Some(out) => {
                let err = String::from_utf8_lossy(&out.stderr).to_string();
                if err.contains("expired by a concurrent prune") {
                    tally.backups_expired.fetch_add(1, Ordering::Relaxed)
                } else {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("backup w{w}-i{i}: {err}"));
                    0
                }
            }
        };
        std::thread::sleep(Duration::from_millis(rng.next() % 250));
    }
}

/// Restores the snapshot `snap` (from `snapshots --json`) and compares it
/// with the tree it was taken of. `Err` for a restore that failed.
fn verify(t: &TestRepo, snap: &serde_json::Value, scratch: &str) -> Result<(), String> {
    let id = snap["id"].as_str().unwrap();
    let tag = snap["tags"][0].as_str().unwrap();
    let (w, i) = tag
        .strip_prefix('w')
        .and_then(|x| x.split_once("-i"))
        .unwrap();
    let (w, i): (u64, u64) = (w.parse().unwrap(), i.parse().unwrap());
    let out = t.path(scratch);
    let _ = std::fs::remove_dir_all(&out);
    let restored = t.run(&["restore", "--quiet", id, "--target", out.to_str().unwrap()]);
    if !restored.status.success() {
        return Err(String::from_utf8_lossy(&restored.stderr).to_string());
    }
    let src = t.path(&format!("host{w}"));
    let root = out.join(src.strip_prefix("/").unwrap());
    let expected = tree(w, i);
    let got = files_under(&root);
    assert_eq!(got.len(), expected.len(), "snapshot {tag}: {got:?}");
    for (name, data) in &expected {
        let restored = std::fs::read(root.join(name)).unwrap();
        assert!(&restored == data, "snapshot {tag} ({id}): {name} differs");
    }
    std::fs::remove_dir_all(&out).unwrap();
    Ok(())
}

fn snapshots(t: &TestRepo) -> Vec<serde_json::Value> {
    let list: serde_json::Value = serde_json::from_str(&t.ok(&["snapshots", "--json"])).unwrap();
    list.as_array().unwrap().clone()
}

/// While everything runs: restores random listed snapshots. A restore
/// may fail only because the snapshot was forgotten meanwhile; one that
/// fails while the snapshot is still listed lost data.
fn verifier(
    t: &TestRepo,
    seed: u64,
    stop: &AtomicBool,
    verified: &AtomicU64,
    failures: &Mutex<Vec<String>>,
) {
    let mut rng = Rng(seed ^ 0x7e57);
    while !stop.load(Ordering::Relaxed) {
        let list = snapshots(t);
        if list.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let snap = &list[(rng.next() % list.len() as u64) as usize];
        match verify(t, snap, "verifier") {
            Ok(()) => {
                verified.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                if snapshots(t).iter().any(|s| s["id"] == snap["id"]) {
                    failures.lock().unwrap().push(format!(
                        "listed snapshot {} does not restore: {e}",
                        snap["tags"][0]
                    ));
                }
            }
        }
    }
}

fn pruner(
    t: &TestRepo,
    seed: u64,
    stop: &AtomicBool,
    tally: &Tally,
    failures: &Mutex<Vec<String>>,
) {
    let mut rng = Rng(seed ^ 0x5151);
    while !stop.load(Ordering::Relaxed) {
        let out = t.run(&[
            "forget",
            "--keep-last",
            "3",
            "--group-by",
            "host",
            "--quiet",
        ]);
        if !out.status.success() {
            failures
                .lock()
                .unwrap()
                .push(format!("forget: {}", String::from_utf8_lossy(&out.stderr)));
        }
        let child = t
            .cmd()
            .args([
                "prune",
                "--json",
                "--repack-threshold",
                "30",
                "--session-lease",
                LEASE,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let kill = rng
            .chance(3)
            .then(|| Duration::from_millis(rng.next() % 120));
        match run_maybe_killed(child, kill) {
            None => {
                tally.prunes_killed.fetch_add(1, Ordering::Relaxed);
            }
            Some(out) if out.status.success() => {
                tally.prunes_ok.fetch_add(1, Ordering::Relaxed);
                let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                tally
                    .packs_deleted
                    .fetch_add(r["packs_deleted"].as_u64().unwrap(), Ordering::Relaxed);
            }
            Some(out) => failures
                .lock()
                .unwrap()
                .push(format!("prune: {}", String::from_utf8_lossy(&out.stderr))),
        }
        std::thread::sleep(Duration::from_millis(rng.next() % 300));
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut v = crate::common::walk(dir);
    v.sort();
    v
}

#[test]
fn backups_and_prunes_with_sigkills_lose_nothing_committed() {
    let t = TestRepo::new(&["--pack-size", "1", "--chunk-sizes", "64,128,512"]);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("concurrency test seed {seed:#x}");
    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    let failures = Mutex::new(Vec::new());
    let verified = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| verifier(&t, seed, &stop, &verified, &failures));
        for w in 0..WRITERS {
            let (t, stop, tally, failures) = (&t, &stop, &tally, &failures);
            s.spawn(move || writer(t, w, seed, stop, tally, failures));
        }
        s.spawn(|| pruner(&t, seed, &stop, &tally, &failures));
        std::thread::sleep(RUN);
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "seed {seed:#x}: {failures:#?}");

    // Killed sessions expire; the last round is swept.
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..2 {
        let r: serde_json::Value =
            serde_json::from_str(&t.ok(&["prune", "--json", "--session-lease", "1s"])).unwrap();
        tally
            .packs_deleted
            .fetch_add(r["packs_deleted"].as_u64().unwrap(), Ordering::Relaxed);
        assert!(
            r["round_waiting"].is_null(),
            "seed {seed:#x}: still waiting: {r}"
        );
    }
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    eprintln!("restores verified while running: {}", n(&verified));
    eprintln!(
        "backups: {} ok, {} killed, {} expired; prunes: {} ok, {} killed; packs deleted {}",
        n(&tally.backups_ok),
        n(&tally.backups_killed),
        n(&tally.backups_expired),
        n(&tally.prunes_ok),
        n(&tally.prunes_killed),
        n(&tally.packs_deleted)
    );
    assert!(
        n(&tally.backups_ok) >= WRITERS * 2,
        "too few backups to mean anything"
    );
    assert!(n(&tally.packs_deleted) > 0, "prune never deleted anything");

    assert!(
        n(&verified) > 0,
        "the verifier restored nothing during the run"
    );

    // Every listed snapshot restores exactly the tree it was taken of.
    let list = snapshots(&t);
    assert!(list.len() >= WRITERS as usize, "{list:?}");
    for snap in &list {
        if let Err(e) = verify(&t, snap, "final") {
            panic!(
                "seed {seed:#x}: snapshot {} does not restore: {e}",
                snap["tags"][0]
            );
        }
    }
    t.ok(&["check", "--read-data"]);
}
