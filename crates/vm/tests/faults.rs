//! Failures: the repository dies mid-backup, the NBD server fails reads
//! or stops answering. A clear error naming disk and offset, no snapshot,
//! and the dirty bitmap left usable.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use tessera_core::{Backend, Credential, FaultPlan, FaultyBackend, ObjectStoreBackend, Repository};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_that_dies_midway_commits_nothing_and_keeps_the_bitmap() {
    if !have_qemu() {
        return;
    }
    let store: Arc<dyn Backend> = Arc::new(ObjectStoreBackend::memory());
    let faulty = Arc::new(FaultyBackend::new(store.clone(), FaultPlan::default()));
    let r = Repo::on(faulty.clone()).await;
    let image = r.path("disk.qcow2");
    create(&image, "qcow2", "64M");
    // Incompressible data, so the backup needs several packs.
    let noise: Vec<u8> = {
        let mut v = vec![0u8; 40 << 20];
        blake3::Hasher::new().finalize_xof().fill(&mut v);
        v
    };
    let raw = r.path("noise.raw");
    std::fs::write(&raw, &noise).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&image));
    run(Command::new("qemu-img")
        .args(["resize", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("64M"));
    let first = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    let bitmaps_before = r.bitmaps(&image);

    qemu_io(&image, "qcow2", &["write -P 0x01 0 30M"]);
    faulty.crash_after(2);
    let e = r.backup(&[("sda", &image)], |_| {}).await.unwrap_err();
    assert!(e.to_string().contains("injected crash"), "{e}");
    assert_eq!(
        r.bitmaps(&image),
        bitmaps_before,
        "the bitmap moved without a snapshot"
    );

    // The "restarted process": a new handle on the storage.
    let repo = Repository::open(store, &Credential::password("pw"))
        .await
        .unwrap();
    let ids: Vec<_> = repo
        .snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec![first.summary.id]);
    let r2 = Repo {
        repo,
        dir: tempfile::tempdir().unwrap(),
    };
    let b = r2.backup(&[("sda", &image)], |_| {}).await.unwrap();
    assert_eq!(b.disks[0].mode, "bitmap", "{:?}", b.disks[0]);
    assert_eq!(b.disks[0].chunks_read, 120); // the 30 MiB written
    r2.restore_equals(&b, "sda", &image, "qcow2").await;
    assert!(r2.repo.check(false).await.unwrap().errors.is_empty());
}

struct Nbdkit(Child);

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nbdkit(socket: &Path, args: &[&str]) -> Nbdkit {
    let child = Command::new("nbdkit")
        .args(["-f", "--unix"])
        .arg(socket)
        .args(args)
        .spawn()
        .unwrap();
    crate::daemon::wait_accepting(socket);
    Nbdkit(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbd_read_errors_and_silence_name_disk_and_offset_and_commit_nothing() {
    if !have("nbdkit") {
        return;
    }
    let r = Repo::new().await;
    let sock = r.path("err.sock");
    let _server = nbdkit(
        &sock,
        &[
            "--filter=error",
            "random",
            "16M",
            "error=EIO",
            "error-pread-rate=30%",
        ],
    );
    let url = std::path::PathBuf::from(format!("nbd+unix:///?socket={}", sock.display()));
    let e = r
        .backup(&[("sdb", &url)], |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("disk sdb") && e.contains("at offset") && e.contains("EIO"),
        "{e}"
    );
    assert!(r.repo.snapshots().await.unwrap().is_empty());

    let sock = r.path("slow.sock");
    let _server = nbdkit(&sock, &["--filter=delay", "random", "16M", "rdelay=5"]);
    let url = std::path::PathBuf::from(format!("nbd+unix:///?socket={}", sock.display()));
    let started = std::time::Instant::now();
    let e = r
        .backup(&[("sdc", &url)], |o| o.timeout = Duration::from_secs(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("disk sdc") && e.contains("did not answer in time"),
        "{e}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(r.repo.snapshots().await.unwrap().is_empty());

    // A healthy export reads whole.
    let sock = r.path("ok.sock");
    let _server = nbdkit(&sock, &["random", "3M"]);
    let url = std::path::PathBuf::from(format!("nbd+unix:///?socket={}", sock.display()));
    let b = r.backup(&[("sdd", &url)], |_| {}).await.unwrap();
    assert_eq!(b.disks[0].bytes_read, 3 << 20);
}
