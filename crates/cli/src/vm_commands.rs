//! `tessera vm …`: VM disk images (library: `tessera-vm`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tessera_core::{Repository, SnapshotEntry};
use tessera_vm::restore::restore_image;
use tessera_vm::serve::{DiskExport, create_overlay, serve};
use tessera_vm::{BackupOptions, DiskSpec, KIND, LiveDisk, LiveOptions, restore_raw};

use crate::args::Global;
use crate::context::open;
use crate::output;
use crate::vm_args::{VmBackupArgs, VmCommand, VmInstantArgs, VmRestoreArgs, VmServeArgs};

pub async fn run(g: &Global, command: VmCommand) -> Result<ExitCode> {
    match command {
        VmCommand::Backup(a) => backup(g, a).await,
        VmCommand::Restore(a) => restore(g, a).await,
        VmCommand::List { json } => list(g, json).await,
        VmCommand::Serve(a) => serve_disk(g, a).await,
        VmCommand::Instant(a) => instant(g, a).await,
    }
}

async fn backup(g: &Global, a: VmBackupArgs) -> Result<ExitCode> {
    let options = BackupOptions {
        vm: a.name.clone(),
        chunk_size: tessera_vm::parse_chunk_size(&a.chunk_size).context("--chunk-size")?,
        config: a.config,
        direct: a.direct,
        full: a.full,
        audit: a.audit,
        compression: match a.compression.as_str() {
            "repo" => None,
            n => Some(n.parse().map_err(|_| {
                anyhow::anyhow!("--compression {n:?}: a zstd level 0..22 or `repo`")
            })?),
        },
        timeout: Duration::try_from(a.timeout).unwrap_or(Duration::from_secs(60)),
        tags: a.tag,
        hostname: a.host,
        ..Default::default()
    };
    let repo = open(g).await?;
    let done = match &a.qmp {
        Some(qmp) => {
            let disks = a
                .disks
                .iter()
                .map(|d| d.parse::<LiveDisk>())
                .collect::<Result<Vec<_>, _>>()?;
            let live = LiveOptions {
                qmp: qmp.clone(),
                guest_agent: a.guest_agent.clone(),
                nbd_socket: a.nbd_socket.clone(),
                fleece_dir: a.fleece_dir.clone(),
                on_frozen: None,
            };
            tessera_vm::backup_live(&repo, disks, options, live).await?
        }
        None => {
            let disks = a
                .disks
                .iter()
                .map(|d| d.parse::<DiskSpec>())
                .collect::<Result<Vec<_>, _>>()?;
            tessera_vm::backup(&repo, disks, options).await?
        }
    };
    for w in &done.warnings {
        eprintln!("tessera: warning: {w}");
    }
    let mut code = ExitCode::SUCCESS;
    for d in done.disks.iter().filter(|d| !d.audit_mismatches.is_empty()) {
        let offsets: Vec<String> = d.audit_mismatches.iter().map(u64::to_string).collect();
        eprintln!(
            "tessera: warning: disk {}: {} chunk(s) changed although the dirty bitmap called them clean (stored as read), at offsets {}",
            d.name,
            d.audit_mismatches.len(),
            offsets.join(", ")
        );
        code = ExitCode::from(3);
    }
    let stats = &done.summary.snapshot.stats;
    if a.json {
        let json = serde_json::json!({
            "snapshot_id": done.summary.id.to_hex(),
            "vm": a.name,
            "disks": done.disks,
            "total_bytes": stats.total_bytes,
            "new_bytes": stats.new_bytes,
            "stored_bytes": stats.stored_bytes,
            "duration_seconds": stats.duration_secs,
        });
        println!("{json}");
    } else if !g.quiet {
        for d in &done.disks {
            let why = d
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default();
            println!(
                "disk {}: {} {}, {} read{why}: {} chunks read, {} reused, {} holes",
                d.name,
                d.format,
                output::bytes(d.size),
                d.mode,
                d.chunks_read,
                d.chunks_reused,
                d.chunks_zero
            );
        }
        println!(
            "snapshot {} saved: {} new of {} ({} stored) in {:.1}s",
            done.summary.id.short(),
            output::bytes(stats.new_bytes),
            output::bytes(stats.total_bytes),
            output::bytes(stats.stored_bytes),
            stats.duration_secs
        );
    }
    Ok(code)
}

/// A VM snapshot by id, prefix or `latest` (the newest VM snapshot).
async fn find_vm_snapshot(repo: &Repository, reference: &str) -> Result<SnapshotEntry> {
    let entry = if reference == "latest" {
        let mut list: Vec<SnapshotEntry> = repo
            .snapshots()
            .await?
            .into_iter()
            .filter(|e| e.snapshot.source_kind == KIND)
            .collect();
        list.sort_by_key(|e| e.snapshot.time);
        match list.pop() {
            Some(e) => e,
            None => bail!("the repository holds no VM snapshot"),
        }
    } else {
        repo.find_snapshot(reference).await?
    };
    tessera_vm::restore::vm_meta(&entry.snapshot)
        .with_context(|| format!("snapshot {}", entry.id.short()))?;
    Ok(entry)
}

