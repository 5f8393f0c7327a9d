//! `tessera mongo …`: MongoDB (library: `tessera-mongo`).

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use tessera_core::{Repository, SnapshotEntry};
use tessera_mongo::{BackupMeta, BackupOptions, KIND_BACKUP, RestoreOptions};

use crate::args::Global;
use crate::context::{open, parse_time};
use crate::mongo_args::{MongoBackupArgs, MongoCommand, MongoRestoreArgs};
use crate::output;

pub async fn run(g: &Global, command: MongoCommand) -> Result<ExitCode> {
    match command {
        MongoCommand::Backup(a) => backup(g, a).await,
        MongoCommand::Restore(a) => restore(g, a).await,
        MongoCommand::List { json } => list(g, json).await,
    }
}

async fn backup(g: &Global, a: MongoBackupArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let conn = tessera_mongo::connect(&a.uri.uri).await?;
    let quiet = g.quiet || a.json;
    let options = BackupOptions {
        databases: a.databases,
        collections: a.collections,
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
async fn backups(repo: &Repository) -> Result<Vec<(SnapshotEntry, BackupMeta)>> {
    let mut list = Vec::new();
    for e in repo.snapshots().await? {
        if e.snapshot.source_kind == KIND_BACKUP {
            let meta = BackupMeta::from_value(&e.snapshot.source_meta, &e.id.short())?;
            list.push((e, meta));
        }
    }
    list.sort_by_key(|(e, _)| e.snapshot.time);
    Ok(list)
}

async fn restore(g: &Global, a: MongoRestoreArgs) -> Result<ExitCode> {
    if a.ns_from.len() != a.ns_to.len() {
        bail!("--ns-from and --ns-to come in pairs");
    }
    let repo = open(g).await?;
    let entry = match (&a.time, a.snapshot.as_str()) {
        (Some(t), _) => {
            let t = parse_time(t)?;
            match backups(&repo)
                .await?
                .into_iter()
                .rev()
                .find(|(_, m)| m.finished <= t)
            {
                Some((e, _)) => e,
                None => bail!("the repository holds no MongoDB backup finished by {t}"),
            }
        }
        (None, "latest") => match backups(&repo).await?.pop() {
            Some((e, _)) => e,
            None => bail!("the repository holds no MongoDB backup"),
        },
        (None, id) => repo.find_snapshot(id).await?,
    };
    let conn = tessera_mongo::connect(&a.uri.uri).await?;
    let options = RestoreOptions {
        drop: a.drop,
        include: a.ns_include,
        renames: a.ns_from.into_iter().zip(a.ns_to).collect(),
        no_users: a.no_users,
        no_oplog_replay: a.no_oplog_replay,
    };
    let started = std::time::Instant::now();
    let report = tessera_mongo::restore(&repo, &entry, &conn, &options).await?;
    for w in &report.warnings {
        eprintln!("tessera: warning: {w}");
    }
    if a.json {
        let mut v = serde_json::to_value(&report)?;
        v["snapshot_id"] = entry.id.to_hex().into();
        println!("{v}");
    } else if !g.quiet {
        println!(
            "restored snapshot {} to {}: {} collections, {} views, {} documents, {} indexes, {} users and roles; {} oplog entries replayed{} in {:.1}s",
            entry.id.short(),
            conn.name(),
            report.collections,
            report.views,
            report.documents,
            report.indexes,
            report.users,
            report.oplog_applied,
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
    let list = backups(&repo).await?;
    if json {
        let rows: Vec<serde_json::Value> = list
            .iter()
            .map(|(e, m)| {
                serde_json::json!({
                    "snapshot_id": e.id.to_hex(),
                    "time": e.snapshot.time.to_string(),
                    "host": e.snapshot.hostname,
                    "tags": e.snapshot.tags,
                    "hosts": m.hosts,
                    "set_name": m.set_name,
                    "consistent": m.consistent.map(|c| c.to_string()),
                    "databases": m.databases,
                    "documents": m.documents,
                    "bytes": m.bytes,
                    "new_bytes": e.snapshot.stats.new_bytes,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(ExitCode::SUCCESS);
    }
    for (e, m) in &list {
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
    if list.is_empty() && !g.quiet {
        eprintln!("no MongoDB backups");
    }
    Ok(ExitCode::SUCCESS)
}
