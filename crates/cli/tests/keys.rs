//! Key slots: passwords, key files, refusal to remove the last slot.

use crate::common::{PASSWORD, TestRepo};

fn key_ids(t: &TestRepo, password: &str) -> Vec<(String, bool)> {
    let out = t
        .cmd()
        .env("TESSERA_PASSWORD", password)
        .args(["key", "list", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
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

    // Removing the only slot is refused, and so is removing the slot in use.
    let only = key_ids(&t, PASSWORD);
    assert_eq!(only.len(), 1);
    let err = t.fails(&["key", "remove", &only[0].0[..8]]);
    assert!(err.contains("last key slot"), "{err}");

    // A second password opens the same repository.
    let out = t
        .cmd()
        .env("TESSERA_NEW_PASSWORD", "second")
        .args(["key", "add"])
        .args(fast)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let both = key_ids(&t, "second");
    assert_eq!(both.len(), 2);
    let out = t
        .cmd()
        .env("TESSERA_PASSWORD", "second")
        .args(["dump", &id, "s"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"payload");
    let err = t.fails(&["key", "remove", &only[0].0]);
    assert!(err.contains("in use"), "{err}");

    // Opened with the second password, the first slot can go.
    let out = t
        .cmd()
        .env("TESSERA_PASSWORD", "second")
        .args(["key", "remove", &only[0].0])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = t.fails(&["snapshots"]);
    assert!(err.contains("wrong password"), "{err}");

    // A key file slot; the file is created 0600 and never overwritten.
    let key_file = t.path("repo.key");
    let out = t
        .cmd()
        .env("TESSERA_PASSWORD", "second")
        .args(["key", "add", "--new-key-file", key_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = t
        .cmd()
        .env_remove("TESSERA_PASSWORD")
        .args(["--key-file", key_file.to_str().unwrap(), "dump", &id, "s"])
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        b"payload",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // passwd replaces the slot in use.
    let out = t
        .cmd()
        .env("TESSERA_PASSWORD", "second")
        .env("TESSERA_NEW_PASSWORD", "third")
        .args(["key", "passwd"])
        .args(fast)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(key_ids(&t, "third").len(), 2);
    let out = t
        .cmd()
        .env("TESSERA_PASSWORD", "second")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the old password must no longer open the repository"
    );
}

#[test]
fn password_sources() {
    let t = TestRepo::new(&[]);
    let file = t.path("pw");
    std::fs::write(&file, format!("{PASSWORD}\nignored second line\n")).unwrap();
    let out = t
        .cmd()
        .env_remove("TESSERA_PASSWORD")
        .args(["--password-file", file.to_str().unwrap(), "snapshots"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t
        .cmd()
        .env_remove("TESSERA_PASSWORD")
        .args([
            "--password-command",
            &format!("echo '{PASSWORD}'"),
            "snapshots",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = t
        .cmd()
        .env_remove("TESSERA_PASSWORD")
        .args(["snapshots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no repository password given"));
}
