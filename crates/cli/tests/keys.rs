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
