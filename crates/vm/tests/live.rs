//! Live backups through QMP, `qemu-storage-daemon` standing in for the VM
//! (its writable export `guest` is the guest's disk).

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use tessera_core::{Backend, Credential, FaultPlan, FaultyBackend, ObjectStoreBackend, Repository};
use tessera_vm::{LiveDisk, LiveOptions, VmBackup};

use crate::common::*;
use crate::daemon::StorageDaemon;

struct Daemon(StorageDaemon);

impl Daemon {
    fn start(dir: &Path, image: &Path) -> Daemon {
        Daemon(StorageDaemon::start(dir, image, true, false))
    }

    fn guest(&self) -> String {
        self.0.guest()
    }

    /// Writes through the guest's export.
    fn write(&self, commands: &[&str]) {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw"]);
        for c in commands {
            cmd.args(["-c", c]);
        }
        run(cmd.arg(self.guest()));
    }

    fn options(&self) -> LiveOptions {
        LiveOptions {
            qmp: self.0.qmp(),
            nbd_socket: Some(self.0.nbd()),
            ..Default::default()
        }
    }

    fn kill(self) {
        self.0.kill();
    }

    fn stop(self) {
        self.0.stop();
    }

    /// Block nodes, jobs and exports a backup left behind.
    fn leftovers(&self) -> Vec<String> {
        let mut q = tessera_vm::qmp::Qmp::connect(&self.0.qmp(), Duration::from_secs(10)).unwrap();
        let mut left = Vec::new();
        for (cmd, key) in [
            ("query-named-block-nodes", "node-name"),
            ("query-block-jobs", "device"),
            ("query-block-exports", "id"),
        ] {
            let v = q.execute(cmd, serde_json::json!({})).unwrap();
            for e in v.as_array().unwrap() {
                let n = e[key].as_str().unwrap_or_default();
                if n.starts_with("tessera-") {
                    left.push(n.to_string());
                }
            }
        }
        left
    }

