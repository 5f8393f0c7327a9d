//! Physical base backups of a running cluster.
//!
//! `pg_basebackup -D - -Ft -X none` streams the data directory as one tar
//! over the replication protocol; the server starts and stops the backup,
//! forces a checkpoint, and verifies every page's checksum as it reads it
//! when the cluster has them (a bad page fails the backup). Each file is
//! chunked on its own, so the unchanged parts of relation files dedup
//! against every earlier full backup.
//!
//! With `-X none` the server waits until the WAL up to the backup's stop
//! point is archived before it ends the backup. A base backup snapshot is
//! committed only when the repository also holds every WAL segment from the
//! backup's start to its stop: before that the copy cannot be made
//! consistent, so it does not count.

use std::io::Read;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tessera_core::{BackupOptions, BackupProgress, BackupSummary, Repository};

use crate::tar_source::TarEntries;
use crate::wal::{Lsn, segments_between};
use crate::wal_archive::WalArchive;
use crate::{Error, KIND_BASE, PgTools, Result, cluster_path};

pub use crate::tar_source::PgFileMeta;

/// `source_meta` of a [`KIND_BASE`] snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseBackupMeta {
    /// The cluster's system identifier (decimal string in JSON).
    #[serde(with = "crate::system_id_string")]
    pub system_id: u64,
    /// `server_version_num` of the server backed up.
    pub version_num: u32,
    /// Timeline the backup started on.
    pub timeline: u32,
    /// WAL location where replay of this backup starts.
    pub start_lsn: Lsn,
    /// WAL location the restored copy must replay to before it is consistent.
    pub stop_lsn: Lsn,
    /// The first WAL segment needed.
    pub start_wal: String,
    /// The last WAL segment needed.
    pub stop_wal: String,
    /// Bytes per WAL segment.
    pub wal_segment_size: u64,
    /// Whether the cluster has page checksums (then every page was verified).
    pub data_checksums: bool,
    /// When the backup started (before `pg_basebackup` was run).
    pub start_time: jiff::Timestamp,
    /// When the backup had stopped (after `pg_basebackup` exited): a
    /// recovery target at or after this time can use this backup.
    pub stop_time: jiff::Timestamp,
}

/// Options of [`base_backup`].
#[derive(Clone, Debug)]
pub struct BaseBackupOptions {
    /// Programs and connection.
    pub tools: PgTools,
    /// Checkpoint at once (`fast`) or spread over `checkpoint_completion_target`.
    pub fast_checkpoint: bool,
    /// How long to wait for the backup's WAL to reach the archive.
    pub wal_timeout: Duration,
    /// Tags of the snapshot.
    pub tags: Vec<String>,
    /// Host name recorded (default: this machine's).
    pub hostname: Option<String>,
    /// Progress counters.
    pub progress: Option<Arc<BackupProgress>>,
}

impl Default for BaseBackupOptions {
    fn default() -> Self {
        BaseBackupOptions {
            tools: PgTools::default(),
            fast_checkpoint: true,
            wal_timeout: Duration::from_secs(300),
            tags: Vec::new(),
            hostname: None,
            progress: None,
        }
    }
}

