//! Point-in-time restores: pick the base backup, write the data directory,
//! configure recovery, and (optionally) start the restored cluster on a
//! private port to prove it reaches the target.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_core::tree::{Node, NodeKind};
use tessera_core::{BlobId, Repository, SnapshotEntry};

use crate::base::{BaseBackupMeta, PgFileMeta};
use crate::wal::Lsn;
use crate::{Error, PgTools, Result};

/// Where recovery stops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Replay all archived WAL.
    Latest,
    /// `recovery_target_time`.
    Time(jiff::Timestamp),
    /// `recovery_target_lsn`.
    Lsn(Lsn),
    /// `recovery_target_xid`.
    Xid(String),
    /// `recovery_target_name` (a `pg_create_restore_point` name).
    Name(String),
}

/// What the server does at the target (`recovery_target_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TargetAction {
    /// End recovery and open for writes on a new timeline.
    #[default]
    Promote,
    /// Stay in recovery, paused (read-only queries work).
    Pause,
    /// Shut down.
    Shutdown,
}

impl TargetAction {
    fn setting(self) -> &'static str {
        match self {
            TargetAction::Promote => "promote",
            TargetAction::Pause => "pause",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// The base backup to restore for `target`: the newest whose stop lies
/// before a time or LSN target, the newest otherwise.
pub fn choose_base<'a>(
    bases: &'a [(SnapshotEntry, BaseBackupMeta)],
    target: &RecoveryTarget,
) -> Option<&'a (SnapshotEntry, BaseBackupMeta)> {
    bases
        .iter()
        .filter(|(_, m)| match target {
            RecoveryTarget::Time(t) => m.stop_time <= *t,
            RecoveryTarget::Lsn(l) => m.stop_lsn <= *l,
            _ => true,
        })
        .max_by_key(|(_, m)| m.stop_time)
}

/// Figures of a data directory restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreSummary {
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
}

struct PlannedFile {
    path: PathBuf,
    size: u64,
    meta: PgFileMeta,
    content: Vec<BlobId>,
}

/// Creates the directories, empty files (at their final size) and
/// symlinks of base backup `entry` under `target`; returns the files to
/// fill and the directories, each with its metadata to set at the end.
async fn lay_out(
    repo: &Repository,
    entry: &SnapshotEntry,
    target: &Path,
) -> Result<(Vec<PlannedFile>, Vec<(PathBuf, PgFileMeta)>)> {
    let root = repo.read_tree(entry.snapshot.tree, "snapshot root").await?;
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut parts: Vec<&Node> = root.nodes.iter().collect();
    parts.sort_by_key(|n| n.name.parse::<u64>().unwrap_or(u64::MAX));
    for part in parts {
        let NodeKind::Dir { subtree: tree } = &part.kind else {
            return Err(Error::InvalidArgument(format!(
                "snapshot {} is not a base backup",
                entry.id.short()
            )));
        };
        let mut pending = vec![(*tree, target.to_path_buf())];
        while let Some((id, dir)) = pending.pop() {
            let tree = repo.read_tree(id, "base backup tree").await?;
            for node in tree.nodes {
                let name = String::from_utf8_lossy(node.name_bytes()).into_owned();
                let path = dir.join(&name);
                let meta: Option<PgFileMeta> = node.meta.parse().ok();
                match node.kind {
                    NodeKind::Dir { subtree: tree } => {
                        mkdir(&path, 0o700)?;
                        if let Some(m) = meta {
                            dirs.push((path.clone(), m));
                        }
                        pending.push((tree, path));
                    }
                    NodeKind::Stream { content } => {
                        // Created new: never through something already
                        // there (a symlink another part of the backup made).
                        let file = std::fs::OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .open(&path)
                            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                        file.set_len(node.size)
                            .map_err(|e| Error::io(format!("sizing {}", path.display()), e))?;
                        files.push(PlannedFile {
                            path,
                            size: node.size,
                            meta: meta.unwrap_or_default(),
                            content,
                        });
                    }
                    _ => {
                        if let Some(PgFileMeta {
                            link: Some(link), ..
                        }) = meta
                        {
                            std::os::unix::fs::symlink(&link, &path).map_err(|e| {
                                Error::io(format!("creating symlink {}", path.display()), e)
                            })?;
                        }
                    }
                }
            }
        }
    }
    Ok((files, dirs))
}

