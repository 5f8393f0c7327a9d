//! A snapshot served over NBD: clients read it whole and see its holes.

use std::process::Command;
use std::sync::Arc;

use tessera_vm::nbd::{CONTEXT_ALLOCATION, NbdClient, STATE_HOLE};
use tessera_vm::serve::{DiskExport, serve};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_reads_like_the_image_and_reports_holes() {
    if !have_qemu() {
        return;
    }
    let r = Repo::new().await;
    let image = r.path("disk.qcow2");
    create(&image, "qcow2", "16M");
    qemu_io(
        &image,
        "qcow2",
        &["write -P 0x42 1M 1M", "write -P 0x43 15M 4K"],
    );
    let done = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    let map = tessera_vm::restore::disk_map(&r.repo, &done.summary.snapshot, "sda")
        .await
        .unwrap();
    let export = Arc::new(DiskExport::new(
        r.repo.clone(),
        map,
        tokio::runtime::Handle::current(),
    ));
    let sock = r.path("serve.sock");
    let (tx, rx) = std::sync::mpsc::channel();
    let s = sock.clone();
    std::thread::spawn(move || {
        serve(&s, "sda", export, false, move || tx.send(()).unwrap()).unwrap()
    });
    rx.recv().unwrap();
    let url = format!("nbd+unix:///sda?socket={}", sock.display());
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "qcow2", "-F", "raw"])
        .arg(&image)
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // qemu-img sees the holes through block status.
    let map = run(Command::new("qemu-img")
        .args(["map", "--output=json", "-f", "raw"])
        .arg(&url));
    assert!(map.contains(r#""data": false"#), "{map}");
    // So does this crate's client.
    let sock2 = sock.clone();
    let extents = tokio::task::spawn_blocking(move || {
        let mut c = NbdClient::connect(
            &sock2,
            "sda",
            &[CONTEXT_ALLOCATION],
            std::time::Duration::from_secs(10),
        )
        .unwrap();
        assert!(c.read_only());
        c.block_status(0, c.size(), CONTEXT_ALLOCATION).unwrap()
    })
    .await
    .unwrap();
    let holes: u64 = extents
        .iter()
        .filter(|e| e.flags & STATE_HOLE != 0)
        .map(|e| e.length)
        .sum();
    assert_eq!(holes, (16 << 20) - (1 << 20) - K256);
    // Writes are refused.
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write 0 4K"])
        .arg(&url)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success()
            || text.contains("ermission")
            || text.contains("read-only")
            || text.contains("failed"),
        "{text}"
    );
}

/// Instant restore: a qcow2 overlay backed by the export, a "VM"
/// (qemu-storage-daemon) writing to it while `block-stream` pulls the
/// rest in; the overlay ends standalone, equal to the snapshot plus the
/// writes, and the server exits once the VM lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instant_restore_streams_into_the_overlay() {
    if !have_qemu() || !have("qemu-storage-daemon") {
        return;
    }
    let r = Repo::new().await;
    let image = r.path("disk.qcow2");
    create(&image, "qcow2", "32M");
    qemu_io(
        &image,
        "qcow2",
        &["write -P 0x31 0 6M", "write -P 0x32 20M 2M"],
    );
    let done = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    let map = tessera_vm::restore::disk_map(&r.repo, &done.summary.snapshot, "sda")
        .await
        .unwrap();
    let export = Arc::new(DiskExport::new(
        r.repo.clone(),
        map,
        tokio::runtime::Handle::current(),
    ));
    let sock = r.path("instant.sock");
    let overlay = r.path("overlay.qcow2");
    let (tx, rx) = std::sync::mpsc::channel();
    tessera_vm::serve::create_overlay(&overlay, &sock, "sda", export.disk_size()).unwrap();
    let s = sock.clone();
    let server =
        std::thread::spawn(move || serve(&s, "sda", export, true, move || tx.send(()).unwrap()));
    rx.recv().unwrap();

    let dir = r.path("vm");
    std::fs::create_dir(&dir).unwrap();
    let vm = crate::daemon::StorageDaemon::start(&dir, &overlay, true, false);
    // The VM is up at once: it writes before the data has arrived.
    let guest = vm.guest();
    run(Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x41 1M 64K",
            "-c",
            "write -P 0x42 30M 1M",
        ])
        .arg(&guest));
    let mut q =
        tessera_vm::qmp::Qmp::connect(&vm.qmp(), std::time::Duration::from_secs(10)).unwrap();
    q.execute(
        "block-stream",
        serde_json::json!({ "job-id": "pull", "device": "disk0" }),
    )
    .unwrap();
    for _ in 0..1000 {
        let jobs = q
            .execute("query-block-jobs", serde_json::json!({}))
            .unwrap();
        if jobs.as_array().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    drop(q);
    // The VM let go of the export: the server is done.
    server.join().unwrap().unwrap();
    vm.stop();

    let info = run(Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&overlay));
    assert!(!info.contains("backing-filename"), "{info}");
    qemu_io(
        &image,
        "qcow2",
        &["write -P 0x41 1M 64K", "write -P 0x42 30M 1M"],
    );
    assert_same(&image, "qcow2", &overlay, "qcow2");
}
