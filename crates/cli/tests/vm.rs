//! `tessera vm`: the command line the issue names, against real QEMU
//! images (qemu-img, qemu-io, qemu-nbd).

use std::path::Path;
use std::process::Command;

use crate::common::TestRepo;

fn have_qemu() -> bool {
    let ok = ["qemu-img", "qemu-io", "qemu-nbd"].iter().all(|t| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "QEMU's tools are missing: scripts/test.sh installs qemu-utils"
        );
        eprintln!("skipped: qemu-utils is not installed");
    }
    ok
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn same(a: &Path, fa: &str, b: &Path, fb: &str) {
    sh(Command::new("qemu-img")
        .args(["compare", "-q", "-f", fa, "-F", fb])
        .arg(a)
        .arg(b));
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn vm_backup_list_restore_forget_prune() {
    if !have_qemu() {
        return;
    }
    let t = TestRepo::new(&[]);
    let image = t.path("web.qcow2");
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("32M"));
    sh(Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x61 0 4M",
            "-c",
            "write -P 0x62 20M 1M",
        ])
        .arg(&image));
    let disk = format!("sda={}", image.display());

    let first = json(&t.ok(&["vm", "backup", "--name", "web", "--disk", &disk, "--json"]));
    assert_eq!(first["disks"][0]["name"], "sda");
    assert_eq!(first["disks"][0]["mode"], "full");
    assert_eq!(first["disks"][0]["bytes_read"], 5 << 20);
    let first_id = first["snapshot_id"].as_str().unwrap().to_string();

    sh(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x63 8M 4K"])
        .arg(&image));
    let second = json(&t.ok(&[
        "vm",
        "backup",
        "--name",
        "web",
        "--disk",
        &disk,
        "--chunk-size",
        "256K",
        "--json",
    ]));
    assert_eq!(second["disks"][0]["mode"], "bitmap");
    assert_eq!(second["disks"][0]["bytes_read"], 256 << 10);

    let list = json(&t.ok(&["vm", "list", "--json"]));
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["vm"], "web");
    assert_eq!(list[1]["disks"][0]["mode"], "bitmap");
    assert!(t.ok(&["snapshots"]).contains(&first_id[..8]));

    let raw = t.path("out.raw");
    t.ok(&[
        "vm",
        "restore",
        "latest",
        "--disk",
        "sda",
        "--target",
        raw.to_str().unwrap(),
    ]);
    same(&image, "qcow2", &raw, "raw");
    let q = t.path("out.qcow2");
    t.ok(&[
        "vm",
        "restore",
        "latest",
        "--disk",
        "sda",
        "--target",
        q.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    same(&image, "qcow2", &q, "qcow2");

    // The first snapshot restores on its own (no chain), also after the
    // second is forgotten and pruned.
    let second_id = second["snapshot_id"].as_str().unwrap();
    t.ok(&["forget", &second_id[..8]]).to_string();
    t.ok(&["prune", "--session-lease", "0s"]);
    let old = t.path("old.raw");
    t.ok(&[
        "vm",
        "restore",
        &first_id[..8],
        "--disk",
        "sda",
        "--target",
        old.to_str().unwrap(),
    ]);
    sh(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -z 8M 4K"])
        .arg(&image)); // undo
    same(&image, "qcow2", &old, "raw");
    // ... and the next backup notices its base is gone.
    let third = json(&t.ok(&["vm", "backup", "--name", "web", "--disk", &disk, "--json"]));
    assert_eq!(third["disks"][0]["mode"], "full");
    assert!(
        third["disks"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("forgotten")
    );
}

#[test]
fn vm_usage_errors_name_what_is_wrong() {
    if !have_qemu() {
        return;
    }
    let t = TestRepo::new(&[]);
    let err = t.fails(&["vm", "backup", "--name", "web", "--disk", "sda"]);
    assert!(err.contains("expected NAME=IMAGE"), "{err}");
    let err = t.fails(&[
        "vm",
        "backup",
        "--name",
        "web",
        "--disk",
        "sda=/nonexistent.qcow2",
    ]);
    assert!(
        err.contains("disk sda") && err.contains("/nonexistent.qcow2"),
        "{err}"
    );
    let err = t.fails(&[
        "vm",
        "backup",
        "--name",
        "web",
        "--disk",
        "a=/x",
        "--chunk-size",
        "3M",
    ]);
    assert!(err.contains("power of two"), "{err}");
    let err = t.fails(&[
        "vm", "restore", "latest", "--disk", "sda", "--target", "/tmp/x",
    ]);
    assert!(err.contains("no VM snapshot"), "{err}");
    t.backup("s", b"stream", &[]);
    let err = t.fails(&[
        "vm", "restore", "latest", "--disk", "sda", "--target", "/tmp/x",
    ]);
    assert!(err.contains("no VM snapshot"), "{err}");
    let image = t.path("d.raw");
    std::fs::write(&image, vec![1u8; 70_000]).unwrap();
    t.ok(&[
        "vm",
        "backup",
        "--name",
        "web",
        "--disk",
        &format!("d={}", image.display()),
    ]);
    let err = t.fails(&[
        "vm", "restore", "latest", "--disk", "nope", "--target", "/tmp/x",
    ]);
    assert!(
        err.contains("has no disk \"nope\"") && err.contains("(it has: d)"),
        "{err}"
    );
}

#[test]
fn vm_backup_of_a_running_vm_through_qmp() {
    if !have_qemu() {
        return;
    }
    if Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "qemu-storage-daemon is missing"
        );
        return;
    }
    let t = TestRepo::new(&[]);
    let image = t.path("live.qcow2");
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("16M"));
    sh(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x71 0 2M"])
        .arg(&image));
    let dir = t.path("qsd");
    std::fs::create_dir(&dir).unwrap();
    let qsd = crate::daemon::StorageDaemon::start(&dir, &image, false, false);
    let qmp = qsd.qmp().to_str().unwrap().to_string();
    let args = [
        "vm",
        "backup",
        "--name",
        "live",
        "--qmp",
        &qmp,
        "--disk",
        "sda=disk0",
        "--json",
    ];
    let first = json(&t.ok(&args));
    let second = json(&t.ok(&args));
    let err = t.fails(&[
        "vm",
        "backup",
        "--name",
        "live",
        "--qmp",
        &qmp,
        "--disk",
        "sda=nosuchnode",
    ]);
    drop(qsd);
    assert_eq!(first["disks"][0]["mode"], "full");
    assert_eq!(second["disks"][0]["mode"], "bitmap");
    assert_eq!(second["disks"][0]["bytes_read"], 0);
    assert!(
        err.contains("no block node \"nosuchnode\"") && err.contains("disk0"),
        "{err}"
    );
    let list = json(&t.ok(&["vm", "list", "--json"]));
    assert_eq!(list[0]["vm"], "live");
    let raw = t.path("out.raw");
    t.ok(&[
        "vm",
        "restore",
        "latest",
        "--disk",
        "sda",
        "--target",
        raw.to_str().unwrap(),
    ]);
    same(&image, "qcow2", &raw, "raw");
}