/// Writes the data directory of base backup `entry` into `target` (which
/// must not exist or be empty). Blobs are read once each, in pack order,
/// and written in place into every file that holds them.
///
/// # Errors
/// A non-empty target; repository errors; writing files.
pub async fn restore_data_directory(
    repo: &Repository,
    entry: &SnapshotEntry,
    target: &Path,
) -> Result<RestoreSummary> {
    if target.exists()
        && std::fs::read_dir(target)
            .map_err(|e| Error::io(format!("reading {}", target.display()), e))?
            .next()
            .is_some()
    {
        return Err(Error::InvalidArgument(format!(
            "{} is not empty: restore a data directory into a new or empty directory",
            target.display()
        )));
    }
    std::fs::create_dir_all(target)
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    mkdir(target, 0o700)?;
    let (files, mut dirs) = lay_out(repo, entry, target).await?;
    // Where each blob goes: one index lookup for every file's chunks.
    let all: Vec<BlobId> = files
        .iter()
        .flat_map(|f| f.content.iter().copied())
        .collect();
    let mut sizes = repo.blob_sizes(&all).await?.into_iter();
    let mut uses: HashMap<BlobId, Vec<(usize, u64)>> = HashMap::new();
    for (index, f) in files.iter().enumerate() {
        let mut offset = 0u64;
        for (id, size) in f.content.iter().zip(sizes.by_ref()) {
            let size = size.ok_or_else(|| tessera_core::Error::BlobNotIndexed {
                blob: id.short(),
                referrer: f.path.display().to_string(),
            })?;
            uses.entry(*id).or_default().push((index, offset));
            offset += u64::from(size);
        }
    }
    let paths: Arc<Vec<PathBuf>> = Arc::new(files.iter().map(|f| f.path.clone()).collect());
    let uses = Arc::new(uses);
    let ids: Vec<BlobId> = uses.keys().copied().collect();
    let deliver = {
        let (paths, uses) = (paths.clone(), uses.clone());
        move |id: BlobId, plain: &[u8]| -> Result<()> {
            for (file, offset) in uses.get(&id).into_iter().flatten() {
                let path = &paths[*file];
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                f.write_all_at(plain, *offset)
                    .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
            }
            Ok(())
        }
    };
    repo.fetch_blobs(ids, &format!("base backup {}", entry.id.short()), deliver)
        .await?;
    let as_root = is_root();
    let mut summary = RestoreSummary::default();
    for f in &files {
        set_meta(&f.path, &f.meta, as_root)?;
        summary.files += 1;
        summary.bytes += f.size;
    }
    // Directories after their contents; the deepest first.
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, meta) in &dirs {
        set_meta(path, meta, as_root)?;
    }
    if as_root && let Some(f) = files.first() {
        chown(target, f.meta.uid, f.meta.gid)?;
    }
    Ok(summary)
}

/// Whether this process runs as root (the servers [`verify`] starts then
/// run as the data directory's owner).
pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// Creates the directory `path` (its parent exists), or keeps the one
/// there: a base backup's parts may each hold entries of one directory.
/// Anything else there (a symlink an earlier part made, pointing
/// anywhere) is refused: the restore never writes through it.
fn mkdir(path: &Path, mode: u32) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Error::InvalidArgument(format!(
                "{}: the backup holds it both as a directory and as a symlink or file: refusing to restore through it",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?,
        Err(e) => return Err(Error::io(format!("checking {}", path.display()), e)),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .map_err(|e| Error::io(format!("setting the owner of {}", path.display()), e))
}

fn set_meta(path: &Path, meta: &PgFileMeta, as_root: bool) -> Result<()> {
    if as_root {
        chown(path, meta.uid, meta.gid)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode & 0o7777))
        .map_err(|e| Error::io(format!("setting the mode of {}", path.display()), e))?;
    let mtime = std::time::UNIX_EPOCH + Duration::from_secs(meta.mtime);
    std::fs::File::open(path)
        .and_then(|f| f.set_modified(mtime))
        .map_err(|e| Error::io(format!("setting the time of {}", path.display()), e))
}

