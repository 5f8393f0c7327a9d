//! Crash safety: SIGKILL a backup at random points, many times.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{TestRepo, random_bytes};

/// xorshift: reproducible "random" kill times.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn sigkill_during_backup_never_damages_the_repository() {
    let t = TestRepo::new(&["--pack-size", "1", "--chunk-sizes", "64,256,1024"]);
    let base = random_bytes(4 << 20, 1);
    let first = t.backup("base", &base, &[]);

    let input = t.path("big");
    std::fs::write(&input, random_bytes(24 << 20, 2)).unwrap();
    let started = Instant::now();
    t.backup_file("big", &input, &[]);
    let full = started.elapsed().as_micros() as u64;

    let iterations = 24;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut completed = 0;
    for i in 0..iterations {
        // Vary the input so each run writes new packs.
        std::fs::write(&input, random_bytes(24 << 20, 100 + i)).unwrap();
        let mut child = t
            .cmd()
            .args(["backup", "--stdin", "--stdin-name", "big", "--quiet"])
            .stdin(std::fs::File::open(&input).unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let delay = next(&mut seed) % (full + full / 4);
        std::thread::sleep(Duration::from_micros(delay));
        let _ = child.kill(); // SIGKILL
        if child.wait().unwrap().success() {
            completed += 1;
        }

        // The repository opens, checks clean and old data restores.
        let args: &[&str] = if i % 6 == 5 {
            &["check", "--read-data"]
        } else {
            &["check"]
        };
        t.ok(args);
        t.ok(&["snapshots"]);
        assert!(
            t.dump(&first, "base") == base,
            "iteration {i}: earlier snapshot damaged"
        );
    }
    assert!(
        completed < iterations,
        "every backup finished before the kill: the test killed nothing"
    );

    // A new backup succeeds and restores.
    let after = random_bytes(3 << 20, 3);
    let id = t.backup("after", &after, &[]);
    assert!(t.dump(&id, "after") == after);
    t.ok(&["check", "--read-data"]);
}