/// `kill -9` of a live backup after its transaction: the next backup
/// cleans up what it left in QEMU, merges its bitmap back into the
/// previous one and reads only what changed; the repository checks clean.
#[test]
fn a_killed_live_backup_is_recovered_by_the_next() {
    if !have_qemu() {
        return;
    }
    if Command::new("qemu-storage-daemon")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "qemu-storage-daemon is missing"
        );
        return;
    }
    let t = TestRepo::new(&[]);
    let image = t.path("live.qcow2");
    sh(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("32M"));
    sh(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x71 0 8M"])
        .arg(&image));
    let dir = t.path("qsd");
    std::fs::create_dir(&dir).unwrap();
    let qsd = crate::daemon::StorageDaemon::start(&dir, &image, true, true);
    let (qmp, nbd) = (
        qsd.qmp().to_str().unwrap().to_string(),
        qsd.nbd().to_str().unwrap().to_string(),
    );
    let guest = format!("nbd+unix:///guest?socket={nbd}");
    let args = [
        "vm",
        "backup",
        "--name",
        "live",
        "--qmp",
        &qmp,
        "--nbd-socket",
        &nbd,
        "--disk",
        "sda=disk0",
        "--json",
    ];
    t.ok(&args);
    sh(Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x72 4M 1M"])
        .arg(&guest));

    // A slow repository keeps the backup going; kill it once its job runs.
    let mut slow = t.cmd();
    slow.args(args).env("TESSERA_FAULTS", "latency=400ms");
    let mut child = slow
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let watch = |cmd: &str| -> serde_json::Value {
        use std::io::{BufRead, BufReader, Write};
        let s = std::os::unix::net::UnixStream::connect(dir.join("watch.sock")).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        writeln!(w, r#"{{"execute":"qmp_capabilities"}}"#).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        let req = if cmd == "query-named-block-nodes" {
            serde_json::json!({ "execute": cmd, "arguments": { "flat": true } })
        } else {
            serde_json::json!({ "execute": cmd })
        };
        writeln!(w, "{req}").unwrap();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            if let Some(ret) = v.get("return") {
                return ret.clone();
            }
        }
    };
    let mut running = false;
    for _ in 0..400 {
        let jobs = watch("query-block-jobs");
        if jobs.as_array().unwrap().iter().any(|j| {
            j["device"]
                .as_str()
                .unwrap_or_default()
                .starts_with("tessera-")
        }) {
            running = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(running, "the backup never reached its transaction");
    child.kill().unwrap();
    child.wait().unwrap();

    let again = json(&t.ok(&args));
    let nodes = watch("query-named-block-nodes");
    drop(qsd);
    assert_eq!(again["disks"][0]["mode"], "bitmap", "{again}");
    assert_eq!(again["disks"][0]["bytes_read"], 1 << 20, "{again}");
    let left: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node-name"].as_str())
        .filter(|n| n.starts_with("tessera-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    t.ok(&["check"]);
    let raw = t.path("out.raw");
    t.ok(&[
        "vm",
        "restore",
        "latest",
        "--disk",
        "sda",
        "--target",
        raw.to_str().unwrap(),
    ]);
    same(&image, "qcow2", &raw, "raw");
}
