//! Key slots: passwords, key files, refusal to remove the last slot.

use crate::common::{PASSWORD, TestRepo};

/// Runs `args` with environment overrides (`None` removes the variable).
fn run_env(t: &TestRepo, env: &[(&str, Option<&str>)], args: &[&str]) -> std::process::Output {
    let mut c = t.cmd();
    for (k, v) in env {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.args(args).output().unwrap()
}

/// As [`run_env`], asserting success; returns stdout.
fn ok_env(t: &TestRepo, env: &[(&str, Option<&str>)], args: &[&str]) -> Vec<u8> {
    let out = run_env(t, env, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn key_ids(t: &TestRepo, password: &str) -> Vec<(String, bool)> {
    let out = ok_env(
        t,
        &[("TESSERA_PASSWORD", Some(password))],
        &["key", "list", "--json"],
    );
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().to_string(),
                k["current"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn add_remove_passwd_and_key_files() {
    let t = TestRepo::new(&[]);
    let id = t.backup("s", b"payload", &[]);
    let fast = ["--kdf-memory", "64", "--kdf-iterations", "1"];
    let pw = |p: &'static str| ("TESSERA_PASSWORD", Some(p));

    // Removing the only slot is refused, and so is removing the slot in use.
    let only = key_ids(&t, PASSWORD);
    assert_eq!(only.len(), 1);
    let err = t.fails(&["key", "remove", &only[0].0[..8]]);
    assert!(err.contains("last key slot"), "{err}");

    // A second password opens the same repository.
    let mut add = vec!["key", "add"];
    add.extend(fast);
    ok_env(&t, &[("TESSERA_NEW_PASSWORD", Some("second"))], &add);
    assert_eq!(key_ids(&t, "second").len(), 2);
    assert_eq!(ok_env(&t, &[pw("second")], &["dump", &id, "s"]), b"payload");
    let err = t.fails(&["key", "remove", &only[0].0]);
    assert!(err.contains("in use"), "{err}");

    // Opened with the second password, the first slot can go.
    ok_env(&t, &[pw("second")], &["key", "remove", &only[0].0]);
    let err = t.fails(&["snapshots"]);
    assert!(err.contains("wrong password"), "{err}");

    // A key file slot; the file is created 0600 and never overwritten.
    let key_file = t.path("repo.key");
    let key_path = key_file.to_str().unwrap();
    ok_env(
        &t,
        &[pw("second")],
        &["key", "add", "--new-key-file", key_path],
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !run_env(
            &t,
            &[pw("second")],
            &["key", "add", "--new-key-file", key_path]
        )
        .status
        .success()
    );
    let by_key = ok_env(
        &t,
        &[("TESSERA_PASSWORD", None)],
        &["--key-file", key_path, "dump", &id, "s"],
    );
    assert_eq!(by_key, b"payload");

    // passwd replaces the slot in use.
    let mut passwd = vec!["key", "passwd"];
    passwd.extend(fast);
    ok_env(
        &t,
        &[pw("second"), ("TESSERA_NEW_PASSWORD", Some("third"))],
        &passwd,
    );
    assert_eq!(key_ids(&t, "third").len(), 2);
    let old = run_env(&t, &[pw("second")], &["snapshots"]);
    assert!(
        !old.status.success(),
        "the old password must no longer open the repository"
    );
}

#[test]
fn password_sources() {
    let t = TestRepo::new(&[]);
    let file = t.path("pw");
    std::fs::write(&file, format!("{PASSWORD}\nignored second line\n")).unwrap();
    let no_env = [("TESSERA_PASSWORD", None)];
    ok_env(
        &t,
        &no_env,
        &["--password-file", file.to_str().unwrap(), "snapshots"],
    );
    ok_env(
        &t,
        &no_env,
        &[
            "--password-command",
            &format!("echo '{PASSWORD}'"),
            "snapshots",
        ],
    );
    let out = run_env(&t, &no_env, &["snapshots"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no repository password given"));
}

#[test]
fn a_costly_key_slot_is_tried_only_when_named() {
    let t = TestRepo::new(&[]);
    if crate::common::on_s3() {
        return; // the planted slot is written straight into a local repository
    }
    let id = t.backup("s", b"payload", &[]);
    // Planted by anyone who can write to the storage: 4 GiB and 64 passes,
    // under the name every open lists first. Tried, it would take minutes.
    let keys = t.repo.join("keys");
    let real = std::fs::read_dir(&keys)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut slot = tessera_core::KeySlot::decode(&std::fs::read(&real).unwrap(), "k").unwrap();
    slot.kdf.as_mut().unwrap().params = tessera_core::KdfParams {
        m_cost_kib: 4 << 20,
        t_cost: 64,
        p_cost: 4,
    };
    std::fs::write(keys.join("0".repeat(64)), slot.encode()).unwrap();
    assert_eq!(t.dump(&id, "s"), b"payload");

    // A slot its owner made stronger than the default is left out too,
    // with a message that names it and says how to use it.
    let strong = [
        ("TESSERA_NEW_PASSWORD", Some("strong")),
        ("TESSERA_PASSWORD", Some(PASSWORD)),
    ];
    ok_env(&t, &strong, &["key", "add", "--kdf-memory", "131072"]);
    let ids = key_ids(&t, PASSWORD);
    let (strong_id, _) = ids
        .iter()
        .find(|(k, current)| !current && !k.starts_with("0000"))
        .unwrap();
    let as_strong = [("TESSERA_PASSWORD", Some("strong"))];
    let out = run_env(&t, &as_strong, &["dump", &id, "s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "opened without --key-id");
    assert!(
        err.contains(&strong_id[..8]) && err.contains("00000000") && err.contains("--key-id"),
        "{err}"
    );
    let named = ok_env(
        &t,
        &as_strong,
        &["--key-id", &strong_id[..8], "dump", &id, "s"],
    );
    assert_eq!(named, b"payload");
}