/// Takes a base backup of the server `options.tools` connects to.
///
/// # Errors
/// [`Error::Tool`] when `psql` or `pg_basebackup` fail (with what they
/// printed: a page checksum failure, no replication permission, more than
/// one tablespace); [`Error::Incomplete`] when the WAL of the backup does
/// not reach the archive in time; repository errors. No snapshot is
/// written then.
pub async fn base_backup(
    repo: &Repository,
    options: BaseBackupOptions,
) -> Result<(BackupSummary, BaseBackupMeta)> {
    let info = options.tools.server_info()?;
    if info.archive_mode == "off" {
        return Err(Error::InvalidArgument(
            "archive_mode is off on the server: a base backup needs its WAL archived (set archive_mode = on and archive_command = 'tessera ... pg archive-wal %p')".into(),
        ));
    }
    let start_time = jiff::Timestamp::now();
    let mut cmd = options.tools.command("pg_basebackup");
    cmd.args(["-D", "-", "-F", "tar", "-X", "none", "-v", "--no-password"]);
    cmd.args([
        "-c",
        if options.fast_checkpoint {
            "fast"
        } else {
            "spread"
        },
    ]);
    if let Some(dsn) = &options.tools.dsn {
        cmd.args(["-d", dsn]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("running pg_basebackup", e))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(Error::Tool {
            program: "pg_basebackup".into(),
            detail: "started without pipes".into(),
        });
    };
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let entries = TarEntries::new(stdout);
    let tar_error = entries.error.clone();
    let backup_label = entries.backup_label.clone();
    let stored = repo.store_tree(entries, options.progress.clone()).await;
    let status = child
        .wait()
        .map_err(|e| Error::io("waiting for pg_basebackup", e))?;
    let log = log.join().unwrap_or_default();
    let tree = stored?;
    let failure = if !status.success() {
        Some(format!("{status}: {}", log.trim()))
    } else if let Some(e) = tar_error.lock().ok().and_then(|mut e| e.take()) {
        Some(format!("its tar stream: {e}"))
    } else {
        tree.warnings
            .first()
            .map(|w| format!("reading its tar stream: {w}"))
    }
    .map(|detail| Error::Tool {
        program: "pg_basebackup".into(),
        detail,
    });
    if let Some(e) = failure {
        repo.abandon_tree(tree).await;
        return Err(e);
    }
    let stop_time = jiff::Timestamp::now();
    let label = backup_label
        .lock()
        .map(|l| String::from_utf8_lossy(&l).into_owned())
        .unwrap_or_default();
    let points = wal_points(repo, &info, &label, options.wal_timeout).await;
    let (timeline, start_lsn, stop_lsn, needed) = match points {
        Ok(p) => p,
        Err(e) => {
            repo.abandon_tree(tree).await;
            return Err(e);
        }
    };
    let meta = BaseBackupMeta {
        system_id: info.system_id,
        version_num: info.version_num,
        timeline,
        start_lsn,
        stop_lsn,
        start_wal: needed.first().cloned().unwrap_or_default(),
        stop_wal: needed.last().cloned().unwrap_or_default(),
        wal_segment_size: info.wal_segment_size,
        data_checksums: info.data_checksums,
        start_time,
        stop_time,
    };
    let backup = BackupOptions {
        time: Some(stop_time),
        hostname: options.hostname,
        tags: options.tags,
        paths: vec![cluster_path(info.system_id)],
        source_kind: Some(KIND_BASE.into()),
        source_meta: serde_json::to_value(&meta)
            .map_err(|e| Error::InvalidArgument(format!("base backup metadata: {e}")))?,
        ..BackupOptions::default()
    };
    let summary = repo.commit_snapshot(tree, backup).await?;
    Ok((summary, meta))
}

/// The value after `key: ` on a line of a label or history file.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':').map(str::trim))
}

/// Where the backup starts and stops in the WAL (timeline, start and stop
/// positions), and the segments a restore of it needs, once all of them
/// are in the archive (waiting up to `timeout` for each).
async fn wal_points(
    repo: &Repository,
    info: &crate::tools::ServerInfo,
    label: &str,
    timeout: Duration,
) -> Result<(u32, Lsn, Lsn, Vec<String>)> {
    let (timeline, start_lsn, start_file) = parse_backup_label(label)?;
    // The server writes the stop point into the backup history file,
    // which it archives before the backup ends.
    let history = format!(
        "{start_file}.{:08X}.backup",
        start_lsn.0 % info.wal_segment_size
    );
    wait_for_wal(
        repo,
        info.system_id,
        std::slice::from_ref(&history),
        timeout,
    )
    .await?;
    let text = WalArchive::load(repo)
        .await?
        .read(repo, info.system_id, &history)
        .await?;
    let stop_lsn = parse_stop_lsn(&String::from_utf8_lossy(&text), &history)?;
    let needed = segments_between(timeline, start_lsn, stop_lsn, info.wal_segment_size);
    wait_for_wal(repo, info.system_id, &needed, timeout).await?;
    Ok((timeline, start_lsn, stop_lsn, needed))
}

