//! `tessera mongo …`: MongoDB (library: `tessera-mongo`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tessera_mongo::catalog::{Backup, Catalog, PitrPlan, at_time};
use tessera_mongo::{BackupOptions, FollowEvent, FollowOptions, OpTime, RestoreOptions};

use crate::args::{ForgetArgs, Global};
use crate::context::{forget_all, open, parse_time, prune_repo, removed_by, retention_plans};
use crate::mongo_args::{MongoBackupArgs, MongoCommand, MongoOplogArgs, MongoRestoreArgs};
use crate::output;

pub async fn run(g: &Global, command: MongoCommand) -> Result<ExitCode> {
    match command {
        MongoCommand::Backup(a) => backup(g, a).await,
        MongoCommand::Restore(a) => restore(g, a).await,
        MongoCommand::Oplog(a) => oplog(g, a).await,
        MongoCommand::List { json } => list(g, json).await,
        MongoCommand::Forget(a) => forget(g, &a).await,
    }
}

async fn backup(g: &Global, a: MongoBackupArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let conn = tessera_mongo::connect(&a.uri.uri).await?;
    let quiet = g.quiet || a.json;
    let options = BackupOptions {
        databases: a.databases,
        collections: a.collections,
        chunk_size: a.chunk_size.map(|c| c as usize),
        tags: a.tag,
        hostname: a.host,
        on_collection: (!quiet).then(|| {
            Arc::new(|ns: &str, c: &tessera_mongo::meta::CollectionSummary| {
                eprintln!(
                    "{ns}: {} documents, {}",
                    c.documents,
                    output::bytes(c.bytes)
                );
            }) as tessera_mongo::backup::OnCollection
        }),
    };
    let done = tessera_mongo::backup(&repo, &conn, options).await?;
    let m = &done.meta;
    let collections: usize = m.databases.iter().map(|d| d.collections.len()).sum();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "snapshot_id": done.summary.id.to_hex(),
                "databases": m.databases.len(),
                "collections": collections,
                "documents": m.documents,
                "bytes": m.bytes,
                "oplog_entries": m.oplog_entries,
                "consistent": m.consistent.map(|c| c.to_string()),
                "set_name": m.set_name,
                "new_bytes": done.summary.snapshot.stats.new_bytes,
                "stored_bytes": done.summary.snapshot.stats.stored_bytes,
            })
        );
    } else if !g.quiet {
        let point = match (&m.set_name, m.consistent) {
            (Some(set), Some(c)) => format!(
                "replica set {set}, consistent at {c} ({} oplog entries)",
                m.oplog_entries
            ),
            _ => "standalone server: consistent per collection".into(),
        };
        println!(
            "snapshot {} saved: {} databases, {collections} collections, {} documents, {} of BSON ({} new); {point}",
            done.summary.id.short(),
            m.databases.len(),
            m.documents,
            output::bytes(m.bytes),
            output::bytes(done.summary.snapshot.stats.new_bytes),
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The MongoDB backups, oldest first.
async fn restore(g: &Global, a: MongoRestoreArgs) -> Result<ExitCode> {
    if a.ns_from.len() != a.ns_to.len() {
        bail!("--ns-from and --ns-to come in pairs");
    }
    let repo = open(g).await?;
    let catalog = Catalog::load(&repo).await?;
    let target = match (&a.time, &a.ts) {
        (Some(t), _) => Some(at_time(parse_time(t)?)),
        (None, Some(ts)) => Some(ts.parse::<OpTime>().context("--ts")?),
        (None, None) => None,
    };
    let plan = match (target, a.snapshot.as_str()) {
        (None, "latest") => match catalog.backups.last() {
            Some(b) => whole(b.clone()),
            None => bail!("the repository holds no MongoDB backup"),
        },
        (None, id) => whole(backup_named(&repo, &catalog, id).await?),
        (Some(t), "latest") if a.set.is_none() && catalog.sets().is_empty() => {
            // Standalone servers: the newest backup finished by then.
            match catalog
                .backups
                .iter()
                .rev()
                .find(|b| at_time(b.meta.finished) <= t)
            {
                Some(b) => whole(b.clone()),
                None => bail!("the repository holds no MongoDB backup finished by {t}"),
            }
        }
        (Some(t), "latest") => catalog.plan(&catalog.pick_set(a.set.as_deref())?, t)?,
        (Some(t), id) => catalog.plan_from(backup_named(&repo, &catalog, id).await?, t)?,
    };
    if target.is_some() && plan.target.is_none() && !g.quiet {
        eprintln!(
            "tessera: note: no oplog archive for this backup's replica set: restoring backup {} to its own consistent point{}",
            plan.backup.entry.id.short(),
            plan.backup
                .meta
                .consistent
                .map(|c| format!(" {c}"))
                .unwrap_or_default()
        );
    }
    let entry = plan.backup.entry.clone();
    let conn = tessera_mongo::connect(&a.uri.uri).await?;
    let options = RestoreOptions {
        drop: a.drop,
        include: a.ns_include,
        renames: a.ns_from.into_iter().zip(a.ns_to).collect(),
        no_users: a.no_users,
        no_oplog_replay: a.no_oplog_replay,
    };
    let started = std::time::Instant::now();
    let report = tessera_mongo::restore_to(&repo, &plan, &conn, &options).await?;
    for w in &report.warnings {
        eprintln!("tessera: warning: {w}");
    }
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["snapshot_id"] = entry.id.to_hex().into();
        println!("{v}");
    } else if !g.quiet {
        println!(
            "restored snapshot {} to {}: {} collections, {} views, {} documents, {} indexes, {} users and roles; {} oplog entries replayed{}{} in {:.1}s",
            entry.id.short(),
            conn.name(),
            report.collections,
            report.views,
            report.documents,
            report.indexes,
            report.users,
            report.oplog_applied,
            if report.slices > 0 {
                format!(" ({} archived slices)", report.slices)
            } else {
                String::new()
            },
            report
                .consistent
                .as_ref()
                .map(|c| format!(" (consistent at {c})"))
                .unwrap_or_default(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(g: &Global, json: bool) -> Result<ExitCode> {
    let repo = open(g).await?;
    let catalog = Catalog::load(&repo).await?;
    if json {
        let backups: Vec<serde_json::Value> = catalog
            .backups
            .iter()
            .map(|b| {
                let (e, m) = (&b.entry, &b.meta);
                serde_json::json!({
                    "snapshot_id": e.id.to_hex(),
                    "time": e.snapshot.time.to_string(),
                    "host": e.snapshot.hostname,
                    "tags": e.snapshot.tags,
                    "hosts": m.hosts,
                    "set_name": m.set_name,
                    "start": m.start.map(|c| c.to_string()),
                    "consistent": m.consistent.map(|c| c.to_string()),
                    "finished": m.finished.to_string(),
                    "databases": m.databases,
                    "documents": m.documents,
                    "bytes": m.bytes,
                    "new_bytes": e.snapshot.stats.new_bytes,
                })
            })
            .collect();
        let oplog: Vec<serde_json::Value> = catalog
            .sets()
            .iter()
            .filter(|set| catalog.slices_of(set).next().is_some())
            .map(|set| {
                let ranges: Vec<serde_json::Value> = catalog
                    .ranges(set)
                    .iter()
                    .map(|r| serde_json::json!({"from": r.from.to_string(), "to": r.to.to_string(), "slices": r.slices}))
                    .collect();
                let gaps: Vec<serde_json::Value> = catalog
                    .gaps(set)
                    .iter()
                    .map(|g| serde_json::json!({"last_archived": g.last_archived.to_string(), "first_available": g.first_available.to_string()}))
                    .collect();
                serde_json::json!({
                    "set_name": set,
                    "slices": catalog.slices_of(set).count(),
                    "entries": catalog.slices_of(set).map(|s| s.meta.entries).sum::<u64>(),
                    "ranges": ranges,
                    "gaps": gaps,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"backups": backups, "oplog": oplog})
        );
        return Ok(ExitCode::SUCCESS);
    }
    for b in &catalog.backups {
        let (e, m) = (&b.entry, &b.meta);
        let collections: usize = m.databases.iter().map(|d| d.collections.len()).sum();
        println!(
            "{}  {}  {}  {} databases, {collections} collections, {} documents, {}  {}",
            e.id.short(),
            output::local_time(e.snapshot.time),
            m.hosts.join(","),
            m.databases.len(),
            m.documents,
            output::bytes(m.bytes),
            match (&m.set_name, m.consistent) {
                (Some(set), Some(c)) => format!("{set} @ {c}"),
                _ => "standalone".into(),
            }
        );
    }
    for set in catalog.sets() {
        let ranges = catalog.ranges(&set);
        if ranges.is_empty() {
            continue;
        }
        let slices: usize = ranges.iter().map(|r| r.slices).sum();
        println!("oplog archive of {set}: {slices} slices");
        for (i, r) in ranges.iter().enumerate() {
            if i > 0 {
                println!(
                    "  GAP after {}: entries up to {} are lost (no point-in-time restore across it)",
                    ranges[i - 1].to,
                    r.from
                );
            }
            println!(
                "  {} .. {}  ({} .. {})",
                r.from,
                r.to,
                output::local_time(op_time(r.from)),
                output::local_time(op_time(r.to))
            );
        }
    }
    if catalog.backups.is_empty() && catalog.slices.is_empty() && !g.quiet {
        eprintln!("no MongoDB backups");
    }
    Ok(ExitCode::SUCCESS)
}

/// The wall-clock second of an oplog position.
fn op_time(t: OpTime) -> jiff::Timestamp {
    jiff::Timestamp::from_second(i64::from(t.t)).unwrap_or_default()
}

async fn oplog(g: &Global, a: MongoOplogArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let conn = tessera_mongo::connect(&a.uri.uri).await?;
    let slice = std::time::Duration::try_from(a.slice)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--slice: a positive duration")?;
    let (json, quiet) = (a.json, g.quiet);
    let options = FollowOptions {
        slice,
        tags: a.tag,
        hostname: a.host,
        on_event: Some(Arc::new(move |e: &FollowEvent| {
            report_event(e, json, quiet)
        })),
        ..FollowOptions::default()
    };
    let stop = async {
        let (name, _) = crate::signalled().await;
        if !quiet {
            eprintln!("tessera: {name}: committing what the majority has confirmed, then stopping");
        }
    };
    let report = tessera_mongo::follow(&repo, &conn, options, stop).await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "message_type": "summary",
                "slices": report.slices,
                "entries": report.entries,
                "gaps": report.gaps,
                "last": report.last.map(|t| t.to_string()),
                "left_unconfirmed": report.left_unconfirmed,
            })
        );
    } else if !quiet {
        println!(
            "oplog archive stopped: {} slices, {} entries{}{}",
            report.slices,
            report.entries,
            report
                .last
                .map(|t| format!(", archived to {t}"))
                .unwrap_or_default(),
            if report.gaps > 0 {
                format!("; {} GAPS", report.gaps)
            } else {
                String::new()
            }
        );
    }
    Ok(if report.gaps > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

fn report_event(e: &FollowEvent, json: bool, quiet: bool) {
    if json {
        let v = match e {
            FollowEvent::Started {
                set_name,
                after,
                from,
            } => {
                serde_json::json!({"message_type": "started", "set_name": set_name, "after": after.to_string(), "from": from})
            }
            FollowEvent::Slice { snapshot, meta } => serde_json::json!({
                "message_type": "slice", "snapshot_id": snapshot, "first": meta.first.to_string(),
                "last": meta.last.to_string(), "entries": meta.entries, "bytes": meta.bytes,
            }),
            FollowEvent::Gap(g) => serde_json::json!({
                "message_type": "gap", "last_archived": g.last_archived.to_string(),
                "first_available": g.first_available.to_string(),
            }),
            FollowEvent::CursorLost { error, retry_in } => {
                serde_json::json!({"message_type": "cursor_lost", "error": error, "retry_in": retry_in})
            }
        };
        println!("{v}");
        return;
    }
    match e {
        // A gap is never quiet.
        FollowEvent::Gap(g) => eprintln!(
            "tessera: error: oplog gap: the oplog rolled over past the last archived entry {}; it now starts at {}: the entries between are lost, and no point-in-time restore can cross this gap until the next backup (make the oplog larger, or keep the follower running)",
            g.last_archived, g.first_available
        ),
        _ if quiet => {}
        FollowEvent::Started {
            set_name,
            after,
            from,
        } => eprintln!("following the oplog of {set_name} after {after} ({from})"),
        FollowEvent::Slice { snapshot, meta } => eprintln!(
            "slice {}: {} entries, {} .. {} ({})",
            &snapshot[..8],
            meta.entries,
            meta.first,
            meta.last,
            output::bytes(meta.bytes)
        ),
        FollowEvent::CursorLost { error, retry_in } => eprintln!(
            "tessera: warning: {error}; reading again from the last archived entry in {retry_in}s"
        ),
    }
}

async fn forget(g: &Global, a: &ForgetArgs) -> Result<ExitCode> {
    if !a.snapshots.is_empty() {
        bail!(
            "`mongo forget` applies a policy (oplog-aware); to remove given snapshots use `tessera forget ID...`"
        );
    }
    let repo = open(g).await?;
    let all = repo.snapshots().await?;
    let catalog = Catalog::from_entries(all.iter().cloned())?;
    let plans = retention_plans(a, &all, |kind| kind == tessera_mongo::KIND_BACKUP)?;
    let removed = removed_by(&plans);
    let kept: Vec<&Backup> = catalog
        .backups
        .iter()
        .filter(|b| !removed.contains(&b.entry.id))
        .collect();
    let slices: Vec<_> = catalog
        .sets()
        .iter()
        .flat_map(|set| catalog.releasable(set, &kept))
        .map(|s| s.entry.id)
        .collect();
    forget_all(&repo, removed.iter().chain(&slices), a.dry_run).await?;
    if a.json {
        // `forget --json`'s groups, and the slices released with them.
        let doc = serde_json::json!({
            "groups": output::forget_json(&plans),
            "oplog_slices_released": slices.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
        });
        println!("{doc}");
    } else if !g.quiet || a.dry_run {
        print!("{}", output::forget_table(&plans, a.dry_run));
        let verb = if a.dry_run { "would remove" } else { "removed" };
        println!(
            "kept {} backups, {verb} {}; oplog slices no kept backup needs: {} {}",
            kept.len(),
            removed.len(),
            slices.len(),
            if a.dry_run { "would go" } else { "released" }
        );
    }
    if a.prune {
        return prune_repo(g, &repo, &a.prune_options, a.dry_run, a.json).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// A plan that restores a backup to its own consistent point.
fn whole(backup: Backup) -> PitrPlan {
    PitrPlan {
        backup,
        slices: Vec::new(),
        target: None,
    }
}

/// The MongoDB backup a user's reference names.
async fn backup_named(
    repo: &tessera_core::Repository,
    catalog: &Catalog,
    id: &str,
) -> Result<Backup> {
    let entry = repo.find_snapshot(id).await?;
    match catalog.backups.iter().find(|b| b.entry.id == entry.id) {
        Some(b) => Ok(b.clone()),
        None => bail!(
            "snapshot {} is a {} snapshot, not a MongoDB backup",
            entry.id.short(),
            entry.snapshot.source_kind
        ),
    }
}