async fn restore(g: &Global, a: VmRestoreArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let entry = find_vm_snapshot(&repo, &a.snapshot).await?;
    let map = tessera_vm::restore::disk_map(&repo, &entry.snapshot, &a.disk).await?;
    let started = std::time::Instant::now();
    let size = map.size;
    let report = if a.format == "raw" {
        Some(restore_raw(&repo, &map, &a.target).await?)
    } else {
        Some(restore_image(&repo, &map, &a.target, &a.format).await?)
    };
    let seconds = started.elapsed().as_secs_f64();
    if a.json {
        let json = serde_json::json!({
            "snapshot_id": entry.id.to_hex(),
            "disk": a.disk,
            "target": a.target,
            "format": a.format,
            "size": size,
            "bytes_written": report.as_ref().map(|r| r.bytes_written),
            "hole_bytes": report.as_ref().map(|r| r.hole_bytes),
            "seconds": seconds,
        });
        println!("{json}");
    } else if !g.quiet {
        println!(
            "restored disk {} of snapshot {} to {} ({}, {}) in {seconds:.1}s",
            a.disk,
            entry.id.short(),
            a.target.display(),
            a.format,
            output::bytes(size)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(g: &Global, json: bool) -> Result<ExitCode> {
    let repo = open(g).await?;
    let mut list: Vec<SnapshotEntry> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|e| e.snapshot.source_kind == KIND)
        .collect();
    list.sort_by_key(|e| e.snapshot.time);
    let mut rows = Vec::new();
    for e in &list {
        let meta = tessera_vm::restore::vm_meta(&e.snapshot)?;
        if json {
            rows.push(serde_json::json!({
                "snapshot_id": e.id.to_hex(),
                "time": e.snapshot.time.to_string(),
                "vm": meta.name,
                "host": e.snapshot.hostname,
                "tags": e.snapshot.tags,
                "disks": meta.disks,
                "config": meta.config,
                "total_bytes": e.snapshot.stats.total_bytes,
                "new_bytes": e.snapshot.stats.new_bytes,
            }));
        } else {
            let disks: Vec<String> = meta
                .disks
                .iter()
                .map(|d| {
                    format!(
                        "{} ({} {}, {})",
                        d.name,
                        d.format,
                        output::bytes(d.size),
                        d.mode
                    )
                })
                .collect();
            println!(
                "{}  {}  {}  {}  {} new",
                e.id.short(),
                output::local_time(e.snapshot.time),
                meta.name,
                disks.join(", "),
                output::bytes(e.snapshot.stats.new_bytes)
            );
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    }
    Ok(ExitCode::SUCCESS)
}

async fn export_of(
    g: &Global,
    snapshot: &str,
    disk: &str,
) -> Result<(SnapshotEntry, Arc<DiskExport>)> {
    let repo = open(g).await?;
    let entry = find_vm_snapshot(&repo, snapshot).await?;
    let map = tessera_vm::restore::disk_map(&repo, &entry.snapshot, disk).await?;
    let export = Arc::new(DiskExport::new(
        repo,
        map,
        tokio::runtime::Handle::current(),
    ));
    Ok((entry, export))
}

async fn serve_disk(g: &Global, a: VmServeArgs) -> Result<ExitCode> {
    let (entry, export) = export_of(g, &a.snapshot, &a.disk).await?;
    let (socket, disk, quiet) = (a.socket.clone(), a.disk.clone(), g.quiet);
    let short = entry.id.short();
    tokio::task::spawn_blocking(move || {
        serve(&socket, &disk, export, false, || {
            if !quiet {
                eprintln!(
                    "serving disk {disk} of snapshot {short} read-only at nbd+unix:///{disk}?socket={}",
                    socket.display()
                );
            }
        })
    })
    .await??;
    Ok(ExitCode::SUCCESS)
}

async fn instant(g: &Global, a: VmInstantArgs) -> Result<ExitCode> {
    let (entry, export) = export_of(g, &a.snapshot, &a.disk).await?;
    let socket = a.socket.clone().unwrap_or_else(|| {
        let mut s = a.overlay.clone().into_os_string();
        s.push(".nbd.sock");
        s.into()
    });
    let (overlay, disk, quiet) = (a.overlay.clone(), a.disk.clone(), g.quiet);
    let short = entry.id.short();
    if socket.exists() {
        bail!(
            "{} exists: is another instant restore serving there?",
            socket.display()
        );
    }
    create_overlay(&overlay, &socket, &disk, export.disk_size())?;
    tokio::task::spawn_blocking(move || {
        serve(&socket, &disk, export, true, || {
            if !quiet {
                eprintln!(
                    "{} is ready: start the VM from it and run QMP block-stream; serving disk {disk} of snapshot {short} until the VM lets go",
                    overlay.display()
                );
            }
        })
    })
    .await??;
    Ok(ExitCode::SUCCESS)
}
