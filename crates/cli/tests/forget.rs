//! `forget`: retention rules through the binary.

use crate::common::TestRepo;

/// Runs `tessera` with the time zone fixed to UTC (calendar periods).
fn utc(t: &TestRepo, args: &[&str]) -> std::process::Output {
    t.cmd().env("TZ", "UTC").args(args).output().unwrap()
}

fn snapshot_ids(t: &TestRepo) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(&t.ok(&["snapshots", "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn forget_keeps_by_rule_per_group_and_dry_run_removes_nothing() {
    let t = TestRepo::new(&[]);
    // Host a: one backup a day, March 1 to 10; host b: two, one tagged.
    let mut a_ids = Vec::new();
    for day in 1..=10 {
        let time = format!("2026-03-{day:02}T12:00:00Z");
        let data = format!("day {day}\n").repeat(100);
        a_ids.push(t.backup("data", data.as_bytes(), &["--host", "a", "--time", &time]));
    }
    let b_old = t.backup(
        "data",
        b"b old",
        &[
            "--host",
            "b",
            "--time",
            "2025-01-01T00:00:00Z",
            "--tag",
            "keep",
        ],
    );
    let b_new = t.backup(
        "data",
        b"b new",
        &["--host", "b", "--time", "2025-01-02T00:00:00Z"],
    );

    // Dry run: the decisions, nothing removed.
    let args = ["forget", "--keep-daily", "3", "--dry-run", "--json"];
    let out = utc(&t, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let groups: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let groups = groups.as_array().unwrap();
    assert_eq!(groups.len(), 2, "grouped by host and paths");
    assert_eq!(groups[0]["group"]["host"], "a");
    let ids = |side: &str| -> Vec<String> {
        groups[0][side]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids("keep"), [a_ids[9].as_str(), &a_ids[8], &a_ids[7]]);
    assert_eq!(ids("remove").len(), 7);
    assert_eq!(groups[0]["keep"][0]["reasons"][0], "daily");
    assert_eq!(groups[0]["remove"][0]["reasons"][0], "no rule keeps it");
    assert_eq!(
        groups[1]["keep"].as_array().unwrap().len(),
        2,
        "host b keeps its two days"
    );
    assert_eq!(snapshot_ids(&t).len(), 12, "a dry run removes nothing");

    // The human listing says what goes and why.
    let out = utc(
        &t,
        &["forget", "--keep-last", "1", "--dry-run", "--group-by", ""],
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("all snapshots:\n"), "{text}");
    assert!(
        text.contains("would remove") && text.contains("no rule keeps it"),
        "{text}"
    );
    assert!(
        text.ends_with("kept 1 snapshots, would remove 11\n"),
        "{text}"
    );

    // For real: the three newest days of a, b's tagged snapshot and its newest.
    let out = utc(
        &t,
        &[
            "forget",
            "--keep-daily",
            "3",
            "--keep-tag",
            "keep",
            "--host",
            "a",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut left = snapshot_ids(&t);
    left.sort();
    let mut want = vec![
        a_ids[7].clone(),
        a_ids[8].clone(),
        a_ids[9].clone(),
        b_old.clone(),
        b_new,
    ];
    want.sort();
    assert_eq!(left, want, "--host a left host b alone");
    let out = utc(&t, &["forget", "--keep-last", "1", "--keep-tag", "keep"]);
    assert!(out.status.success());
    assert_eq!(
        snapshot_ids(&t).len(),
        3,
        "a's newest, b's newest and b's tagged one"
    );
    assert_eq!(t.dump(&a_ids[9], "data"), "day 10\n".repeat(100).as_bytes());
    assert!(snapshot_ids(&t).contains(&b_old));
}

#[test]
fn forget_refuses_an_empty_policy_and_bad_rules() {
    let t = TestRepo::new(&[]);
    t.backup("data", b"x", &[]);
    let err = t.fails(&["forget"]);
    assert!(err.contains("no keep rule given"), "{err}");
    let err = t.fails(&["forget", "--keep-within", "3 weeks"]);
    assert!(err.contains("units y, m, d, h"), "{err}");
    let err = t.fails(&["forget", "--keep-last", "1", "--group-by", "colour"]);
    assert!(err.contains("host, paths and/or tags"), "{err}");
    assert_eq!(snapshot_ids(&t).len(), 1);
}

#[test]
fn init_quiet_prints_nothing() {
    let t = TestRepo::new(&[]);
    let other = t.path("quiet-repo");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .env("TESSERA_PASSWORD", crate::common::PASSWORD)
        .env_remove("TESSERA_REPO")
        .args(["-r", other.to_str().unwrap(), "-q", "init"])
        .args(["--kdf-memory", "64", "--kdf-iterations", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    assert!(other.join("config").exists());
}
