//! Commands on filesystem snapshots: backup PATH..., ls, find, diff,
//! restore and dump of files.

use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use tessera_core::{BackupProgress, NodeKind, Repository};
use tessera_fs::{DiffKind, Excludes, FsMeta, TreeEntry};

use crate::args::{BackupArgs, Global, RestoreArgs};
use crate::context::{cache_file, open, parse_time, show_progress};
use crate::output;

/// Exit code of a backup that completed but left something out (as restic).
const EXIT_WARNINGS: u8 = 3;

fn exclude_patterns(a: &BackupArgs) -> Result<Vec<String>> {
    let mut patterns = a.exclude.clone();
    for f in &a.exclude_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading exclude file {}", f.display()))?;
        patterns.extend(
            text.lines()
                .map(str::trim_end)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from),
        );
    }
    Ok(patterns)
}

pub async fn backup_paths(g: &Global, a: BackupArgs) -> Result<ExitCode> {
    let time = a.time.as_deref().map(parse_time).transpose()?;
    let patterns = exclude_patterns(&a)?;
    let repo = open(g).await?;
    let cache = if a.no_cache {
        None
    } else {
        cache_file(g, &repo.config().id, "files.db")
    };
    let progress = Arc::new(BackupProgress::default());
    let walk = Arc::new(tessera_fs::WalkStats::default());
    // Bytes done of the bytes the walk has seen so far (it runs ahead).
    let bar = {
        let (progress, walk) = (progress.clone(), walk.clone());
        output::Bar::start(
            show_progress(g),
            "[{elapsed_precise}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta}) {msg}",
            move |bar| {
                bar.set_length(walk.bytes_seen.load(Ordering::Relaxed));
                bar.set_position(progress.bytes_read.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "{} entries, {} new",
                    progress.entries_done.load(Ordering::Relaxed),
                    output::bytes(progress.bytes_new.load(Ordering::Relaxed)),
                ));
            },
        )
    };
    let options = tessera_fs::BackupOptions {
        excludes: Excludes {
            patterns,
            if_present: a.exclude_if_present.clone(),
            caches: a.exclude_caches,
            one_file_system: a.one_file_system,
            larger_than: a.exclude_larger_than,
        },
        cache,
        tags: a.tags.clone(),
        hostname: a.host.clone(),
        time,
        progress: Some(progress),
        walk_stats: Some(walk),
    };
    let result = tessera_fs::backup(&repo, &a.paths, options).await;
    output::Bar::finish(bar).await;
    let s = result?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    let st = &s.snapshot.stats;
    if a.json {
        let json = serde_json::json!({
            "message_type": "summary",
            "files_new": s.files_new,
            "files_changed": s.files_changed,
            "files_unmodified": s.files_unchanged,
            "dirs": s.dirs,
            "others": s.others,
            "total_files_processed": s.files_new + s.files_changed + s.files_unchanged,
            "total_bytes_processed": st.total_bytes,
            "data_blobs": st.new_chunks,
            "data_added": st.stored_bytes,
            "data_added_plain": st.new_bytes,
            "packs_written": st.packs_written,
            "total_duration": st.duration_secs,
            "warnings": s.warnings,
            "snapshot_id": s.id.to_hex(),
            "short_id": s.id.short(),
        });
        println!("{json}");
    } else if !g.quiet {
        eprintln!(
            "files: {} new, {} changed, {} unchanged; dirs: {}\nadded {} ({} stored) of {} processed in {:.2}s\nsnapshot {} saved{}",
            s.files_new,
            s.files_changed,
            s.files_unchanged,
            s.dirs,
            output::bytes(st.new_bytes),
            output::bytes(st.stored_bytes),
            output::bytes(st.total_bytes),
            st.duration_secs,
            s.id.short(),
            if s.warnings.is_empty() {
                String::new()
            } else {
                format!(" with {} warning(s)", s.warnings.len())
            }
        );
    }
    Ok(if s.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_WARNINGS)
    })
}

