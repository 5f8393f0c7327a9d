//! `tessera pg …`: PostgreSQL base backups, WAL archive, point-in-time
//! restore, retention and logical dumps (library: `tessera-postgres`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tessera_core::{BackupOptions, Repository};
use tessera_postgres::base::{self, BaseBackupOptions};
use tessera_postgres::daemon::{self, Reply, Request};
use tessera_postgres::recovery::{self, RecoveryTarget, TargetAction};
use tessera_postgres::wal::{self, WalName};
use tessera_postgres::wal_archive::{WalArchive, wal_file_name, write_whole};
use tessera_postgres::{KIND_BASE, KIND_DUMP, PgTools};

use crate::args::{
    ArchiveWalArgs, ForgetArgs, Global, PgBackupArgs, PgCommand, PgConnection, PgDumpArgs,
    PgRestoreArgs, PgRestoreDumpArgs, RestoreWalArgs, TargetActionArg, WalCallArgs,
};
use crate::context::{
    cache_base, forget_all, location, open, prune_repo, removed_by, retention_plans,
};
use crate::output;

/// restore-wal's exit status when the repository cannot answer: above 125,
/// so PostgreSQL stops recovery instead of taking it for the end of the
/// archive (and promoting too early).
const EXIT_REPOSITORY_FAILED: u8 = 254;

