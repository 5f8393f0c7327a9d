//! Full backups of raw and qcow2 images and plain files: restores equal
//! the source, holes stay holes, extents reported zero are not read.

use crate::common::*;

/// An image with data, a zeroed range, unaligned data, data that is all
/// zeros, and never-written space.
fn make_image(path: &std::path::Path, format: &str) {
    create(path, format, "64M");
    qemu_io(
        path,
        format,
        &[
            "write -P 0xab 0 3M",
            "write -z 8M 2M",
            "write -P 0x11 20975616 1M", // 20M + 4K: touches 5 chunks
            "write -P 0 40M 1M",         // stored as data, reads as zeros
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_and_raw_restore_equal_with_holes_kept_and_zero_extents_unread() {
    if !have_qemu() {
        return;
    }
    for format in ["qcow2", "raw"] {
        let r = Repo::new().await;
        let image = r.path(&format!("disk.{format}"));
        make_image(&image, format);
        let done = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
        let d = &done.disks[0];
        assert_eq!(d.format, format);
        assert_eq!(d.mode, "full");
        assert_eq!(d.size, 64 << 20);
        // 12 + 5 + 4 chunks hold data or data-like zeros; the rest the
        // source reported as zero and were not read.
        if format == "qcow2" {
            assert_eq!(d.bytes_read, 21 * K256, "{d:?}");
        } else {
            // A raw file's zeroed range may be a hole or written zeros.
            assert!(
                d.bytes_read >= 21 * K256 && d.bytes_read <= 29 * K256,
                "{d:?}"
            );
        }
        assert_eq!(d.chunks_read, d.reads);
        // The all-zero data chunks became holes: 17 chunks stored.
        assert_eq!(256 - d.chunks_zero, 17, "{d:?}");
        let restored = r.restore_equals(&done, "sda", &image, format).await;
        assert!(
            allocated(&restored) <= 17 * K256,
            "holes were written: {} bytes allocated",
            allocated(&restored)
        );
        // And through qemu-img convert into qcow2.
        let map = tessera_vm::restore::disk_map(&r.repo, &done.summary.snapshot, "sda")
            .await
            .unwrap();
        let q = r.path("restored.qcow2");
        tessera_vm::serve::restore_converted(&r.repo, map.clone(), &q, "qcow2")
            .await
            .unwrap();
        assert_same(&image, format, &q, "qcow2");
        // And written straight into a new qcow2 in pack order: holes
        // stay unallocated there too.
        let q2 = r.path("restored2.qcow2");
        let report = tessera_vm::restore::restore_image(&r.repo, &map, &q2, "qcow2")
            .await
            .unwrap();
        assert_same(&image, format, &q2, "qcow2");
        assert_eq!(report.bytes_written, 17 * K256);
        let alloc = run(std::process::Command::new("qemu-img")
            .args(["map", "--output=json"])
            .arg(&q2));
        let data: u64 = serde_json::from_str::<Vec<serde_json::Value>>(&alloc)
            .unwrap()
            .iter()
            .filter(|e| e["data"] == true)
            .map(|e| e["length"].as_u64().unwrap())
            .sum();
        assert!(data <= 17 * K256, "{data} bytes allocated in the qcow2");
        // No bitmap on raw; one of this repository on qcow2.
        if format == "qcow2" {
            let b = r.bitmaps(&image);
            assert_eq!(b.len(), 1);
            assert!(b[0].name.ends_with(&done.summary.id.to_hex()), "{b:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_disks_and_a_config_file_in_one_snapshot() {
    if !have_qemu() {
        return;
    }
    let r = Repo::new().await;
    let (a, b) = (r.path("a.qcow2"), r.path("b.raw"));
    create(&a, "qcow2", "8M");
    create(&b, "raw", "5M"); // not a multiple of the chunk size
    qemu_io(&a, "qcow2", &["write -P 1 1M 1M"]);
    qemu_io(&b, "raw", &["write -P 2 4M 1M"]);
    let config = r.path("vm1.conf");
    std::fs::write(&config, "memory: 2048\nscsi0: local:vm-1-disk-0\n").unwrap();
    let done = r
        .backup(&[("root", &a), ("data", &b)], |o| {
            o.config = Some(config.clone());
            o.chunk_size = 64 << 10;
        })
        .await
        .unwrap();
    assert_eq!(done.disks.len(), 2);
    r.restore_equals(&done, "root", &a, "qcow2").await;
    r.restore_equals(&done, "data", &b, "raw").await;
    let meta = tessera_vm::restore::vm_meta(&done.summary.snapshot).unwrap();
    assert_eq!(meta.name, "vm1");
    assert_eq!(meta.config.as_deref(), Some("vm1.conf"));
    assert_eq!(meta.disks[1].chunk_size, 64 << 10);
    let e = tessera_vm::restore::disk_map(&r.repo, &done.summary.snapshot, "nope")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("root, data"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reads_a_sparse_file_without_qemu() {
    if !have_qemu() {
        return;
    }
    use std::os::unix::fs::FileExt;
    let r = Repo::new().await;
    let path = r.path("plain.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(32 << 20).unwrap();
    f.write_all_at(&vec![7u8; 300_000], 1 << 20).unwrap();
    f.write_all_at(&[9u8; 10], (32 << 20) - 10).unwrap();
    drop(f);
    let done = r
        .backup(&[("disk", &path)], |o| o.direct = true)
        .await
        .unwrap();
    let d = &done.disks[0];
    assert_eq!(d.format, "raw");
    // SEEK_DATA found the data: only chunks touching it were read
    // (filesystem blocks round it up a little).
    assert!(d.bytes_read <= 4 * K256, "{d:?}");
    r.restore_equals(&done, "disk", &path, "raw").await;
}