fn require_fs(snapshot: &tessera_core::Snapshot) -> Result<()> {
    if snapshot.source_kind != tessera_fs::SOURCE_KIND {
        bail!(
            "this is a {:?} snapshot; ls, find, diff and path restores need a filesystem snapshot",
            snapshot.source_kind
        );
    }
    Ok(())
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

fn entry_json(e: &TreeEntry) -> serde_json::Value {
    let mut v = serde_json::json!({
        "path": lossy(e.path),
        "name": e.node.name,
        "size": e.node.size,
    });
    if let (Some(m), Some(obj)) = (&e.meta, v.as_object_mut()) {
        obj.insert(
            "type".into(),
            serde_json::to_value(m.kind).unwrap_or_default(),
        );
        obj.insert("mode".into(), m.mode.into());
        obj.insert("uid".into(), m.uid.into());
        obj.insert("gid".into(), m.gid.into());
        if m.size > 0 {
            obj.insert("size".into(), m.size.into());
        }
        if let Some(t) = time(m.mtime) {
            obj.insert("mtime".into(), t.to_string().into());
        }
        if let Some(t) = &m.target {
            obj.insert("link_target".into(), lossy(t).into());
        }
    }
    v
}

fn time(t: tessera_fs::Time) -> Option<jiff::Timestamp> {
    jiff::Timestamp::new(t.0, t.1 as i32).ok()
}

fn long_line(e: &TreeEntry) -> String {
    let Some(m) = e.meta else {
        return lossy(e.path);
    };
    let owner = m.user.clone().unwrap_or_else(|| m.uid.to_string());
    let group = m.group.clone().unwrap_or_else(|| m.gid.to_string());
    let when = time(m.mtime)
        .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
    let mut line = format!(
        "{} {:>8} {:>8} {:>12} {} {}",
        m.mode_string(),
        owner,
        group,
        m.size,
        when,
        lossy(e.path)
    );
    if let Some(t) = &m.target {
        line.push_str(" -> ");
        line.push_str(&lossy(t));
    }
    line
}

pub async fn ls(
    g: &Global,
    reference: &str,
    path: Option<&Path>,
    long: bool,
    recursive: bool,
    json: bool,
) -> Result<ExitCode> {
    let repo = open(g).await?;
    let entry = repo.find_snapshot(reference).await?;
    require_fs(&entry.snapshot)?;
    let path = path.unwrap_or(Path::new("/"));
    let start = tessera_fs::find_node(&repo, &entry.snapshot, path).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut print = |e: &TreeEntry| -> Result<bool, tessera_fs::Error> {
        let line = if json {
            entry_json(e).to_string()
        } else if long {
            long_line(e)
        } else {
            lossy(e.path)
        };
        writeln!(out, "{line}").map_err(|e| tessera_fs::Error::Io {
            path: "stdout".into(),
            operation: "writing",
            source: e,
        })?;
        Ok(recursive)
    };
    match start {
        None => tessera_fs::walk_tree(&repo, entry.snapshot.tree, b"/", &mut print).await?,
        Some(node) => {
            let p = path.as_os_str().as_bytes().to_vec();
            let meta = FsMeta::from_meta(&node.meta).ok();
            let e = TreeEntry {
                path: &p,
                meta: meta.as_ref(),
                node: &node,
                depth: 0,
            };
            print(&e)?;
            if let NodeKind::Dir { subtree } = node.kind {
                tessera_fs::walk_tree(&repo, subtree, &p, &mut print).await?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub async fn find(g: &Global, pattern: &str, only: &[String], json: bool) -> Result<ExitCode> {
    let repo = open(g).await?;
    let matcher = tessera_fs::patterns(&[pattern.to_string()])?;
    let mut snaps = Vec::new();
    if only.is_empty() {
        snaps = repo.snapshots().await?;
    } else {
        for r in only {
            snaps.push(repo.find_snapshot(r).await?);
        }
    }
    let mut found = 0u64;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for s in snaps
        .iter()
        .filter(|s| s.snapshot.source_kind == tessera_fs::SOURCE_KIND)
    {
        let mut hits = Vec::new();
        tessera_fs::walk_tree(&repo, s.snapshot.tree, b"/", |e| {
            let is_dir = matches!(e.node.kind, NodeKind::Dir { .. });
            if matcher
                .matched(std::ffi::OsStr::from_bytes(e.path), is_dir)
                .is_ignore()
            {
                hits.push((e.path.to_vec(), e.node.clone(), e.meta.cloned(), e.depth));
            }
            Ok(true)
        })
        .await?;
        for (path, node, meta, depth) in &hits {
            let e = TreeEntry {
                path,
                node,
                meta: meta.as_ref(),
                depth: *depth,
            };
            found += 1;
            if json {
                let mut v = entry_json(&e);
                if let Some(o) = v.as_object_mut() {
                    o.insert("snapshot".into(), s.id.short().into());
                }
                writeln!(out, "{v}")?;
            } else {
                writeln!(out, "{} {}", s.id.short(), long_line(&e))?;
            }
        }
    }
    out.flush()?;
    if found == 0 && !g.quiet {
        eprintln!("no entry matches {pattern:?}");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn diff(g: &Global, first: &str, second: &str, json: bool) -> Result<ExitCode> {
    let repo = open(g).await?;
    let a = repo.find_snapshot(first).await?;
    let b = repo.find_snapshot(second).await?;
    require_fs(&a.snapshot)?;
    require_fs(&b.snapshot)?;
    let changes = tessera_fs::diff(&repo, a.snapshot.tree, b.snapshot.tree).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut counts = [0u64; 4];
    for (path, kind) in &changes {
        let (mark, i) = match kind {
            DiffKind::Added => ('+', 0),
            DiffKind::Removed => ('-', 1),
            DiffKind::Modified => ('M', 2),
            DiffKind::Metadata => ('U', 3),
        };
        counts[i] += 1;
        if json {
            writeln!(
                out,
                "{}",
                serde_json::json!({"path": lossy(path), "change": kind})
            )?;
        } else {
            writeln!(out, "{mark}    {}", lossy(path))?;
        }
    }
    out.flush()?;
    if !json && !g.quiet {
        eprintln!(
            "{} added, {} removed, {} modified, {} metadata only",
            counts[0], counts[1], counts[2], counts[3]
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `SNAPSHOT:/sub/path` → (`SNAPSHOT`, `/sub/path`).
fn split_ref(s: &str) -> (&str, Option<&str>) {
    match s.split_once(':') {
        Some((snap, path)) => (snap, Some(path)),
        None => (s, None),
    }
}

/// Restores a filesystem snapshot; `None` when it is a stream snapshot
/// (the caller restores its streams).
pub async fn restore(g: &Global, a: &RestoreArgs, repo: &Repository) -> Result<Option<ExitCode>> {
    let (reference, sub) = split_ref(&a.snapshot);
    let entry = repo.find_snapshot(reference).await?;
    if entry.snapshot.source_kind != tessera_fs::SOURCE_KIND {
        if sub.is_some() || !a.include.is_empty() || !a.exclude.is_empty() || a.delete {
            require_fs(&entry.snapshot)?;
        }
        return Ok(None);
    }
    let progress = Arc::new(tessera_fs::RestoreProgress::default());
    let bar = {
        let progress = progress.clone();
        output::Bar::start(
            show_progress(g),
            "[{elapsed_precise}] {bytes}/{total_bytes} ({bytes_per_sec}, ETA {eta})",
            move |bar| {
                bar.set_length(progress.bytes_total.load(Ordering::Relaxed));
                bar.set_position(progress.bytes_written.load(Ordering::Relaxed));
            },
        )
    };
    let options = tessera_fs::RestoreOptions {
        include: a.include.clone(),
        exclude: a.exclude.clone(),
        delete: a.delete,
        progress: Some(progress),
    };
    let result = tessera_fs::restore(
        repo,
        &entry.snapshot,
        Path::new(sub.unwrap_or("/")),
        &a.target,
        options,
    )
    .await;
    output::Bar::finish(bar).await;
    let s = result.with_context(|| format!("restoring into {}", a.target.display()))?;
    for w in &s.warnings {
        eprintln!("warning: {w}");
    }
    for d in &s.damaged {
        eprintln!("damaged, not restored: {d}");
    }
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else if !g.quiet {
        eprintln!(
            "restored {} files ({} already correct), {} dirs, {} others; wrote {}{} from snapshot {} to {}",
            s.files,
            s.files_unchanged,
            s.dirs,
            s.others,
            output::bytes(s.bytes_written),
            if a.delete {
                format!("; removed {}", s.deleted)
            } else {
                String::new()
            },
            entry.id.short(),
            a.target.display()
        );
    }
    if !s.damaged.is_empty() {
        eprintln!(
            "tessera: {} file(s) or directories could not be restored: the repository lost some of their data (`tessera check --read-data` says where; `tessera repair snapshots` rewrites the snapshots without them)",
            s.damaged.len()
        );
        return Ok(Some(ExitCode::FAILURE));
    }
    Ok(Some(if s.warnings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_WARNINGS)
    }))
}
