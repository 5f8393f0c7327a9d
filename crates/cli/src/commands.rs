//! One function per command.

use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use tessera::{StorageOptions, open_storage};
use tessera_core::config::{LockMode, ObjectLock};
use tessera_core::id::PackId;
use tessera_core::retention::{self, Policy};
use tessera_core::snapshot::{Snapshot, SnapshotEntry};
use tessera_core::storage::{CountingBackend, FaultPlan, StorageClass};
use tessera_core::verified::VerifiedLog;
use tessera_core::{
    BackupOptions, BackupProgress, CheckOptions, ChunkerParams, Credential, DamagedSnapshot,
    InitOptions, KdfParams, ObjectKind, PruneOptions, ReadData, Repository, StreamSource,
    UnlockOptions,
};

use crate::args::{
    BackupArgs, CatWhat, CheckArgs, Cli, Command, CopyArgs, ForgetArgs, Global, InitArgs,
    KeyCommand, LockModeArg, OtherRepo, PruneOptionsArgs, RepairCommand, RestoreArgs,
};
use crate::credentials;
use crate::output::{self, SnapshotJson};

pub async fn run(cli: Cli) -> Result<ExitCode> {
    let print_requests = cli.global.print_requests;
    let result = dispatch(cli).await;
    if print_requests {
        print_request_counts();
    }
    result
}

/// The repositories this run opened, for [`interrupted`].
static OPENED: std::sync::Mutex<Vec<Repository>> = std::sync::Mutex::new(Vec::new());

/// Ends the write sessions of every repository this run opened (the run
/// was interrupted: its command future is gone) and says so.
pub async fn interrupted(signal: &str) {
    let opened: Vec<Repository> = OPENED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for repo in opened {
        match repo.interrupt_sessions().await {
            Ok(closed) if !closed.is_empty() => eprintln!(
                "tessera: {signal}: write session {} closed, nothing of it committed (prune need not wait for it)",
                closed
                    .iter()
                    .map(|s| s.short())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Ok(_) => {}
            Err(e) => eprintln!(
                "tessera: {signal}: a write session could not be closed ({e}); a prune waits for it until its lease runs out (prune --session-lease)"
            ),
        }
    }
}

/// The request counters of the repositories this run opened.
static COUNTERS: std::sync::Mutex<Vec<(String, Arc<CountingBackend>)>> =
    std::sync::Mutex::new(Vec::new());

fn print_request_counts() {
    let counters = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    for (location, counter) in counters.iter() {
        let c = counter.counts();
        eprintln!(
            "requests to {location}: {} PUT ({}), {} GET ({}), {} LIST, {} DELETE",
            c.put,
            output::bytes(c.put_bytes),
            c.get,
            output::bytes(c.get_bytes),
            c.list,
            c.delete
        );
    }
}

fn storage_options(g: &Global, lock: Option<ObjectLock>) -> Result<StorageOptions> {
    let faults = match g.faults.as_deref() {
        Some(plan) => Some(plan.parse::<FaultPlan>().map_err(anyhow::Error::msg)?),
        None => None,
    };
    Ok(StorageOptions {
        data_storage_class: g.data_storage_class.clone().map(StorageClass),
        object_lock: lock,
        faults,
        ..StorageOptions::default()
    })
}

/// Opens the repository at `loc`: retries, request counting, the object
/// lock its config asks for, and a local metadata cache for remote stores.
async fn open_at(
    g: &Global,
    loc: &str,
    credential: &Credential,
    cache: bool,
    unlock: &UnlockOptions,
) -> Result<Repository> {
    let mut storage = open_storage(loc, false, &storage_options(g, None)?)?;
    let mut repo = Repository::open_with(storage.backend.clone(), credential, unlock)
        .await
        .with_context(|| format!("opening repository {loc}"))?;
    if let Some(lock) = repo.config().object_lock
        && storage.remote
    {
        // New objects must carry the retention: open the store again
        // with it (the config is only known once the repository is open).
        storage = open_storage(loc, false, &storage_options(g, Some(lock))?)?;
        let backend = storage.backend.clone();
        repo = repo.map_backend(|_, _| backend)?;
    }
    COUNTERS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((loc.to_string(), storage.counter.clone()));
    if storage.remote
        && cache
        && !g.no_cache
        && let Some(base) = cache_base(g)
    {
        repo = repo.with_cache(&base)?;
    }
    // Last: the handle stops being unique here (map_backend and
    // with_cache above need it so).
    OPENED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(repo.clone());
    Ok(repo)
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => init(g, a).await,
        Command::Backup(a) => backup(g, a).await,
        Command::Snapshots(a) => snapshots(g, a.json).await,
        Command::Forget(a) => forget(g, &a).await,
        Command::Prune(a) => prune(g, &a.options, a.dry_run, a.json).await,
        Command::Copy(a) => copy(g, a).await,
        Command::Dump { snapshot, name } => dump(g, &snapshot, &name).await,
        Command::Restore(a) => restore(g, &a).await,
        Command::Ls {
            snapshot,
            path,
            long,
            no_recursive,
            json,
        } => crate::fs_commands::ls(g, &snapshot, path.as_deref(), long, !no_recursive, json).await,
        Command::Find {
            pattern,
            snapshots,
            json,
        } => crate::fs_commands::find(g, &pattern, &snapshots, json).await,
        Command::Diff {
            first,
            second,
            json,
        } => crate::fs_commands::diff(g, &first, &second, json).await,
        Command::Cat { what, id } => cat(g, what, id.as_deref()).await,
        Command::Check(a) => check(g, a).await,
        Command::Repair { command } => repair(g, command).await,
        Command::Key { command } => key(g, command).await,
        Command::Stats(a) => stats(g, a.json).await,
        Command::Pg { command } => crate::pg_commands::run(g, command).await,
    }
}

