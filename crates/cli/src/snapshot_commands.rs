//! Commands on snapshots and streams: backup (streams; paths go to
//! `fs_commands`), snapshots, forget, prune, dump, restore.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use tessera_core::retention::Policy;
use tessera_core::{BackupOptions, BackupProgress, Repository, StreamSource};

use crate::args::{BackupArgs, ForgetArgs, Global, PruneOptionsArgs, RestoreArgs};
use crate::context::*;
use crate::output::{self, SnapshotJson};

pub(crate) async fn backup(g: &Global, a: BackupArgs) -> Result<ExitCode> {
    if !a.stdin {
        return crate::fs_commands::backup_paths(g, a).await;
    }
    let time = a.time.as_deref().map(parse_time).transpose()?;
    tessera_core::validate_stream_name(&a.stdin_name)?;
    let repo = open(g).await?;
    let progress = Arc::new(BackupProgress::default());
    let bar = {
        let progress = progress.clone();
        output::Bar::start(
            show_progress(g),
            "[{elapsed_precise}] {bytes} read ({bytes_per_sec}) {msg}",
            move |bar| {
                bar.set_position(progress.bytes_read.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "{} new, {} uploaded",
                    output::bytes(progress.bytes_new.load(Ordering::Relaxed)),
                    output::bytes(progress.bytes_uploaded.load(Ordering::Relaxed))
                ));
            },
        )
    };
    let options = BackupOptions {
        time,
        hostname: a.host,
        tags: a.tags,
        progress: Some(progress),
        ..Default::default()
    };
    let source = StreamSource::new(a.stdin_name, std::io::stdin());
    let result = repo.backup(vec![source], options).await;
    output::Bar::finish(bar).await;
    let summary = result?;
    let st = &summary.snapshot.stats;
    if a.json {
        let json = serde_json::json!({
            "message_type": "summary",
            "snapshot_id": summary.id.to_hex(),
            "short_id": summary.id.short(),
            "total_bytes_processed": st.total_bytes,
            "total_chunks": st.total_chunks,
            "data_blobs": st.new_chunks,
            "data_added": st.stored_bytes,
            "data_added_plain": st.new_bytes,
            "packs_written": st.packs_written,
            "total_duration": st.duration_secs,
        });
        println!("{json}");
    } else if !g.quiet {
        eprintln!(
            "processed {} in {:.2}s: {} new chunks of {}, {} new data, {} stored\nsnapshot {} saved",
            output::bytes(st.total_bytes),
            st.duration_secs,
            st.new_chunks,
            st.total_chunks,
            output::bytes(st.new_bytes),
            output::bytes(st.stored_bytes),
            summary.id.short()
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn snapshots(g: &Global, json: bool) -> Result<ExitCode> {
    let repo = open(g).await?;
    let listing = repo.snapshot_listing().await?;
    let list = &listing.snapshots;
    if json {
        let out: Vec<SnapshotJson> = list.iter().map(SnapshotJson::new).collect();
        println!("{}", serde_json::to_string(&out)?);
    } else {
        print!("{}", output::snapshot_table(list));
    }
    Ok(warn_damaged(&listing.damaged))
}

/// `forget ID...`: removes the snapshot objects named, read or not.
pub(crate) async fn forget_named(
    g: &Global,
    repo: &Repository,
    refs: &[String],
) -> Result<ExitCode> {
    let mut ids = Vec::new();
    for r in refs {
        ids.push(repo.resolve_snapshot_id(r).await?);
    }
    for id in ids {
        repo.forget_snapshot(id)
            .await
            .with_context(|| format!("removing snapshot {}", id.short()))?;
        if !g.quiet {
            println!("removed snapshot {}", id.short());
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn forget(g: &Global, a: &ForgetArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    if !a.snapshots.is_empty() {
        if policy_of(a) != Policy::default() || a.prune || a.dry_run {
            bail!("give snapshots to remove or a policy (--keep-*), not both");
        }
        return forget_named(g, &repo, &a.snapshots).await;
    }
    let listing = repo.snapshot_listing().await?;
    let all = listing.snapshots;
    // WAL batches go with the base backups that need them: `pg forget`.
    let plans = retention_plans(a, &all, |kind| kind != tessera_postgres::KIND_WAL)?;
    let (mut kept, mut removed) = (0usize, 0usize);
    for d in plans.iter().flat_map(|p| &p.decisions) {
        if d.keep {
            kept += 1;
        } else {
            if !a.dry_run {
                repo.forget_snapshot(d.id)
                    .await
                    .with_context(|| format!("removing snapshot {}", d.id.short()))?;
            }
            removed += 1;
        }
    }
    if a.json {
        println!("{}", serde_json::to_string(&output::forget_json(&plans))?);
    } else if !g.quiet || a.dry_run {
        print!("{}", output::forget_table(&plans, a.dry_run));
        let verb = if a.dry_run { "would remove" } else { "removed" };
        println!("kept {kept} snapshots, {verb} {removed}");
    }
    if a.prune {
        // One JSON document per line: the forget decisions, then the prune report.
        if !listing.damaged.is_empty() {
            warn_damaged(&listing.damaged);
            bail!(
                "not pruning: prune cannot know what damaged snapshots reference (remove them with `tessera forget ID` first)"
            );
        }
        return prune_repo(g, &repo, &a.prune_options, a.dry_run, a.json).await;
    }
    Ok(warn_damaged(&listing.damaged))
}

pub(crate) async fn prune(
    g: &Global,
    o: &PruneOptionsArgs,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode> {
    let repo = open(g).await?;
    prune_repo(g, &repo, o, dry_run, json).await
}

pub(crate) async fn dump(g: &Global, reference: &str, name: &str) -> Result<ExitCode> {
    let repo = open(g).await?;
    let entry = repo.find_snapshot(reference).await?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    if entry.snapshot.source_kind == tessera_fs::SOURCE_KIND {
        tessera_fs::dump_file(&repo, &entry.snapshot, std::path::Path::new(name), &mut out)
            .await
            .with_context(|| format!("dumping {name} from snapshot {}", entry.id.short()))?;
    } else {
        repo.restore_stream(&entry.snapshot, name, &mut out)
            .await
            .with_context(|| format!("dumping {name:?} from snapshot {}", entry.id.short()))?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Creates the file `path` for a restored stream, replacing a file or
/// symlink of that name: the old entry is unlinked (a symlink is never
/// followed) and the new one created exclusively (`O_EXCL` follows no
/// symlink planted in between either).
pub(crate) fn create_replacing(path: &std::path::Path) -> Result<std::fs::File> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => bail!("{} is a directory, not a stream's file", path.display()),
        Ok(_) => {
            std::fs::remove_file(path).with_context(|| format!("replacing {}", path.display()))?
        }
        Err(_) => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))
}

pub(crate) async fn restore(g: &Global, a: &RestoreArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    if a.plan {
        return restore_plan(&repo, a).await;
    }
    if let Some(code) = crate::fs_commands::restore(g, a, &repo).await? {
        return Ok(code);
    }
    let (reference, target) = (a.snapshot.as_str(), a.target.as_path());
    let entry = repo.find_snapshot(reference).await?;
    std::fs::create_dir_all(target).with_context(|| format!("creating {}", target.display()))?;
    let tree = repo.read_tree(entry.snapshot.tree, "snapshot root").await?;
    let mut total = 0;
    for node in &tree.nodes {
        tessera_core::validate_stream_name(&node.name)?;
        let path = target.join(std::ffi::OsStr::from_bytes(node.name_bytes()));
        let file = create_replacing(&path)?;
        let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
        total += repo
            .restore_node(node, &mut out)
            .await
            .with_context(|| format!("restoring {}", path.display()))?;
        out.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !g.quiet {
        eprintln!(
            "restored {} stream(s), {} from snapshot {} to {}",
            tree.nodes.len(),
            output::bytes(total),
            entry.id.short(),
            target.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `restore --plan`: the data packs a full restore reads.
pub(crate) async fn restore_plan(repo: &Repository, a: &RestoreArgs) -> Result<ExitCode> {
    let (reference, _) = a.snapshot.split_once(':').unwrap_or((&a.snapshot, ""));
    let entry = repo.find_snapshot(reference).await?;
    let plan = repo.restore_plan(&entry.snapshot).await?;
    if a.json {
        println!("{}", serde_json::to_string(&plan)?);
    } else {
        for p in &plan.packs {
            println!("{}  {}", p.object, output::bytes(p.bytes));
        }
        println!(
            "restoring snapshot {} reads {} data packs ({}); in an archive tier (GLACIER, DEEP_ARCHIVE), thaw these first",
            entry.id.short(),
            plan.packs.len(),
            output::bytes(plan.bytes)
        );
    }
    Ok(ExitCode::SUCCESS)
}