/// Configures recovery in a restored data directory: the settings in
/// `postgresql.auto.conf` (which overrides `postgresql.conf`) and
/// `recovery.signal`.
///
/// # Errors
/// Writing the files.
pub fn configure_recovery(
    dir: &Path,
    restore_command: &str,
    target: &RecoveryTarget,
    action: TargetAction,
) -> Result<()> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let mut conf = format!(
        "\n# Added by tessera pg restore\nrestore_command = {}\nrecovery_target_timeline = 'latest'\n",
        quote(restore_command)
    );
    let setting = match target {
        RecoveryTarget::Latest => None,
        // PostgreSQL reads ISO 8601 with a space and a numeric zone.
        RecoveryTarget::Time(t) => Some((
            "recovery_target_time",
            t.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        )),
        RecoveryTarget::Lsn(l) => Some(("recovery_target_lsn", l.to_string())),
        RecoveryTarget::Xid(x) => Some(("recovery_target_xid", x.clone())),
        RecoveryTarget::Name(n) => Some(("recovery_target_name", n.clone())),
    };
    if let Some((key, value)) = setting {
        conf.push_str(&format!(
            "{key} = {}\nrecovery_target_action = '{}'\n",
            quote(&value),
            action.setting()
        ));
    }
    let auto = dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&conf);
    std::fs::write(&auto, text).map_err(|e| Error::io(format!("writing {}", auto.display()), e))?;
    let signal = dir.join("recovery.signal");
    std::fs::write(&signal, b"")
        .map_err(|e| Error::io(format!("writing {}", signal.display()), e))?;
    if is_root() {
        let owner = std::fs::metadata(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        use std::os::unix::fs::MetadataExt;
        chown(&auto, owner.uid(), owner.gid())?;
        chown(&signal, owner.uid(), owner.gid())?;
    }
    Ok(())
}

/// What a verification run found.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// Seconds from start until recovery reached the target.
    pub recovery_secs: f64,
    /// `pg_is_in_recovery()` at the end (true when paused).
    pub in_recovery: bool,
    /// The answer to the verification query (rows, `|` between fields).
    pub answer: String,
    /// The last transaction replayed, as the server reports it.
    pub last_replayed: String,
}