pub(crate) fn location(g: &Global) -> Result<&str> {
    g.repo
        .as_deref()
        .context("no repository given: use -r/--repo or set TESSERA_REPO")
}

pub(crate) async fn open(g: &Global) -> Result<Repository> {
    let loc = location(g)?;
    let credential = credentials::credential(g, false)?;
    open_at(g, loc, &credential, true, &unlock_options(g)).await
}

/// How the repository of `-r` is unlocked (`--key-id`).
fn unlock_options(g: &Global) -> UnlockOptions {
    UnlockOptions {
        key_id: g.key_id.clone(),
        max_kdf: None,
    }
}

/// Opens the repository without the metadata cache: check and repair look
/// at what the storage holds, not at a local copy of it.
async fn open_uncached(g: &Global) -> Result<Repository> {
    let loc = location(g)?;
    let credential = credentials::credential(g, false)?;
    open_at(g, loc, &credential, false, &unlock_options(g)).await
}

/// Opens a second repository (`copy --to`, `init --copy-params-from`).
async fn open_other(g: &Global, other: &OtherRepo, env: &str, what: &str) -> Result<Repository> {
    let credential = credentials::other_credential(other, env, what)?;
    open_at(
        g,
        &other.location,
        &credential,
        true,
        &UnlockOptions::default(),
    )
    .await
}

/// The snapshots `refs` name (ids, prefixes, `latest`), or all of them.
fn chosen_snapshots<'a>(
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

