//! Changed-block tracking: only dirty chunks are read, restores stay bit
//! for bit, and every case the bitmap cannot be trusted reads in full.

use std::process::Command;

use crate::common::*;

fn scattered_day(image: &std::path::Path) {
    qemu_io(
        image,
        "qcow2",
        &[
            "write -P 0xc1 1M 4K",
            "write -P 0xc2 30M 64K",
            "write -P 0xc3 67104768 4K",
        ],
    );
}

fn base_image(r: &Repo) -> std::path::PathBuf {
    let image = r.path("disk.qcow2");
    create(&image, "qcow2", "64M");
    qemu_io(
        &image,
        "qcow2",
        &["write -P 0xab 0 8M", "write -P 0x5a 32M 8M"],
    );
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bitmap_reads_only_dirty_chunks_and_restores_bit_for_bit() {
    if !have_qemu() {
        return;
    }
    let r = Repo::new().await;
    let image = base_image(&r);
    let first = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    assert_eq!(first.disks[0].mode, "full");
    assert_eq!(
        first.disks[0].reason.as_deref(),
        Some("no dirty bitmap of this repository on the image yet")
    );
    assert_eq!(first.disks[0].chunks_read, 64);

    scattered_day(&image);
    let second = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    let d = &second.disks[0];
    assert_eq!(d.mode, "bitmap", "{d:?}");
    assert_eq!(d.chunks_read, 3, "{d:?}");
    assert_eq!(d.reads, 3);
    assert_eq!(d.bytes_read, 3 * K256);
    assert_eq!(d.chunks_reused, 63, "{d:?}"); // 64 data chunks, 1 rewritten; 2 new
    assert_eq!(second.summary.snapshot.stats.new_chunks, 3);
    r.restore_equals(&second, "sda", &image, "qcow2").await;

    // Nothing written: nothing read, and one bitmap, named after the
    // newest snapshot.
    let third = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    assert_eq!(third.disks[0].chunks_read, 0);
    let bitmaps = r.bitmaps(&image);
    assert_eq!(bitmaps.len(), 1, "{bitmaps:?}");
    assert!(bitmaps[0].name.ends_with(&third.summary.id.to_hex()));
    r.restore_equals(&third, "sda", &image, "qcow2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrustworthy_bitmaps_mean_a_full_read() {
    if !have_qemu() {
        return;
    }
    let r = Repo::new().await;
    let image = base_image(&r);
    r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    let full = |b: &tessera_vm::VmBackup, why: &str| {
        let d = &b.disks[0];
        assert_eq!(d.mode, "full", "{d:?}");
        assert!(
            d.reason.as_deref().unwrap_or_default().contains(why),
            "{why}: {d:?}"
        );
    };

    // A resized disk (qemu-img keeps the bitmap, calling the new space clean).
    run(Command::new("qemu-img")
        .args(["resize", "-q", "-f", "qcow2"])
        .arg(&image)
        .arg("+8M"));
    qemu_io(&image, "qcow2", &["write -P 0x77 70M 1M"]);
    let b = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    full(&b, "resized");
    r.restore_equals(&b, "sda", &image, "qcow2").await;

    // The snapshot the bitmap is named after was forgotten.
    r.repo.forget_snapshot(b.summary.id).await.unwrap();
    scattered_day(&image);
    let b = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    full(&b, "forgotten");
    r.restore_equals(&b, "sda", &image, "qcow2").await;

    // The bitmap is gone.
    for bm in r.bitmaps(&image) {
        tessera_vm::image::remove_bitmap(&image, &bm.name).unwrap();
    }
    let b = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    full(&b, "no dirty bitmap");

    // QEMU died holding the image: the bitmap is inconsistent.
    if have("qemu-storage-daemon") {
        let dir = r.path("qsd");
        std::fs::create_dir(&dir).unwrap();
        // SIGKILL: QEMU dies holding the image.
        crate::daemon::StorageDaemon::start(&dir, &image, true, false).kill();
        assert!(
            r.bitmaps(&image).iter().any(|b| b.inconsistent()),
            "{:?}",
            r.bitmaps(&image)
        );
        let b = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
        full(&b, "inconsistent");
        r.restore_equals(&b, "sda", &image, "qcow2").await;
        // The broken one was dropped for a fresh one.
        let now = r.bitmaps(&image);
        assert_eq!(now.len(), 1, "{now:?}");
        assert!(!now[0].inconsistent());
    }

    // --full reads everything while a good bitmap exists; the bitmap
    // still moves on.
    scattered_day(&image);
    let b = r
        .backup(&[("sda", &image)], |o| o.full = true)
        .await
        .unwrap();
    full(&b, "full read was asked");
    let b = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    assert_eq!(b.disks[0].mode, "bitmap");
    assert_eq!(b.disks[0].chunks_read, 0);
}

/// A bitmap that lies (a write it did not see): the bitmap backup keeps
/// the stale chunk, `--audit` finds it, names its offset and stores what
/// it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_finds_a_chunk_the_bitmap_called_clean() {
    if !have_qemu() {
        return;
    }
    let r = Repo::new().await;
    let image = base_image(&r);
    let first = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    let name = first.disks[0].bitmap.clone().unwrap();
    // A write the bitmap never hears of.
    tessera_vm::image::remove_bitmap(&image, &name).unwrap();
    qemu_io(&image, "qcow2", &["write -P 0xdd 5M 4K"]);
    tessera_vm::image::add_bitmap(&image, &name).unwrap();

    let trusting = r.backup(&[("sda", &image)], |_| {}).await.unwrap();
    assert_eq!(trusting.disks[0].mode, "bitmap");
    assert_eq!(trusting.disks[0].chunks_read, 0);
    let map = tessera_vm::restore::disk_map(&r.repo, &trusting.summary.snapshot, "sda")
        .await
        .unwrap();
    let stale = r.path("stale.raw");
    tessera_vm::restore_raw(&r.repo, &map, &stale)
        .await
        .unwrap();
    let same = std::process::Command::new("qemu-img")
        .args(["compare", "-q", "-f", "qcow2", "-F", "raw"])
        .arg(&image)
        .arg(&stale)
        .status()
        .unwrap();
    assert!(
        !same.success(),
        "the lying bitmap went unnoticed by the test itself"
    );

    let audited = r
        .backup(&[("sda", &image)], |o| o.audit = true)
        .await
        .unwrap();
    let d = &audited.disks[0];
    assert_eq!(d.mode, "bitmap");
    assert_eq!(d.chunks_audited, 64, "{d:?}");
    assert_eq!(d.audit_mismatches, vec![5 << 20], "{d:?}");
    r.restore_equals(&audited, "sda", &image, "qcow2").await;
}