    /// The node's bitmaps: (name, recording).
    fn bitmaps(&self) -> Vec<(String, bool)> {
        let mut q = tessera_vm::qmp::Qmp::connect(&self.0.qmp(), Duration::from_secs(10)).unwrap();
        let v = q
            .execute(
                "query-named-block-nodes",
                serde_json::json!({ "flat": true }),
            )
            .unwrap();
        let node = v
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node-name"] == "disk0")
            .unwrap()
            .clone();
        node["dirty-bitmaps"]
            .as_array()
            .map(|b| {
                b.iter()
                    .map(|b| {
                        (
                            b["name"].as_str().unwrap().to_string(),
                            b["recording"] == true,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn live(
    r: &Repo,
    d: &Daemon,
    tweak: impl FnOnce(&mut LiveOptions),
) -> tessera_vm::Result<VmBackup> {
    let mut options = d.options();
    tweak(&mut options);
    let disks = vec![LiveDisk {
        name: "sda".into(),
        node: "disk0".into(),
    }];
    let backup = tessera_vm::BackupOptions {
        vm: "vm1".into(),
        ..Default::default()
    };
    tessera_vm::backup_live(&r.repo, disks, backup, options).await
}

fn have_live() -> bool {
    have_qemu() && have("qemu-storage-daemon")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_backup_is_the_point_in_time_view_while_the_guest_writes() {
    if !have_live() {
        return;
    }
    let r = Repo::new().await;
    let image = r.path("live.qcow2");
    create(&image, "qcow2", "64M");
    qemu_io(
        &image,
        "qcow2",
        &["write -P 0xa1 0 16M", "write -P 0xa2 40M 4M"],
    );
    let t0 = r.path("t0.qcow2");
    std::fs::copy(&image, &t0).unwrap();
    let d = Daemon::start(r.dir.path(), &image);

    // The guest writes from the moment the view is taken (the first
    // write before any read), and goes on while the backup reads.
    let guest = d.guest();
    let writer = Arc::new(std::sync::Mutex::new(None));
    let w = writer.clone();
    let first = live(&r, &d, |o| {
        o.on_frozen = Some(Arc::new(move || {
            let write = |guest: &str, i: usize, at: &str| {
                let c = format!("write -P 0x{:x} {at} 1M", 0xe0 + i);
                run(Command::new("qemu-io")
                    .args(["-f", "raw", "-c", &c])
                    .arg(guest));
            };
            write(&guest, 0, "0");
            let guest = guest.clone();
            *w.lock().unwrap() = Some(std::thread::spawn(move || {
                for (i, at) in ["4M", "8M", "41M", "60M"].iter().enumerate() {
                    write(&guest, i + 1, at);
                }
            }));
        }));
    })
    .await
    .unwrap();
    writer.lock().unwrap().take().unwrap().join().unwrap();
    let meta = tessera_vm::restore::vm_meta(&first.summary.snapshot).unwrap();
    assert!(meta.live);
    assert_eq!(meta.frozen, None);
    assert_eq!(first.disks[0].mode, "full");
    r.restore_equals(&first, "sda", &t0, "qcow2").await;

    // Next: only what the guest wrote is read.
    let second = live(&r, &d, |_| {}).await.unwrap();
    let s = &second.disks[0];
    assert_eq!(s.mode, "bitmap", "{s:?}");
    assert_eq!(s.chunks_read, 20, "{s:?}"); // five 1 MiB writes
    let now = r.path("now.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(d.guest())
        .arg(&now));
    r.restore_equals(&second, "sda", &now, "raw").await;
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    d.stop();
    // The bitmap named after the second snapshot was stored with the image.
    let b = r.bitmaps(&image);
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(b[0].name.ends_with(&second.summary.id.to_hex()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_live_backup_keeps_counting_and_a_killed_daemon_means_a_full_read() {
    if !have_live() {
        return;
    }
    let store: Arc<dyn Backend> = Arc::new(ObjectStoreBackend::memory());
    let faulty = Arc::new(FaultyBackend::new(store.clone(), FaultPlan::default()));
    let r = Repo::on(faulty.clone()).await;
    let image = r.path("live.qcow2");
    create(&image, "qcow2", "64M");
    qemu_io(&image, "qcow2", &["write -P 0xa1 0 8M"]);
    let d = Daemon::start(r.dir.path(), &image);
    let first = live(&r, &d, |_| {}).await.unwrap();
    let base = first.disks[0].bitmap.clone().unwrap();

    // Writes, then a backup whose repository dies mid-way; the guest
    // writes again while it runs.
    d.write(&["write -P 0xb1 0 1M"]);
    faulty.crash_after(1);
    let guest = d.guest();
    let e = live(&r, &d, move |o| {
        o.on_frozen = Some(Arc::new(move || {
            run(Command::new("qemu-io")
                .args(["-f", "raw", "-c", "write -P 0xb2 20M 1M"])
                .arg(&guest));
        }));
    })
    .await
    .unwrap_err();
    assert!(e.to_string().contains("injected crash"), "{e}");
    assert!(d.leftovers().is_empty(), "{:?}", d.leftovers());
    // The previous bitmap records again and holds both rounds of writes.
    assert_eq!(d.bitmaps(), vec![(base.clone(), true)]);

    let repo = Repository::open(store, &Credential::password("pw"))
        .await
        .unwrap();
    let r2 = Repo {
        repo,
        dir: tempfile::tempdir().unwrap(),
    };
    let b = live(&r2, &d, |_| {}).await.unwrap();
    assert_eq!(b.disks[0].mode, "bitmap", "{:?}", b.disks[0]);
    assert_eq!(b.disks[0].chunks_read, 8, "{:?}", b.disks[0]); // 1 MiB at 0 and at 20M
    let now = r2.path("now.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(d.guest())
        .arg(&now));
    r2.restore_equals(&b, "sda", &now, "raw").await;

    // kill -9: the bitmap the daemon held is lost or inconsistent: a full read.
    d.kill();
    let d = Daemon::start(r2.dir.path(), &image);
    let b = live(&r2, &d, |_| {}).await.unwrap();
    let why = b.disks[0].reason.clone().unwrap_or_default();
    assert_eq!(b.disks[0].mode, "full");
    assert!(
        why.contains("inconsistent") || why.contains("no dirty bitmap"),
        "{why}"
    );
    let now = r2.path("now2.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(d.guest())
        .arg(&now));
    r2.restore_equals(&b, "sda", &now, "raw").await;
}

/// The guest agent (the real qemu-ga, run on this host as a stand-in
/// guest with its freeze commands disabled, since freezing here would
/// freeze the host): the backup talks to it and records that the guest was
/// not frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_agent_is_asked_and_its_answer_recorded() {
    if !have_live() || !have("qemu-ga") {
        return;
    }
    let r = Repo::new().await;
    let image = r.path("live.qcow2");
    create(&image, "qcow2", "16M");
    qemu_io(&image, "qcow2", &["write -P 0xa1 0 1M"]);
    let d = Daemon::start(r.dir.path(), &image);
    let qga = r.path("qga.sock");
    let state = r.path("qga-state");
    std::fs::create_dir(&state).unwrap();
    let mut agent = Command::new("qemu-ga")
        .args(["-m", "unix-listen", "-p"])
        .arg(&qga)
        .arg("-t")
        .arg(&state)
        .args([
            "-b",
            "guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,guest-fsfreeze-thaw",
        ])
        .spawn()
        .unwrap();
    crate::daemon::wait_accepting(&qga);
    let q = qga.clone();
    let b = live(&r, &d, move |o| o.guest_agent = Some(q)).await;
    let _ = agent.kill();
    let _ = agent.wait();
    let b = b.unwrap();
    let meta = tessera_vm::restore::vm_meta(&b.summary.snapshot).unwrap();
    assert_eq!(meta.frozen, Some(false));
    d.stop();
    r.restore_equals(&b, "sda", &image, "qcow2").await;
}
