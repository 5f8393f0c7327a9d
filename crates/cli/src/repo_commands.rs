//! Commands on a repository as a whole: init, copy, cat, check, repair,
//! key, stats.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use tessera::open_storage;
use tessera_core::check_record::VerifiedLog;
use tessera_core::config::{LockMode, ObjectLock};
use tessera_core::snapshot::SnapshotEntry;
use tessera_core::{
    CheckOptions, ChunkerParams, Credential, InitOptions, KdfParams, ObjectKind, ReadData,
    Repository,
};

use crate::args::{
    CatWhat, CheckArgs, CopyArgs, Global, InitArgs, KeyCommand, LockModeArg, OtherRepo,
    RepairCommand,
};
use crate::context::*;
use crate::credentials;
use crate::output::{self};

pub(crate) async fn init(g: &Global, a: InitArgs) -> Result<ExitCode> {
    let loc = location(g)?;
    let chunker = match (a.chunk_sizes, a.fixed_chunks) {
        (Some((min, avg, max)), _) => ChunkerParams::FastCdc {
            min: min * 1024,
            avg: avg * 1024,
            max: max * 1024,
        },
        (None, Some(size)) => ChunkerParams::Fixed { size: size * 1024 },
        (None, None) => ChunkerParams::default(),
    };
    let options = InitOptions {
        chunker,
        compression_level: a.compression,
        data_pack_size: a
            .pack_size
            .checked_mul(1024 * 1024)
            .context("pack size too large")?,
        kdf: kdf(a.kdf_memory, a.kdf_iterations),
        object_lock: a.object_lock_days.map(|days| ObjectLock {
            days,
            mode: match a.object_lock_mode {
                LockModeArg::Governance => LockMode::Governance,
                LockModeArg::Compliance => LockMode::Compliance,
            },
        }),
        ..InitOptions::default()
    };
    let like = match a.copy_params_from {
        Some(location) => {
            let other = OtherRepo {
                location,
                password_file: a.from_password_file,
                password_command: a.from_password_command,
                key_file: a.from_key_file,
            };
            Some(
                open_other(
                    g,
                    &other,
                    "TESSERA_FROM_PASSWORD",
                    "password of --copy-params-from",
                )
                .await?,
            )
        }
        None => None,
    };
    let credential = credentials::credential(g, true)?;
    let storage = open_storage(loc, true, &storage_options(g, options.object_lock)?)?;
    let backend = storage.backend;
    let repo = match &like {
        Some(like) => Repository::init_sharing_ids(backend, &credential, options, like).await?,
        None => Repository::init(backend, &credential, options).await?,
    };
    if !g.quiet {
        println!(
            "created tessera repository {} at {loc}",
            &repo.config().id[..10]
        );
        println!(
            "Please note that knowledge of your password is required to access the repository."
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn copy(g: &Global, a: CopyArgs) -> Result<ExitCode> {
    let source = open(g).await?;
    let to = OtherRepo {
        location: a.to,
        password_file: a.to_password_file,
        password_command: a.to_password_command,
        key_file: a.to_key_file,
    };
    let target = open_other(
        g,
        &to,
        "TESSERA_TO_PASSWORD",
        "password of the --to repository",
    )
    .await?;
    if source.config().id == target.config().id {
        anyhow::bail!("--to names the repository being copied from");
    }
    let all = source.snapshots().await?;
    let chosen = chosen_snapshots(&all, &a.snapshots)?;
    let existing = target.snapshots().await?;
    let (mut copied, mut skipped) = (0, 0);
    for entry in chosen {
        if existing
            .iter()
            .any(|e| e.snapshot.same_origin(&entry.snapshot))
        {
            skipped += 1;
            if !g.quiet {
                eprintln!("snapshot {} is already in the target", entry.id.short());
            }
            continue;
        }
        let done = source
            .copy_snapshot(&target, entry)
            .await
            .with_context(|| format!("copying snapshot {}", entry.id.short()))?;
        copied += 1;
        if !g.quiet {
            eprintln!(
                "snapshot {} copied as {}: {} new ({} stored)",
                entry.id.short(),
                done.id.short(),
                output::bytes(done.snapshot.stats.new_bytes),
                output::bytes(done.snapshot.stats.stored_bytes)
            );
        }
    }
    if !g.quiet {
        eprintln!("copied {copied} snapshots, {skipped} already there");
    }
    Ok(ExitCode::SUCCESS)
}

/// The snapshots `refs` name (ids, prefixes, `latest`), or all of them.
pub(crate) fn chosen_snapshots<'a>(
    all: &'a [SnapshotEntry],
    refs: &[String],
) -> Result<Vec<&'a SnapshotEntry>> {
    if refs.is_empty() {
        return Ok(all.iter().collect());
    }
    Ok(refs
        .iter()
        .map(|r| tessera_core::snapshot::resolve(all, r))
        .collect::<Result<_, _>>()?)
}

pub(crate) async fn cat(g: &Global, what: CatWhat, id: Option<&str>) -> Result<ExitCode> {
    let repo = open(g).await?;
    let (kind, name) = match what {
        CatWhat::Config => (ObjectKind::Config, String::new()),
        CatWhat::Snapshot => {
            let r = id.context("cat snapshot needs an id, prefix or latest")?;
            (
                ObjectKind::Snapshot,
                repo.find_snapshot(r).await?.id.to_hex(),
            )
        }
        CatWhat::Index => (
            ObjectKind::Index,
            id.context("cat index needs an id")?.to_string(),
        ),
        CatWhat::Key => (
            ObjectKind::Key,
            id.context("cat key needs an id")?.to_string(),
        ),
    };
    let plain = repo.cat_object(kind, &name).await?;
    let text = match kind {
        ObjectKind::Index => {
            let seg = tessera_core::index::IndexSegment::decode(&plain, &name)?;
            let packs: Vec<_> = seg
                .packs
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "id": p.id.to_hex(),
                        "key_id": p.key_id.to_hex(),
                        "blobs": p.blobs.iter().map(|b| serde_json::json!({
                            "id": b.id.to_hex(), "type": b.blob_type, "flags": b.flags,
                            "offset": b.offset, "length": b.stored_len, "uncompressed_length": b.raw_len,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            serde_json::to_string_pretty(&serde_json::json!({ "packs": packs }))?
        }
        ObjectKind::Key => {
            let slot = tessera_core::KeySlot::decode(&plain, &name)?;
            serde_json::to_string_pretty(&slot)?
        }
        _ => {
            let v: serde_json::Value = serde_json::from_slice(&plain)?;
            serde_json::to_string_pretty(&v)?
        }
    };
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn check(g: &Global, a: CheckArgs) -> Result<ExitCode> {
    let repo = open_uncached(g).await?;
    let read_data = match &a.read_data_subset {
        Some(subset) => subset.parse()?,
        None if a.read_data || a.max_duration.is_some() => ReadData::All,
        None => ReadData::None,
    };
    let deadline = a
        .max_duration
        .map(|d| std::time::Instant::now() + d.unsigned_abs());
    let reads = read_data != ReadData::None;
    let options = CheckOptions {
        read_data,
        deadline,
    };
    // The record of verified packs: a time-boxed check reads the packs
    // verified longest ago first.
    let report = match cache_file(g, &repo.config().id, "check.db") {
        Some(path) if reads => {
            let mut log = VerifiedLog::open(&path)?;
            repo.check_with_log(options, &mut log).await?
        }
        _ => repo.check_with(options).await?,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        for w in &report.warnings {
            eprintln!("warning: {w}");
        }
        for e in &report.errors {
            eprintln!("error: {e}");
        }
        eprintln!(
            "checked {} snapshots, {} packs, {} blobs{}: {}",
            report.snapshots,
            report.packs,
            report.blobs,
            if reads {
                format!(
                    " ({} packs, {} blobs and {} of data read)",
                    report.packs_verified.len(),
                    report.blobs_verified,
                    output::bytes(report.bytes_read)
                )
            } else {
                String::new()
            },
            if report.is_ok() {
                "no errors were found".to_string()
            } else {
                format!("{} errors", report.errors.len())
            }
        );
        if report.packs_not_reached > 0 {
            eprintln!(
                "{} selected packs left for the next run (--max-duration reached)",
                report.packs_not_reached
            );
        }
        if let Some(never) = report.packs_never_verified {
            eprintln!("{never} packs have never been verified from this machine");
        }
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub(crate) async fn repair(g: &Global, command: RepairCommand) -> Result<ExitCode> {
    let (dry_run, json, read_data) = match command {
        RepairCommand::Index {
            dry_run,
            json,
            read_data,
        } => (dry_run, json, read_data),
        RepairCommand::Snapshots { forget, snapshots } => {
            return repair_snapshots(g, forget, &snapshots).await;
        }
    };
    let repo = open_uncached(g).await?;
    let r = repo.repair_index_reading(dry_run, read_data).await?;
    if json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        for d in &r.damaged_segments {
            eprintln!("warning: damaged segment replaced: {d}");
        }
        for u in &r.unreadable {
            eprintln!("warning: left out of the index (its blobs are lost): {u}");
        }
        for b in &r.damaged_blobs {
            eprintln!("warning: left out of the index (its bytes do not open): {b}");
        }
        let (wrote, removed) = if dry_run {
            ("would write", "would remove")
        } else {
            ("wrote", "removed")
        };
        eprintln!(
            "{} packs, {} blobs ({} packs newly indexed, {} dropped); {wrote} {} index segments, {removed} {}",
            r.packs,
            r.blobs,
            r.packs_added,
            r.packs_dropped,
            r.segments_written,
            r.segments_removed
        );
    }
    // Unreadable packs: the index is right, but data is lost (as restic, 3).
    Ok(if r.unreadable.is_empty() && r.damaged_blobs.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

pub(crate) async fn repair_snapshots(
    g: &Global,
    forget: bool,
    refs: &[String],
) -> Result<ExitCode> {
    let repo = open_uncached(g).await?;
    let listing = repo.snapshot_listing().await?;
    let all = listing.snapshots;
    let mut repaired = 0;
    // A snapshot object that does not read has nothing to salvage: with
    // --forget it goes (its data then goes with the next prune).
    for d in listing.damaged.iter().filter(|_| refs.is_empty()) {
        if forget {
            if let Ok(id) = d.name.parse() {
                repo.forget_snapshot(id)
                    .await
                    .with_context(|| format!("removing snapshots/{}", d.name))?;
                eprintln!(
                    "snapshots/{} cannot be read ({}): removed",
                    d.name, d.problem
                );
                repaired += 1;
                continue;
            }
        }
        eprintln!(
            "snapshots/{} cannot be read ({}): nothing to salvage; --forget (or `tessera forget`) removes it",
            d.name, d.problem
        );
    }
    for entry in chosen_snapshots(&all, refs)? {
        let short = entry.id.short();
        let Some(r) = repo
            .repair_snapshot(entry)
            .await
            .with_context(|| format!("repairing snapshot {short}"))?
        else {
            continue;
        };
        repaired += 1;
        for path in &r.left_out {
            eprintln!("snapshot {short}: {path}");
        }
        eprintln!(
            "snapshot {short}: {} entries left out, saved as {}",
            r.left_out.len(),
            r.snapshot.id.short()
        );
        if forget {
            repo.forget_snapshot(entry.id)
                .await
                .with_context(|| format!("removing snapshot {short}"))?;
            eprintln!("snapshot {short} removed");
        }
    }
    eprintln!("{repaired} snapshots repaired");
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn kdf(memory: u32, iterations: u32) -> KdfParams {
    KdfParams {
        m_cost_kib: memory,
        t_cost: iterations,
        ..KdfParams::default()
    }
}

pub(crate) async fn key(g: &Global, command: KeyCommand) -> Result<ExitCode> {
    let repo = open(g).await?;
    match command {
        KeyCommand::List(j) => {
            let keys = repo.keys().await?;
            if j.json {
                let out: Vec<_> = keys
                    .iter()
                    .map(|k| {
                        serde_json::json!({
                            "current": k.current, "id": k.id.to_hex(), "short_id": k.id.short(),
                            "kind": k.slot.kind, "userName": k.slot.username, "hostName": k.slot.hostname,
                            "created": k.slot.created.to_string(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string(&out)?);
            } else {
                println!(
                    " {:<10} {:<9} {:<12} {:<16} Created",
                    "ID", "Kind", "User", "Host"
                );
                for k in keys {
                    println!(
                        "{}{:<10} {:<9} {:<12} {:<16} {}",
                        if k.current { "*" } else { " " },
                        k.id.short(),
                        format!("{:?}", k.slot.kind).to_lowercase(),
                        k.slot.username,
                        k.slot.hostname,
                        k.slot.created
                    );
                }
            }
        }
        KeyCommand::Add {
            new_password_file,
            new_key_file,
            kdf_memory,
            kdf_iterations,
        } => {
            let credential = match &new_key_file {
                Some(path) => {
                    let contents = Credential::new_key_file_contents();
                    write_new_secret_file(path, contents.as_bytes())?;
                    Credential::key_file(&contents)?
                }
                None => credentials::new_password(new_password_file.as_deref())?,
            };
            let id = repo
                .add_key(&credential, kdf(kdf_memory, kdf_iterations))
                .await?;
            println!("saved new key slot {}", id.short());
        }
        KeyCommand::Remove { id } => {
            let removed = repo.remove_key(&id).await?;
            println!("removed key slot {}", removed.short());
        }
        KeyCommand::Passwd {
            new_password_file,
            kdf_memory,
            kdf_iterations,
        } => {
            let credential = credentials::new_password(new_password_file.as_deref())?;
            let id = repo
                .change_key(&credential, kdf(kdf_memory, kdf_iterations))
                .await?;
            println!(
                "saved new password in key slot {}; the old slot was removed",
                id.short()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Creates a file only the owner can read; refuses to overwrite.
pub(crate) fn write_new_secret_file(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}

pub(crate) async fn stats(g: &Global, json: bool) -> Result<ExitCode> {
    let repo = open(g).await?;
    let s = repo.stats().await?;
    if json {
        println!("{}", serde_json::to_string(&s)?);
    } else {
        println!("snapshots:        {}", s.snapshots);
        println!("logical size:     {}", output::bytes(s.logical_bytes));
        println!("stored size:      {}", output::bytes(s.stored_bytes));
        println!("dedup ratio:      {:.2}", s.dedup_ratio);
        println!("chunks:           {}", s.chunks);
        println!("packs:            {}", s.packs);
        println!("index segments:   {}", s.index_segments);
        println!(
            "index memory:     {} ({:.1} bytes per chunk)",
            output::bytes(s.index_memory_bytes as u64),
            if s.chunks > 0 {
                s.index_memory_bytes as f64 / s.chunks as f64
            } else {
                0.0
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}