/// Starts the restored cluster in `dir` on a private socket (no TCP, WAL
/// archiving off so it cannot write into the source's archive), waits until
/// recovery reaches its target, runs `query`, and stops it again.
///
/// Run as root, the server runs as the owner of `dir`. `env` is set for the
/// server (and so for its `restore_command`): a value sets a variable,
/// `None` removes it (a secret of this process that must not reach a
/// process of another user).
///
/// # Errors
/// The server does not start, recovery fails or does not finish within
/// `timeout`, the query fails; each with the end of the server log.
pub fn verify(
    dir: &Path,
    tools: &PgTools,
    action: TargetAction,
    query: &str,
    timeout: Duration,
    env: &[(String, Option<String>)],
) -> Result<VerifyReport> {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let owner =
        std::fs::metadata(dir).map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
    let work = tempdir_near(dir)?;
    if is_root() {
        chown(&work, owner.uid(), owner.gid())?;
    }
    let log = work.join("server.log");
    let port = 20000 + (std::process::id() % 20000);
    let as_owner = |mut cmd: Command| {
        if is_root() {
            cmd.uid(owner.uid()).gid(owner.gid());
        }
        for (k, v) in env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    };
    let options = format!(
        "-c port={port} -c listen_addresses='' -c unix_socket_directories='{}' -c archive_mode=off",
        work.display()
    );
    let started = Instant::now();
    let mut start = as_owner(tools.command("pg_ctl"));
    start
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t"])
        .arg(timeout.as_secs().to_string());
    start.args(["-o", &options, "start"]);
    let tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    };
    if let Err(e) = crate::tools::run(start, "pg_ctl start") {
        let _ = std::fs::remove_dir_all(&work);
        return Err(Error::Tool {
            program: "the restored cluster".into(),
            detail: format!("{e}\nserver log:\n{}", tail()),
        });
    }
    let mut local = tools.clone();
    local.dsn = Some(format!(
        "host={} port={port} dbname=postgres user={}",
        work.display(),
        superuser(dir)
    ));
    let psql = |sql: &str| -> Result<String> {
        let mut cmd = as_owner(local.command("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        cmd.args(["-d", local.dsn.as_deref().unwrap_or_default()]);
        crate::tools::run(cmd, "psql").map(|s| s.trim().to_string())
    };
    let result = (|| -> Result<VerifyReport> {
        loop {
            let done = match action {
                TargetAction::Promote => psql("select pg_is_in_recovery()").is_ok_and(|s| s == "f"),
                TargetAction::Pause => {
                    psql("select pg_get_wal_replay_pause_state()").is_ok_and(|s| s == "paused")
                }
                TargetAction::Shutdown => !dir.join("postmaster.pid").exists(),
            };
            if done {
                break;
            }
            if started.elapsed() > timeout {
                return Err(Error::Tool {
                    program: "the restored cluster".into(),
                    detail: format!(
                        "recovery did not reach its target within {}s\nserver log:\n{}",
                        timeout.as_secs(),
                        tail()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let recovery_secs = started.elapsed().as_secs_f64();
        if action == TargetAction::Shutdown {
            return Ok(VerifyReport {
                recovery_secs,
                in_recovery: false,
                answer: String::new(),
                last_replayed: "(the server shut down at the target, as asked)".into(),
            });
        }
        let answer = psql(query).map_err(|e| Error::Tool {
            program: "the verification query".into(),
            detail: format!("{e}\nserver log:\n{}", tail()),
        })?;
        Ok(VerifyReport {
            recovery_secs,
            in_recovery: psql("select pg_is_in_recovery()")? == "t",
            answer,
            last_replayed: psql("select coalesce(pg_last_xact_replay_timestamp()::text, 'none')")?,
        })
    })();
    if dir.join("postmaster.pid").exists() {
        let mut stop = as_owner(tools.command("pg_ctl"));
        stop.arg("-D").arg(dir).args(["-m", "fast", "-w", "stop"]);
        let _ = crate::tools::run(stop, "pg_ctl stop");
    }
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The superuser of a restored cluster: the owner's name from the password
/// database is what `initdb` defaults to; `postgres` otherwise.
fn superuser(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(dir).map(|m| m.uid()).unwrap_or(0);
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_string())
            })
        })
        .filter(|n| n != "root")
        .unwrap_or_else(|| "postgres".into())
}

/// A fresh private directory beside `dir` (for the server's socket and log).
fn tempdir_near(dir: &Path) -> Result<PathBuf> {
    let parent = dir.parent().unwrap_or(Path::new("/tmp"));
    let name = format!(
        ".tessera-verify-{}-{}",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    );
    let path = parent.join(name);
    mkdir(&path, 0o700)?;
    Ok(path)
}

/// The `bin` directory of PostgreSQL `major` (`PG_VERSION` of a data
/// directory) on Debian, when no other was given.
pub fn debian_bin(dir: &Path) -> Option<PathBuf> {
    let major = std::fs::read_to_string(dir.join("PG_VERSION")).ok()?;
    let bin = PathBuf::from(format!("/usr/lib/postgresql/{}/bin", major.trim()));
    bin.join("pg_ctl").exists().then_some(bin)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tessera_core::tree::Meta;
    use tessera_core::{
        BackupOptions, Content, Credential, Entry, InitOptions, KdfParams, ObjectStoreBackend,
        Repository,
    };

    use super::*;

    fn meta(mode: u32, link: Option<&str>) -> Meta {
        Meta::to_json(&PgFileMeta {
            mode,
            uid: 0,
            gid: 0,
            mtime: 1,
            link: link.map(str::to_string),
        })
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_symlink_in_one_part_is_never_written_through_by_another() {
        let scratch = tempfile::tempdir().unwrap();
        let outside = scratch.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let repo = Repository::init(
            Arc::new(ObjectStoreBackend::memory()),
            &Credential::password("pw"),
            InitOptions {
                kdf: KdfParams::insecure_fast(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Part 0 makes `x` a symlink out of the data directory; part 1
        // then names `x` a directory holding a file.
        let target_link = outside.to_string_lossy().into_owned();
        let entries = vec![
            Entry::Dir {
                name: b"0".to_vec(),
                meta: Meta::null(),
            },
            Entry::Leaf {
                name: b"x".to_vec(),
                meta: meta(0o777, Some(&target_link)),
            },
            Entry::EndDir,
            Entry::Dir {
                name: b"1".to_vec(),
                meta: Meta::null(),
            },
            Entry::Dir {
                name: b"x".to_vec(),
                meta: meta(0o700, None),
            },
            Entry::File {
                name: b"f".to_vec(),
                meta: meta(0o600, None),
                content: Content::Read(Box::new(&b"planted"[..])),
                on_stored: None,
            },
            Entry::EndDir,
            Entry::EndDir,
        ];
        let stored = repo.store_tree(entries.into_iter(), None).await.unwrap();
        let options = BackupOptions {
            source_kind: Some(crate::KIND_BASE.into()),
            paths: vec!["/forged".into()],
            ..Default::default()
        };
        let done = repo.commit_snapshot(stored, options).await.unwrap();
        let entry = repo.find_snapshot(&done.id.to_hex()).await.unwrap();
        let target = scratch.path().join("data");
        let err = restore_data_directory(&repo, &entry, &target)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("refusing to restore through it"), "{err}");
        assert!(err.contains("/data/x"), "{err}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }
}