async fn copy(g: &Global, a: CopyArgs) -> Result<ExitCode> {
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
    // Identity of a snapshot across repositories (ids and tree ids differ).
    let same = |x: &Snapshot, y: &Snapshot| {
        x.time == y.time
            && x.hostname == y.hostname
            && x.username == y.username
            && x.paths == y.paths
            && x.tags == y.tags
            && x.source_kind == y.source_kind
    };
    let existing = target.snapshots().await?;
    let (mut copied, mut skipped) = (0, 0);
    for entry in chosen {
        if existing.iter().any(|e| same(&e.snapshot, &entry.snapshot)) {
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

pub(crate) fn show_progress(g: &Global) -> bool {
    !g.quiet && std::io::stderr().is_terminal()
}

async fn init(g: &Global, a: InitArgs) -> Result<ExitCode> {
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

pub(crate) fn parse_time(s: &str) -> Result<jiff::Timestamp> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let civil: jiff::civil::DateTime = s
        .parse()
        .with_context(|| format!("--time {s:?}: expected RFC 3339 or \"YYYY-MM-DD HH:MM:SS\""))?;
    Ok(civil.to_zoned(jiff::tz::TimeZone::system())?.timestamp())
}

async fn backup(g: &Global, a: BackupArgs) -> Result<ExitCode> {
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

async fn snapshots(g: &Global, json: bool) -> Result<ExitCode> {
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

/// Says which snapshot objects a listing left out and how to remove
/// them; exit status 3 (done, with warnings) when there are any.
pub(crate) fn warn_damaged(damaged: &[DamagedSnapshot]) -> ExitCode {
    for d in damaged {
        let short = d.name.get(..8).unwrap_or(&d.name);
        eprintln!(
            "warning: snapshots/{} cannot be read and is left out: {}; `tessera forget {short}` removes it",
            d.name, d.problem
        );
    }
    if damaged.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// `forget ID...`: removes the snapshot objects named, read or not.
async fn forget_named(g: &Global, repo: &Repository, refs: &[String]) -> Result<ExitCode> {
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

/// The retention decisions of `forget` (and `pg forget`) for the
/// snapshots of the kinds `kinds` accepts, after `--host` and `--tag`.
pub(crate) fn retention_plans(
    a: &ForgetArgs,
    all: &[SnapshotEntry],
    kinds: impl Fn(&str) -> bool,
) -> Result<Vec<retention::GroupPlan>> {
    let candidates: Vec<SnapshotEntry> = all
        .iter()
        .filter(|e| kinds(&e.snapshot.source_kind))
        .filter(|e| a.host.is_empty() || a.host.contains(&e.snapshot.hostname))
        .filter(|e| a.tag.is_empty() || a.tag.iter().any(|t| e.snapshot.tags.contains(t)))
        .cloned()
        .collect();
    Ok(retention::plan(
        &candidates,
        &policy_of(a),
        a.group_by,
        &jiff::tz::TimeZone::system(),
    )?)
}

/// The retention rules of `forget` (and `pg forget`).
fn policy_of(a: &ForgetArgs) -> Policy {
    Policy {
        last: a.keep_last,
        hourly: a.keep_hourly,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
        yearly: a.keep_yearly,
        within: a.keep_within,
        tags: a
            .keep_tag
            .iter()
            .map(|l| l.split(',').map(|t| t.trim().to_string()).collect())
            .collect(),
    }
}

async fn forget(g: &Global, a: &ForgetArgs) -> Result<ExitCode> {
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

async fn prune(g: &Global, o: &PruneOptionsArgs, dry_run: bool, json: bool) -> Result<ExitCode> {
    let repo = open(g).await?;
    prune_repo(g, &repo, o, dry_run, json).await
}

pub(crate) async fn prune_repo(
    g: &Global,
    repo: &Repository,
    o: &PruneOptionsArgs,
    dry_run: bool,
    json: bool,
) -> Result<ExitCode> {
    if !(0.0..=100.0).contains(&o.repack_threshold) {
        bail!(
            "--repack-threshold {} is not a percentage between 0 and 100",
            o.repack_threshold
        );
    }
    if o.session_lease.is_negative() {
        bail!("--session-lease must not be negative");
    }
    let options = PruneOptions {
        repack_threshold: o.repack_threshold / 100.0,
        dry_run,
        lease: o.session_lease,
    };
    let report = repo.prune(&options).await?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else if !g.quiet || dry_run || report.round_waiting.is_some() {
        print!("{}", output::prune_report(&report, o.session_lease));
    }
    Ok(ExitCode::SUCCESS)
}

async fn dump(g: &Global, reference: &str, name: &str) -> Result<ExitCode> {
    let repo = open(g).await?;
    let entry = repo.find_snapshot(reference).await?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    if entry.snapshot.source_kind == tessera_fs::SOURCE_KIND {
        crate::fs_commands::dump_file(&repo, &entry.snapshot, name, &mut out)
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
fn create_replacing(path: &std::path::Path) -> Result<std::fs::File> {
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

async fn restore(g: &Global, a: &RestoreArgs) -> Result<ExitCode> {
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

async fn cat(g: &Global, what: CatWhat, id: Option<&str>) -> Result<ExitCode> {
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

/// `restore --plan`: the data packs a full restore reads.
async fn restore_plan(repo: &Repository, a: &RestoreArgs) -> Result<ExitCode> {
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

/// The local cache directory (`--cache-dir`, else `$XDG_CACHE_HOME/tessera`
/// or `~/.cache/tessera`).
pub(crate) fn cache_base(g: &Global) -> Option<PathBuf> {
    g.cache_dir.clone().or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|d| d.join("tessera"))
    })
}

/// A file in the local cache directory of the repository `id`.
pub fn cache_file(g: &Global, id: &str, name: &str) -> Option<PathBuf> {
    Some(cache_base(g)?.join(id).join(name))
}

async fn check(g: &Global, a: CheckArgs) -> Result<ExitCode> {
    let repo = open_uncached(g).await?;
    let mut read_data = match &a.read_data_subset {
        Some(subset) => subset.parse()?,
        None if a.read_data || a.max_duration.is_some() => ReadData::All,
        None => ReadData::None,
    };
    // The record of verified packs: a time-boxed check reads the packs
    // verified longest ago first.
    let log = match cache_file(g, &repo.config().id, "check.db") {
        Some(path) if read_data != ReadData::None => Some(VerifiedLog::open(&path)?),
        _ => None,
    };
    let deadline = a
        .max_duration
        .map(|d| std::time::Instant::now() + d.unsigned_abs());
    let packs: Vec<PackId> = match &log {
        Some(_) => repo
            .backend()
            .list(ObjectKind::Pack)
            .await?
            .iter()
            .filter_map(|o| o.name.parse().ok())
            .collect(),
        None => Vec::new(),
    };
    if let (Some(log), Some(_)) = (&log, deadline) {
        read_data = ReadData::Packs(log.stalest_first(&read_data.select(&packs))?);
    }
    let reads = read_data != ReadData::None;
    let report = repo
        .check_with(CheckOptions {
            read_data,
            deadline,
        })
        .await?;
    let never = match log {
        Some(mut log) => {
            log.record(&report.packs_verified, jiff::Timestamp::now())?;
            Some(
                log.last_verified(&packs)?
                    .iter()
                    .filter(|t| t.is_none())
                    .count(),
            )
        }
        None => None,
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
        if let Some(never) = never {
            eprintln!("{never} packs have never been verified from this machine");
        }
    }
    Ok(if report.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn repair(g: &Global, command: RepairCommand) -> Result<ExitCode> {
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

async fn repair_snapshots(g: &Global, forget: bool, refs: &[String]) -> Result<ExitCode> {
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

fn kdf(memory: u32, iterations: u32) -> KdfParams {
    KdfParams {
        m_cost_kib: memory,
        t_cost: iterations,
        ..KdfParams::default()
    }
}

async fn key(g: &Global, command: KeyCommand) -> Result<ExitCode> {
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
fn write_new_secret_file(path: &std::path::Path, contents: &[u8]) -> Result<()> {
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

async fn stats(g: &Global, json: bool) -> Result<ExitCode> {
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
