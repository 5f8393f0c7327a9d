//! What every command family shares: opening repositories (credentials,
//! storage options, caches, request counts), the record of what this run
//! opened (for an interrupted run), progress and time parsing, and the
//! retention and prune steps that both `forget` and `pg forget` run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tessera::{StorageOptions, open_storage};
use tessera_core::config::ObjectLock;
use tessera_core::retention::{self, Policy};
use tessera_core::snapshot::SnapshotEntry;
use tessera_core::storage::{CountingBackend, FaultPlan, StorageClass};
use tessera_core::{Credential, DamagedSnapshot, PruneOptions, Repository, UnlockOptions};

use crate::args::{ForgetArgs, Global, OtherRepo, PruneOptionsArgs};
use crate::credentials;
use crate::output::{self};

/// The repositories this run opened, for [`interrupted`].
pub(crate) static OPENED: std::sync::Mutex<Vec<Repository>> = std::sync::Mutex::new(Vec::new());

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
pub(crate) static COUNTERS: std::sync::Mutex<Vec<(String, Arc<CountingBackend>)>> =
    std::sync::Mutex::new(Vec::new());

pub(crate) fn print_request_counts() {
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

pub(crate) fn storage_options(g: &Global, lock: Option<ObjectLock>) -> Result<StorageOptions> {
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
pub(crate) async fn open_at(
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
pub(crate) fn unlock_options(g: &Global) -> UnlockOptions {
    UnlockOptions {
        key_id: g.key_id.clone(),
        max_kdf: None,
    }
}

/// Opens the repository without the metadata cache: check and repair look
/// at what the storage holds, not at a local copy of it.
pub(crate) async fn open_uncached(g: &Global) -> Result<Repository> {
    let loc = location(g)?;
    let credential = credentials::credential(g, false)?;
    open_at(g, loc, &credential, false, &unlock_options(g)).await
}

/// Opens a second repository (`copy --to`, `init --copy-params-from`).
pub(crate) async fn open_other(
    g: &Global,
    other: &OtherRepo,
    env: &str,
    what: &str,
) -> Result<Repository> {
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

pub(crate) fn show_progress(g: &Global) -> bool {
    !g.quiet && std::io::stderr().is_terminal()
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

/// The snapshots retention plans remove.
pub(crate) fn removed_by(
    plans: &[retention::GroupPlan],
) -> std::collections::HashSet<tessera_core::SnapshotId> {
    plans
        .iter()
        .flat_map(|p| &p.decisions)
        .filter(|d| !d.keep)
        .map(|d| d.id)
        .collect()
}

/// Removes these snapshot objects, naming the one that fails; nothing on
/// a dry run.
pub(crate) async fn forget_all<'a>(
    repo: &Repository,
    ids: impl IntoIterator<Item = &'a tessera_core::SnapshotId>,
    dry_run: bool,
) -> Result<()> {
    if dry_run {
        return Ok(());
    }
    for id in ids {
        repo.forget_snapshot(*id)
            .await
            .with_context(|| format!("removing snapshot {}", id.short()))?;
    }
    Ok(())
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

/// The retention rules of `forget` (and `pg forget`).
pub(crate) fn policy_of(a: &ForgetArgs) -> Policy {
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