pub async fn run(g: &Global, command: PgCommand) -> Result<ExitCode> {
    match command {
        PgCommand::Backup(a) => backup(g, a).await,
        PgCommand::ArchiveWal(a) => archive_wal(g, a).await,
        PgCommand::RestoreWal(a) => restore_wal(g, a).await,
        PgCommand::Restore(a) => restore(g, a).await,
        PgCommand::List(a) => list(g, a.json).await,
        PgCommand::Forget(a) => forget(g, &a).await,
        PgCommand::Dump(a) => dump(g, a).await,
        PgCommand::RestoreDump(a) => restore_dump(g, a).await,
        PgCommand::WalDaemon { idle } => {
            let repo = open(g).await?;
            let socket = daemon_socket(g)?;
            daemon::serve(
                repo,
                &socket,
                Duration::try_from(idle).unwrap_or(Duration::from_secs(60)),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn tools(c: &PgConnection) -> PgTools {
    PgTools {
        bin: c.pg_bin.clone(),
        dsn: c.dsn.clone(),
    }
}

async fn backup(g: &Global, a: PgBackupArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let options = BaseBackupOptions {
        tools: tools(&a.conn),
        fast_checkpoint: !a.spread_checkpoint,
        wal_timeout: Duration::try_from(a.wal_timeout).unwrap_or(Duration::from_secs(300)),
        tags: a.tag,
        hostname: a.host,
        progress: None,
    };
    let (summary, meta) = base::base_backup(&repo, options).await?;
    let stats = &summary.snapshot.stats;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "snapshot": summary.id.to_hex(),
                "system_id": meta.system_id.to_string(),
                "timeline": meta.timeline,
                "start_lsn": meta.start_lsn.to_string(),
                "stop_lsn": meta.stop_lsn.to_string(),
                "start_wal": meta.start_wal,
                "stop_wal": meta.stop_wal,
                "data_checksums": meta.data_checksums,
                "total_bytes": stats.total_bytes,
                "new_bytes": stats.new_bytes,
                "stored_bytes": stats.stored_bytes,
                "duration_secs": stats.duration_secs,
            })
        );
    } else if !g.quiet {
        println!(
            "base backup {} of system {}: {} read, {} new ({} stored) in {:.1}s; WAL {} to {} on timeline {}{}",
            summary.id.short(),
            meta.system_id,
            output::bytes(stats.total_bytes),
            output::bytes(stats.new_bytes),
            output::bytes(stats.stored_bytes),
            stats.duration_secs,
            meta.start_lsn,
            meta.stop_lsn,
            meta.timeline,
            if meta.data_checksums {
                "; page checksums verified"
            } else {
                ""
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The data directory of a WAL call and its cluster's system identifier.
fn cluster_of(call: &WalCallArgs) -> Result<(PathBuf, u64)> {
    let dir = match &call.pgdata {
        Some(d) => d.clone(),
        None => std::env::current_dir().context("finding the current directory")?,
    };
    let control = dir.join("global/pg_control");
    let bytes = std::fs::read(&control).with_context(|| {
        format!(
            "reading {} (run from the data directory, as PostgreSQL does, or give --pgdata)",
            control.display()
        )
    })?;
    let system = wal::system_identifier(&bytes, &control.display().to_string())?;
    Ok((dir, system))
}

/// The WAL daemon's socket for this repository (in a directory only this
/// user can enter).
fn daemon_socket(g: &Global) -> Result<PathBuf> {
    let base = cache_base(g).context("no cache directory: set TESSERA_CACHE_DIR or HOME")?;
    let key = blake3::hash(location(g)?.as_bytes()).to_hex();
    let dir = base.join("pg").join(&key.as_str()[..16]);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", dir.display()))?;
    Ok(dir.join("wal.sock"))
}

/// Asks the daemon (starting it when none answers); `None` when no daemon
/// could be reached.
async fn ask_daemon(g: &Global, request: &Request) -> Result<Option<Reply>> {
    let socket = daemon_socket(g)?;
    if let Ok(reply) = daemon::call(&socket, request).await {
        return Ok(Some(reply));
    }
    let mut child = start_daemon(g, &socket)?;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if let Ok(reply) = daemon::call(&socket, request).await {
            return Ok(Some(reply));
        }
        // It could not open the repository (or another daemon won the
        // socket and then went away): do the call here instead.
        if child.try_wait().ok().flatten().is_some()
            && daemon::call(&socket, request).await.is_err()
        {
            break;
        }
    }
    Ok(None)
}

fn start_daemon(g: &Global, socket: &Path) -> Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the tessera executable")?;
    let log_path = socket.with_file_name("daemon.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["pg", "wal-daemon"])
        .env("TESSERA_REPO", location(g)?);
    let forward = [
        (
            "TESSERA_PASSWORD_FILE",
            g.password_file.as_ref().map(|p| p.as_os_str().to_owned()),
        ),
        (
            "TESSERA_PASSWORD_COMMAND",
            g.password_command.as_ref().map(Into::into),
        ),
        (
            "TESSERA_KEY_FILE",
            g.key_file.as_ref().map(|p| p.as_os_str().to_owned()),
        ),
        (
            "TESSERA_CACHE_DIR",
            g.cache_dir.as_ref().map(|p| p.as_os_str().to_owned()),
        ),
    ];
    for (key, value) in forward {
        if let Some(v) = value {
            cmd.env(key, v);
        }
    }
    if g.no_cache {
        cmd.env("TESSERA_NO_CACHE", "true");
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the daemon log")?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the WAL daemon")
}

async fn archive_wal(g: &Global, a: ArchiveWalArgs) -> Result<ExitCode> {
    let (dir, system) = cluster_of(&a.call)?;
    let path = if a.path.is_absolute() {
        a.path.clone()
    } else {
        dir.join(&a.path)
    };
    wal_file_name(&path)?;
    let request = Request::Push {
        system,
        path: path.clone(),
    };
    let reply = match ask_daemon_unless(g, a.call.no_daemon, &request).await? {
        Some(reply) => reply,
        None => {
            let repo = open(g).await?;
            let mut archive = WalArchive::load(&repo).await?;
            let outcome = archive
                .push(&repo, system, std::slice::from_ref(&path))
                .await?;
            daemon::push_reply(&path, outcome.into_iter().next())
        }
    };
    Ok(match reply {
        Reply::Ok { message } => {
            verbose_line(g, &message);
            ExitCode::SUCCESS
        }
        Reply::NotFound { message }
        | Reply::Failed { message }
        | Reply::RepositoryError { message } => {
            eprintln!("tessera: error: {message}");
            ExitCode::FAILURE
        }
    })
}

async fn ask_daemon_unless(
    g: &Global,
    no_daemon: bool,
    request: &Request,
) -> Result<Option<Reply>> {
    if no_daemon {
        return Ok(None);
    }
    ask_daemon(g, request).await
}

fn verbose_line(g: &Global, message: &str) {
    if !g.quiet && std::env::var_os("TESSERA_PG_VERBOSE").is_some() {
        eprintln!("tessera: {message}");
    }
}

async fn restore_wal(g: &Global, a: RestoreWalArgs) -> Result<ExitCode> {
    let failed = |message: String| {
        eprintln!("tessera: error: {message}");
        Ok(ExitCode::from(EXIT_REPOSITORY_FAILED))
    };
    let Some(name) = WalName::parse(&a.name) else {
        eprintln!("tessera: {} is not a WAL file name", a.name);
        return Ok(ExitCode::FAILURE);
    };
    let (dir, system) = match cluster_of(&a.call) {
        Ok(c) => c,
        Err(e) => return failed(format!("{e:#}")),
    };
    let dest = if a.dest.is_absolute() {
        a.dest.clone()
    } else {
        dir.join(&a.dest)
    };
    let request = Request::Get {
        system,
        name: name.name.clone(),
        dest: dest.clone(),
    };
    let reply = match ask_daemon_unless(g, a.call.no_daemon, &request).await {
        Ok(Some(reply)) => reply,
        Ok(None) | Err(_) => match restore_inline(g, system, &name.name, &dest).await {
            Ok(reply) => reply,
            Err(e) => return failed(format!("restoring {}: {e:#}", name.name)),
        },
    };
    Ok(match reply {
        Reply::Ok { message } => {
            verbose_line(g, &message);
            ExitCode::SUCCESS
        }
        // The end of the archive, as far as PostgreSQL is concerned.
        Reply::NotFound { .. } => ExitCode::FAILURE,
        Reply::Failed { message } | Reply::RepositoryError { message } => return failed(message),
    })
}

async fn restore_inline(g: &Global, system: u64, name: &str, dest: &Path) -> Result<Reply> {
    let repo = open(g).await?;
    let archive = WalArchive::load(&repo).await?;
    if archive.get(system, name).is_none() {
        return Ok(Reply::NotFound {
            message: format!("{name} is not archived"),
        });
    }
    let bytes = archive.read(&repo, system, name).await?;
    write_whole(dest, &bytes)?;
    Ok(Reply::Ok {
        message: format!("restored {name}"),
    })
}

async fn restore(g: &Global, a: PgRestoreArgs) -> Result<ExitCode> {
    let target = if let Some(t) = a.time {
        RecoveryTarget::Time(t)
    } else if let Some(l) = &a.lsn {
        RecoveryTarget::Lsn(l.parse()?)
    } else if let Some(x) = &a.xid {
        RecoveryTarget::Xid(x.clone())
    } else if let Some(n) = &a.name {
        RecoveryTarget::Name(n.clone())
    } else {
        RecoveryTarget::Latest
    };
    let action = match a.target_action {
        TargetActionArg::Promote => TargetAction::Promote,
        TargetActionArg::Pause => TargetAction::Pause,
        TargetActionArg::Shutdown => TargetAction::Shutdown,
    };
    let repo = open(g).await?;
    let mut bases = base::list(&repo).await?;
    if let Some(system) = a.system_id {
        bases.retain(|(_, m)| m.system_id == system);
    }
    let systems: std::collections::BTreeSet<u64> = bases.iter().map(|(_, m)| m.system_id).collect();
    if systems.len() > 1 && a.backup.is_none() {
        bail!(
            "the repository holds base backups of several clusters ({}): choose one with --system-id",
            systems
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let chosen = match &a.backup {
        Some(reference) => {
            let entries: Vec<_> = bases.iter().map(|(e, _)| e.clone()).collect();
            let entry = tessera_core::snapshot::resolve(&entries, reference)?;
            bases
                .iter()
                .find(|(e, _)| e.id == entry.id)
                .context("not a base backup")?
        }
        None => recovery::choose_base(&bases, &target).with_context(|| match &target {
            RecoveryTarget::Time(t) => format!("no base backup ended before {t}"),
            RecoveryTarget::Lsn(l) => format!("no base backup ended before WAL location {l}"),
            _ => "the repository holds no base backup".to_string(),
        })?,
    };
    let (entry, meta) = chosen;
    if !g.quiet {
        eprintln!(
            "restoring base backup {} of {} (system {}, WAL {} to {}) into {}",
            entry.id.short(),
            meta.stop_time,
            meta.system_id,
            meta.start_lsn,
            meta.stop_lsn,
            a.target.display()
        );
    }
    let started = std::time::Instant::now();
    let summary = recovery::restore_data_directory(&repo, entry, &a.target).await?;
    let command = restore_command(g)?;
    recovery::configure_recovery(&a.target, &command, &target, action)?;
    if !g.quiet {
        eprintln!(
            "restored {} files ({}) in {:.1}s; recovery configured: {}",
            summary.files,
            output::bytes(summary.bytes),
            started.elapsed().as_secs_f64(),
            match &target {
                RecoveryTarget::Latest => "replay all archived WAL".to_string(),
                t => format!(
                    "stop at {t:?}, then {}",
                    format!("{action:?}").to_lowercase()
                ),
            }
        );
    }
    if a.verify {
        drop(repo);
        verify(g, &a, action).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify(g: &Global, a: &PgRestoreArgs, action: TargetAction) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let tools = PgTools {
        bin: a.pg_bin.clone().or_else(|| recovery::debian_bin(&a.target)),
        dsn: None,
    };
    // The server (and so its restore_command) runs as the data directory's
    // owner: give it a cache directory of its own.
    let owner = std::fs::metadata(&a.target)?;
    let parent = a.target.parent().unwrap_or(Path::new("/tmp"));
    let cache = parent.join(format!(".tessera-verify-cache-{}", std::process::id()));
    std::fs::create_dir_all(&cache)?;
    std::os::unix::fs::chown(&cache, Some(owner.uid()), Some(owner.gid()))
        .with_context(|| format!("giving {} to the data directory's owner", cache.display()))?;
    let env = verify_env(g, &cache, owner.uid(), owner.gid())?;
    let timeout = Duration::try_from(a.verify_timeout).unwrap_or(Duration::from_secs(3600));
    let query = a.verify_query.clone();
    let target = a.target.clone();
    let report = tokio::task::spawn_blocking(move || {
        recovery::verify(&target, &tools, action, &query, timeout, &env)
    })
    .await
    .context("the verification thread failed")?;
    let _ = std::fs::remove_dir_all(&cache);
    let report = report?;
    if !g.quiet {
        println!(
            "verified: recovery reached its target in {:.1}s ({}); last transaction replayed: {}; `{}` returned: {}",
            report.recovery_secs,
            if report.in_recovery {
                "paused in recovery"
            } else {
                "promoted"
            },
            report.last_replayed,
            a.verify_query,
            report.answer.replace('\n', "; ")
        );
    }
    Ok(())
}

/// The environment of the server `pg restore --verify` starts: its own
/// cache directory and, when it runs as another user (we are root), no
/// secret of ours. A password given in `TESSERA_PASSWORD` reaches its
/// `restore_command` as a file only that user can read, in `cache`
/// (removed with it after the verification).
fn verify_env(
    g: &Global,
    cache: &Path,
    uid: u32,
    gid: u32,
) -> Result<Vec<(String, Option<String>)>> {
    let mut env = vec![(
        "TESSERA_CACHE_DIR".to_string(),
        Some(cache.display().to_string()),
    )];
    let other_user = recovery::is_root() && uid != 0;
    if !other_user {
        return Ok(env);
    }
    for secret in [
        "TESSERA_PASSWORD",
        "TESSERA_NEW_PASSWORD",
        "TESSERA_TO_PASSWORD",
        "TESSERA_FROM_PASSWORD",
    ] {
        env.push((secret.to_string(), None));
    }
    let from_env =
        g.password_file.is_none() && g.password_command.is_none() && g.key_file.is_none();
    if let (true, Ok(password)) = (from_env, std::env::var("TESSERA_PASSWORD")) {
        let file = cache.join("password");
        let mut f = tessera_core::storage::private::create_new(&file)
            .with_context(|| format!("creating {}", file.display()))?;
        f.write_all(password.as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", file.display()))?;
        std::os::unix::fs::chown(&file, Some(uid), Some(gid))
            .with_context(|| format!("giving {} to the data directory's owner", file.display()))?;
        env.push((
            "TESSERA_PASSWORD_FILE".to_string(),
            Some(file.display().to_string()),
        ));
    }
    Ok(env)
}

/// The `restore_command` for a restored cluster: this executable, this
/// repository, this password source (never the password itself).
fn restore_command(g: &Global) -> Result<String> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let exe = std::env::current_exe().context("finding the tessera executable")?;
    let mut parts = vec![
        quote(&exe.display().to_string()),
        "-r".into(),
        quote(location(g)?),
    ];
    if let Some(f) = &g.password_file {
        parts.extend([
            "--password-file".into(),
            quote(&absolute(f).display().to_string()),
        ]);
    }
    if let Some(c) = &g.password_command {
        parts.extend(["--password-command".into(), quote(c)]);
    }
    if let Some(k) = &g.key_file {
        parts.extend([
            "--key-file".into(),
            quote(&absolute(k).display().to_string()),
        ]);
    }
    if g.password_file.is_none() && g.password_command.is_none() && g.key_file.is_none() && !g.quiet
    {
        eprintln!(
            "tessera: note: restore_command relies on TESSERA_PASSWORD (or TESSERA_PASSWORD_FILE) in the server's environment; give --password-file to write it into the command"
        );
    }
    parts.extend(["pg".into(), "restore-wal".into(), "%f".into(), "%p".into()]);
    Ok(parts.join(" "))
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

async fn list(g: &Global, json: bool) -> Result<ExitCode> {
    let repo = open(g).await?;
    let bases = base::list(&repo).await?;
    let archive = WalArchive::load(&repo).await?;
    let mut rows = Vec::new();
    for (entry, meta) in &bases {
        let missing = tessera_postgres::retention::missing_wal(meta, &archive).len();
        rows.push(serde_json::json!({
            "snapshot": entry.id.to_hex(),
            "time": meta.stop_time.to_string(),
            "system_id": meta.system_id.to_string(),
            "timeline": meta.timeline,
            "start_lsn": meta.start_lsn.to_string(),
            "stop_lsn": meta.stop_lsn.to_string(),
            "bytes": entry.snapshot.stats.total_bytes,
            "new_bytes": entry.snapshot.stats.new_bytes,
            "wal_missing": missing,
        }));
        if !json {
            println!(
                "{}  {}  system {}  tl {}  {}..{}  {} ({} new)  {}",
                entry.id.short(),
                meta.stop_time.strftime("%Y-%m-%d %H:%M:%S"),
                meta.system_id,
                meta.timeline,
                meta.start_lsn,
                meta.stop_lsn,
                output::bytes(entry.snapshot.stats.total_bytes),
                output::bytes(entry.snapshot.stats.new_bytes),
                if missing == 0 {
                    "restorable".to_string()
                } else {
                    format!("{missing} WAL segment(s) MISSING")
                }
            );
        }
    }
    let systems: std::collections::BTreeSet<u64> = bases.iter().map(|(_, m)| m.system_id).collect();
    let mut wal_rows = Vec::new();
    for system in systems {
        let files: Vec<&str> = archive
            .files(system)
            .map(|a| a.file.name.as_str())
            .collect();
        let segments: Vec<&&str> = files.iter().filter(|n| n.len() == 24).collect();
        wal_rows.push(serde_json::json!({
            "system_id": system.to_string(),
            "files": files.len(),
            "first_segment": segments.first(),
            "last_segment": segments.last(),
        }));
        if !json {
            println!(
                "WAL of system {system}: {} files, segments {} to {}",
                files.len(),
                segments.first().map_or("-", |s| s),
                segments.last().map_or("-", |s| s)
            );
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "base_backups": rows, "wal": wal_rows })
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn forget(g: &Global, a: &ForgetArgs) -> Result<ExitCode> {
    if !a.snapshots.is_empty() {
        anyhow::bail!(
            "`pg forget` applies a policy (WAL-aware); to remove given snapshots use `tessera forget ID...`"
        );
    }
    let repo = open(g).await?;
    let all = repo.snapshots().await?;
    let plans = retention_plans(a, &all, |kind| kind == KIND_BASE)?;
    let removed = removed_by(&plans);
    let release = tessera_postgres::retention::forget_plan(&all, &removed)?;
    let (wal_gone, wal_files) = (&release.batches, release.files);
    forget_all(&repo, removed.iter().chain(wal_gone), a.dry_run).await?;
    if a.json {
        // `forget --json`'s groups, and what the WAL retention released.
        let doc = serde_json::json!({
            "groups": output::forget_json(&plans),
            "wal_batches_released": wal_gone.iter().map(|i| i.to_hex()).collect::<Vec<_>>(),
            "wal_files_released": wal_files,
        });
        println!("{doc}");
    } else if !g.quiet || a.dry_run {
        print!("{}", output::forget_table(&plans, a.dry_run));
        let verb = if a.dry_run { "would remove" } else { "removed" };
        println!(
            "kept {} base backups, {verb} {}; WAL no kept backup needs: {} batches ({wal_files} files) {}",
            release.bases_kept,
            removed.len(),
            wal_gone.len(),
            if a.dry_run { "would go" } else { "released" }
        );
    }
    if a.prune {
        return prune_repo(g, &repo, &a.prune_options, a.dry_run, a.json).await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn dump(g: &Global, a: PgDumpArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let options = BackupOptions {
        tags: a.tag,
        hostname: a.host,
        ..BackupOptions::default()
    };
    let summary =
        tessera_postgres::dump::dump(&repo, &tools(&a.conn), &a.databases, a.globals, options)
            .await?;
    if !g.quiet {
        let s = &summary.snapshot.stats;
        println!(
            "dump {} of {}: {} read, {} new ({} stored) in {:.1}s",
            summary.id.short(),
            a.databases.join(", "),
            output::bytes(s.total_bytes),
            output::bytes(s.new_bytes),
            output::bytes(s.stored_bytes),
            s.duration_secs
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore_dump(g: &Global, a: PgRestoreDumpArgs) -> Result<ExitCode> {
    let repo = open(g).await?;
    let entry = dump_snapshot(&repo, &a.snapshot).await?;
    let streams = repo.streams(&entry.snapshot).await?;
    let name = match &a.from {
        Some(db) if db.ends_with(".sql") || db.ends_with(".dump") => db.clone(),
        Some(db) => tessera_postgres::dump::stream_name(db),
        None => {
            let dumps: Vec<_> = streams
                .iter()
                .filter(|(n, _)| n.ends_with(".dump"))
                .collect();
            match dumps.as_slice() {
                [(only, _)] => only.clone(),
                _ => bail!(
                    "snapshot {} holds {}: choose one with --from",
                    entry.id.short(),
                    streams
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    let bytes =
        tessera_postgres::dump::restore(&repo, &tools(&a.conn), &entry.snapshot, &name, &a.extra)
            .await?;
    if !g.quiet {
        eprintln!(
            "restored {name} ({}) from snapshot {}",
            output::bytes(bytes),
            entry.id.short()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn dump_snapshot(repo: &Repository, reference: &str) -> Result<tessera_core::SnapshotEntry> {
    let dumps: Vec<_> = repo
        .snapshots()
        .await?
        .into_iter()
        .filter(|e| e.snapshot.source_kind == KIND_DUMP)
        .collect();
    Ok(tessera_core::snapshot::resolve(&dumps, reference)
        .with_context(|| format!("no dump snapshot {reference}"))?
        .clone())
}