/// Start timeline, start LSN and start segment from a `backup_label`:
/// "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)" and
/// "START TIMELINE: 1".
///
/// # Errors
/// [`Error::Tool`] when the label lacks them.
pub fn parse_backup_label(label: &str) -> Result<(u32, Lsn, String)> {
    let bad = || Error::Tool {
        program: "pg_basebackup".into(),
        detail: format!("the backup_label it sent does not name the start of the backup:\n{label}"),
    };
    let location = field(label, "START WAL LOCATION").ok_or_else(bad)?;
    let (lsn, file) = location.split_once(" (file ").ok_or_else(bad)?;
    let file = file.trim_end_matches(')').to_string();
    let timeline = field(label, "START TIMELINE")
        .and_then(|t| t.parse().ok())
        .or_else(|| u32::from_str_radix(file.get(..8)?, 16).ok())
        .ok_or_else(bad)?;
    Ok((timeline, lsn.parse()?, file))
}

/// The stop LSN from a backup history file ("STOP WAL LOCATION: 0/2000100 (file ...)").
///
/// # Errors
/// [`Error::Incomplete`] when the file lacks it.
pub fn parse_stop_lsn(history: &str, name: &str) -> Result<Lsn> {
    let location = field(history, "STOP WAL LOCATION")
        .and_then(|l| l.split(' ').next())
        .ok_or_else(|| {
            Error::Incomplete(format!(
                "the backup history file {name} has no STOP WAL LOCATION"
            ))
        })?;
    location.parse()
}

/// Waits until the archive holds every segment of `needed`.
async fn wait_for_wal(
    repo: &Repository,
    system: u64,
    needed: &[String],
    timeout: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let archive = WalArchive::load(repo).await?;
        let missing: Vec<&String> = needed
            .iter()
            .filter(|n| archive.get(system, n).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(Error::Incomplete(format!(
                "after {}s the archive still lacks WAL segment(s) {} of system {system}: is archive_command set to `tessera ... pg archive-wal %p` with this repository, and does it succeed (see the server log)?",
                timeout.as_secs(),
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The base backups of a repository with their metadata, oldest first.
///
/// # Errors
/// Listing snapshots; metadata that does not decode.
pub async fn list(repo: &Repository) -> Result<Vec<(tessera_core::SnapshotEntry, BaseBackupMeta)>> {
    let mut out = Vec::new();
    for entry in repo.snapshots().await? {
        if entry.snapshot.source_kind != KIND_BASE {
            continue;
        }
        let meta = base_meta(&entry)?;
        out.push((entry, meta));
    }
    out.sort_by_key(|(_, m)| m.stop_time);
    Ok(out)
}

/// The metadata of a base backup snapshot.
///
/// # Errors
/// [`tessera_core::Error::Corrupt`] when it does not decode.
pub fn base_meta(entry: &tessera_core::SnapshotEntry) -> Result<BaseBackupMeta> {
    serde_json::from_value(entry.snapshot.source_meta.clone()).map_err(|e| {
        tessera_core::Error::corrupt(
            format!("snapshot {}", entry.id.short()),
            format!("base backup metadata does not decode: {e}"),
        )
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_and_history_give_the_wal_range() {
        let label = "START WAL LOCATION: 0/A000028 (file 00000001000000000000000A)\n\
            CHECKPOINT LOCATION: 0/A000060\nBACKUP METHOD: streamed\nBACKUP FROM: primary\n\
            START TIME: 2026-11-22 11:58:44 UTC\nLABEL: pg_basebackup base backup\nSTART TIMELINE: 1\n";
        let (tl, start, file) = parse_backup_label(label).unwrap();
        assert_eq!(
            (tl, start.to_string(), file.as_str()),
            (1, "0/A000028".into(), "00000001000000000000000A")
        );
        assert!(parse_backup_label("LABEL: x").is_err());
        let history = format!(
            "{label}STOP WAL LOCATION: 0/A000138 (file 00000001000000000000000A)\nSTOP TIME: x\n"
        );
        assert_eq!(
            parse_stop_lsn(&history, "h").unwrap().to_string(),
            "0/A000138"
        );
        assert!(parse_stop_lsn(label, "h").is_err());
    }
}
