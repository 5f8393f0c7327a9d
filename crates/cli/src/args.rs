//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::mongo_args::MongoCommand;
pub use crate::vm_args::VmCommand;

/// Tessera: deduplicating, encrypted backups.
#[derive(Parser, Debug)]
#[command(name = "tessera", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
pub struct Global {
    /// Repository location: a path, file://PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX,
    /// az://CONTAINER/PREFIX or memory://
    #[arg(short = 'r', long = "repo", env = "TESSERA_REPO", global = true)]
    pub repo: Option<String>,
    /// Read the password from the first line of this file
    #[arg(long, env = "TESSERA_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Run this shell command and use the first line it prints as the password
    #[arg(long, env = "TESSERA_PASSWORD_COMMAND", global = true)]
    pub password_command: Option<String>,
    /// Unlock with a key file instead of a password
    #[arg(long, env = "TESSERA_KEY_FILE", global = true)]
    pub key_file: Option<PathBuf>,
    /// Try only this key slot (id or prefix, as `key list` shows), even
    /// when its key derivation costs more than `key add` would choose
    /// (such slots are otherwise not tried: anyone who can write to the
    /// storage could plant one to slow every open down)
    #[arg(long, env = "TESSERA_KEY_ID", global = true)]
    pub key_id: Option<String>,
    /// No progress output
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Local cache directory (default: $XDG_CACHE_HOME/tessera or ~/.cache/tessera)
    #[arg(long, env = "TESSERA_CACHE_DIR", global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Do not keep a local copy of a remote repository's metadata
    #[arg(long, env = "TESSERA_NO_CACHE", global = true)]
    pub no_cache: bool,
    /// Storage class for data packs, e.g. GLACIER_IR, STANDARD_IA, DEEP_ARCHIVE
    /// (metadata stays in the default class)
    #[arg(long, env = "TESSERA_DATA_STORAGE_CLASS", global = true)]
    pub data_storage_class: Option<String>,
    /// Print the storage requests made (PUT/GET/LIST/DELETE) on standard error
    #[arg(long, global = true)]
    pub print_requests: bool,
    /// Inject storage faults, e.g. transient=0.1,torn=0.02,full-after=40
    /// (for tests and benchmarks)
    #[arg(long, env = "TESSERA_FAULTS", global = true, hide = true)]
    pub faults: Option<String>,
}

impl Command {
    /// Whether the command answers SIGINT and SIGTERM itself (finishing
    /// its work) instead of being stopped where it is.
    pub fn handles_signals(&self) -> bool {
        matches!(
            self,
            Command::Mongo {
                command: MongoCommand::Oplog(_)
            }
        )
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new repository
    Init(InitArgs),
    /// Back up data into a new snapshot
    Backup(BackupArgs),
    /// List snapshots
    Snapshots(JsonFlag),
    /// Remove snapshots by retention rules (their data goes with the next prune)
    Forget(ForgetArgs),
    /// Delete data no snapshot uses (safe while backups run)
    Prune(PruneArgs),
    /// Copy snapshots to another repository, storing there only the blobs it lacks
    Copy(CopyArgs),
    /// Write one file (or stream) of a snapshot to standard output
    Dump {
        /// Snapshot: id, unique prefix or `latest`
        snapshot: String,
        /// Path of the file in a filesystem snapshot, or a stream name
        name: String,
    },
    /// Restore a snapshot (or `SNAPSHOT:/sub/path`) into a directory
    Restore(RestoreArgs),
    /// List the entries of a filesystem snapshot
    Ls {
        /// Snapshot: id, unique prefix or `latest`
        snapshot: String,
        /// Directory (or file) in the snapshot to list below
        path: Option<PathBuf>,
        /// Mode, owner, size and time, like `ls -l`
        #[arg(long, short)]
        long: bool,
        /// Only the entries of PATH, not those below it
        #[arg(long)]
        no_recursive: bool,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Find entries whose name matches a glob in every snapshot
    Find {
        /// Glob matched against entry names, e.g. `*.conf` (a pattern with
        /// `/` is matched against the whole path)
        pattern: String,
        /// Only in these snapshots (repeatable)
        #[arg(long = "snapshot", short = 's')]
        snapshots: Vec<String>,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Show what changed between two snapshots
    Diff {
        /// The older snapshot
        first: String,
        /// The newer snapshot
        second: String,
        /// One JSON object per line
        #[arg(long)]
        json: bool,
    },
    /// Print a decrypted repository object as JSON (for debugging)
    Cat {
        /// config, snapshot, index or key
        what: CatWhat,
        /// Object id (or snapshot prefix / latest)
        id: Option<String>,
    },
    /// Verify the repository
    Check(CheckArgs),
    /// Rebuild repository structures from what is stored
    Repair {
        #[command(subcommand)]
        command: RepairCommand,
    },
    /// Manage key slots
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Show repository sizes and counts
    Stats(JsonFlag),
    /// PostgreSQL: base backups, WAL archive, point-in-time restore, dumps
    Pg {
        #[command(subcommand)]
        command: PgCommand,
    },
    /// VM disk images: fixed-chunk backups, dirty bitmaps, sparse and instant restores
    Vm {
        #[command(subcommand)]
        command: VmCommand,
    },
    /// MongoDB: consistent logical backups of replica sets and restores
    Mongo {
        #[command(subcommand)]
        command: MongoCommand,
    },
}

/// How `tessera pg` reaches the server.
#[derive(Args, Debug, Clone)]
pub struct PgConnection {
    /// Connection string or URI (libpq); default: PGHOST, PGPORT, PGUSER, PGPASSWORD, ...
    #[arg(long)]
    pub dsn: Option<String>,
    /// Directory of PostgreSQL's programs (pg_basebackup, psql, pg_ctl, ...); default: PATH
    #[arg(long, env = "TESSERA_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum PgCommand {
    /// Take a physical base backup of a running cluster (pg_basebackup)
    Backup(PgBackupArgs),
    /// archive_command: archive one WAL file (`tessera pg archive-wal %p`)
    ArchiveWal(ArchiveWalArgs),
    /// restore_command: restore one WAL file (`tessera pg restore-wal %f %p`)
    RestoreWal(RestoreWalArgs),
    /// Restore a data directory to a point in time and configure recovery
    Restore(PgRestoreArgs),
    /// List base backups and the WAL archived for each cluster
    List(JsonFlag),
    /// Remove base backups by retention rules, and the WAL only they needed
    Forget(ForgetArgs),
    /// Stream pg_dump of databases into one snapshot
    Dump(PgDumpArgs),
    /// Feed a dump from a snapshot to pg_restore (or psql for globals.sql)
    RestoreDump(PgRestoreDumpArgs),
    /// Serve archive-wal/restore-wal calls (started by them when needed)
    #[command(hide = true)]
    WalDaemon {
        /// Exit after this long without a call
        #[arg(long, env = "TESSERA_PG_DAEMON_IDLE", default_value = "60s")]
        idle: jiff::SignedDuration,
    },
}

#[derive(Args, Debug)]
pub struct PgBackupArgs {
    #[command(flatten)]
    pub conn: PgConnection,
    /// Let the server spread its checkpoint (gentler on I/O, slower to start)
    #[arg(long)]
    pub spread_checkpoint: bool,
    /// How long to wait for the backup's WAL to reach the archive
    #[arg(long, default_value = "5m")]
    pub wal_timeout: jiff::SignedDuration,
    /// Tag the snapshot (repeatable)
    #[arg(long)]
    pub tag: Vec<String>,
    /// Host name to record
    #[arg(long)]
    pub host: Option<String>,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
}

/// Options of the WAL commands.
#[derive(Args, Debug)]
pub struct WalCallArgs {
    /// The data directory (default: the current directory, where PostgreSQL runs these commands)
    #[arg(long)]
    pub pgdata: Option<PathBuf>,
    /// Open the repository in this process instead of asking the WAL daemon
    #[arg(long)]
    pub no_daemon: bool,
}

#[derive(Args, Debug)]
pub struct ArchiveWalArgs {
    /// The WAL file (%p)
    pub path: PathBuf,
    #[command(flatten)]
    pub call: WalCallArgs,
}

#[derive(Args, Debug)]
pub struct RestoreWalArgs {
    /// The WAL file name wanted (%f)
    pub name: String,
    /// Where to write it (%p)
    pub dest: PathBuf,
    #[command(flatten)]
    pub call: WalCallArgs,
}

#[derive(Args, Debug)]
pub struct PgRestoreArgs {
    /// The new data directory (must not exist or be empty)
    #[arg(long)]
    pub target: PathBuf,
    /// Recover to this time (RFC 3339, e.g. 2026-11-22T10:15:00Z)
    #[arg(long, group = "point")]
    pub time: Option<jiff::Timestamp>,
    /// Recover to this WAL location (e.g. 0/3000060)
    #[arg(long, group = "point")]
    pub lsn: Option<String>,
    /// Recover to this transaction id
    #[arg(long, group = "point")]
    pub xid: Option<String>,
    /// Recover to this restore point (pg_create_restore_point)
    #[arg(long, group = "point")]
    pub name: Option<String>,
    /// Base backup to start from (default: the newest before the target)
    #[arg(long)]
    pub backup: Option<String>,
    /// Cluster (system identifier) when the repository holds several
    #[arg(long)]
    pub system_id: Option<u64>,
    /// What the server does at the target
    #[arg(long, default_value = "promote")]
    pub target_action: TargetActionArg,
    /// Start the restored cluster on a private socket, wait for recovery to reach
    /// the target, run --verify-query, report, stop it
    #[arg(long)]
    pub verify: bool,
    /// Query run by --verify
    #[arg(long, default_value = "select count(*) from pg_database")]
    pub verify_query: String,
    /// How long --verify waits for recovery
    #[arg(long, default_value = "1h")]
    pub verify_timeout: jiff::SignedDuration,
    /// Directory of PostgreSQL's programs for --verify (default: the data
    /// directory's version under /usr/lib/postgresql, else PATH)
    #[arg(long, env = "TESSERA_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum TargetActionArg {
    Promote,
    Pause,
    Shutdown,
}

#[derive(Args, Debug)]
pub struct PgDumpArgs {
    #[command(flatten)]
    pub conn: PgConnection,
    /// Database to dump (repeatable)
    #[arg(long = "dbname", short = 'd', required = true)]
    pub databases: Vec<String>,
    /// Also dump roles and tablespaces (pg_dumpall --globals-only) as globals.sql
    #[arg(long)]
    pub globals: bool,
    /// Tag the snapshot (repeatable)
    #[arg(long)]
    pub tag: Vec<String>,
    /// Host name to record
    #[arg(long)]
    pub host: Option<String>,
}

#[derive(Args, Debug)]
pub struct PgRestoreDumpArgs {
    /// Snapshot: id, unique prefix or `latest` (the newest dump)
    pub snapshot: String,
    /// Which dump of the snapshot: a database name or globals.sql (default: the only one)
    #[arg(long)]
    pub from: Option<String>,
    #[command(flatten)]
    pub conn: PgConnection,
    /// More arguments for pg_restore (or psql), after `--`
    #[arg(last = true)]
    pub extra: Vec<String>,
}

#[derive(Args, Debug)]
pub struct JsonFlag {
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum CatWhat {
    Config,
    Snapshot,
    Index,
    Key,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Share this repository's chunker parameters and blob naming, so `copy`
    /// between the two sends only missing blobs (its password: --from-password-file,
    /// --from-password-command, TESSERA_FROM_PASSWORD or --from-key-file)
    #[arg(long, value_name = "REPO")]
    pub copy_params_from: Option<String>,
    /// Password file of --copy-params-from
    #[arg(long, env = "TESSERA_FROM_PASSWORD_FILE")]
    pub from_password_file: Option<PathBuf>,
    /// Password command of --copy-params-from
    #[arg(long, env = "TESSERA_FROM_PASSWORD_COMMAND")]
    pub from_password_command: Option<String>,
    /// Key file of --copy-params-from
    #[arg(long, env = "TESSERA_FROM_KEY_FILE")]
    pub from_key_file: Option<PathBuf>,
    /// zstd level for new blobs (0 = off)
    #[arg(long, default_value_t = tessera_core::config::DEFAULT_COMPRESSION_LEVEL)]
    pub compression: i32,
    /// Target data pack size in MiB
    #[arg(long, default_value_t = tessera_core::config::DEFAULT_DATA_PACK_SIZE / (1024 * 1024))]
    pub pack_size: u32,
    /// Chunk sizes as MIN,AVG,MAX in KiB (FastCDC)
    #[arg(long, value_parser = parse_chunk_sizes)]
    pub chunk_sizes: Option<(u32, u32, u32)>,
    /// Use fixed-size chunks of this many KiB (block devices)
    #[arg(long, conflicts_with = "chunk_sizes")]
    pub fixed_chunks: Option<u32>,
    /// Argon2id memory for the first key slot, in KiB
    #[arg(long, default_value_t = tessera_core::KdfParams::default().m_cost_kib)]
    pub kdf_memory: u32,
    /// Argon2id passes for the first key slot
    #[arg(long, default_value_t = tessera_core::KdfParams::default().t_cost)]
    pub kdf_iterations: u32,
    /// The bucket retains every object this many days (S3 object lock):
    /// new objects get this retention, and prune leaves packs alone until it ends
    #[arg(long)]
    pub object_lock_days: Option<u32>,
    /// Object lock mode of --object-lock-days
    #[arg(
        long,
        value_enum,
        default_value = "governance",
        requires = "object_lock_days"
    )]
    pub object_lock_mode: LockModeArg,
}

/// S3 object lock mode.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LockModeArg {
    /// Privileged users may shorten or lift the retention
    Governance,
    /// Nobody may delete before the retention ends
    Compliance,
}

fn parse_chunk_sizes(s: &str) -> Result<(u32, u32, u32), String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    match v.as_slice() {
        [a, b, c] => Ok((*a, *b, *c)),
        _ => Err("expected MIN,AVG,MAX in KiB".into()),
    }
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot (id, prefix or `latest`), optionally `:/sub/path` to restore only that
    pub snapshot: String,
    /// Directory to write into (created if missing)
    #[arg(long, short)]
    pub target: PathBuf,
    /// Restore only paths matching this gitignore-style pattern (repeatable)
    #[arg(long, short = 'i')]
    pub include: Vec<String>,
    /// Leave out paths matching this gitignore-style pattern (repeatable)
    #[arg(long, short = 'e')]
    pub exclude: Vec<String>,
    /// Remove entries of the target that the snapshot lacks (in the
    /// directories restored whole; entries the filters leave out stay)
    #[arg(long)]
    pub delete: bool,
    /// Print a JSON summary
    #[arg(long)]
    pub json: bool,
    /// Write nothing: list the data packs the restore reads and their
    /// bytes (what to thaw first when data packs are in an archive tier)
    #[arg(long)]
    pub plan: bool,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Files and directories to back up
    #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
    pub paths: Vec<PathBuf>,
    /// Read the data from standard input instead
    #[arg(long)]
    pub stdin: bool,
    /// Leave out paths matching a gitignore-style pattern (repeatable)
    #[arg(long, short = 'e')]
    pub exclude: Vec<String>,
    /// Read exclude patterns from a file, one per line (repeatable)
    #[arg(long)]
    pub exclude_file: Vec<PathBuf>,
    /// Leave out directories containing a file with this name (repeatable)
    #[arg(long)]
    pub exclude_if_present: Vec<String>,
    /// Leave out directories holding a valid CACHEDIR.TAG
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out files larger than this (e.g. 500M, 2G)
    #[arg(long, value_parser = parse_size)]
    pub exclude_larger_than: Option<u64>,
    /// Do not cross filesystem boundaries
    #[arg(long, short = 'x')]
    pub one_file_system: bool,
    /// Read every file: do not use the files cache
    #[arg(long)]
    pub no_cache: bool,
    /// Name of the stream read from standard input
    #[arg(long, default_value = "stdin")]
    pub stdin_name: String,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Host name to record (default: this machine's)
    #[arg(long = "host")]
    pub host: Option<String>,
    /// Snapshot time to record: RFC 3339, or "YYYY-MM-DD HH:MM:SS" local time
    #[arg(long)]
    pub time: Option<String>,
    /// Print a JSON summary
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Also read, decrypt and verify every blob
    #[arg(long)]
    pub read_data: bool,
    /// Read only part of the packs: N/M (part N of M; M runs cover all) or P% (a random P%)
    #[arg(long, value_name = "SUBSET")]
    pub read_data_subset: Option<String>,
    /// Stop starting pack reads after this long (e.g. 10m, 1h); reads the packs
    /// verified longest ago first (implies --read-data)
    #[arg(long, value_name = "DURATION")]
    pub max_duration: Option<jiff::SignedDuration>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum RepairCommand {
    /// Rebuild the index from the pack headers (after lost or damaged index segments)
    Index {
        /// Say what would change; write nothing
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        /// Read every pack whole and leave out of the index the blobs whose
        /// bytes do not open (what `check --read-data` reports as damaged)
        #[arg(long)]
        read_data: bool,
    },
    /// Rewrite snapshots that lost data without what was lost (tagged `repaired`);
    /// run `repair index` first when index segments are damaged, `repair
    /// index --read-data` when `check --read-data` finds damaged blobs
    Snapshots {
        /// Remove each original once its repaired snapshot is stored
        #[arg(long)]
        forget: bool,
        /// Snapshots to repair (default: all)
        snapshots: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// List key slots
    List(JsonFlag),
    /// Add a key slot (a password, or a new key file with --new-key-file)
    Add {
        /// Read the new password from this file
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// Create a key file at this path (must not exist) and add a slot for it
        #[arg(long, conflicts_with = "new_password_file")]
        new_key_file: Option<PathBuf>,
        /// Argon2id memory in KiB
        #[arg(long, default_value_t = tessera_core::KdfParams::default().m_cost_kib)]
        kdf_memory: u32,
        /// Argon2id passes
        #[arg(long, default_value_t = tessera_core::KdfParams::default().t_cost)]
        kdf_iterations: u32,
    },
    /// Remove a key slot (not the last one, not the one in use)
    Remove {
        /// Slot id or unique prefix
        id: String,
    },
    /// Change the password of the slot in use
    Passwd {
        /// Read the new password from this file
        #[arg(long)]
        new_password_file: Option<PathBuf>,
        /// Argon2id memory in KiB
        #[arg(long, default_value_t = tessera_core::KdfParams::default().m_cost_kib)]
        kdf_memory: u32,
        /// Argon2id passes
        #[arg(long, default_value_t = tessera_core::KdfParams::default().t_cost)]
        kdf_iterations: u32,
    },
}

/// `123`, `4K`, `500M`, `2G`, `1T` (powers of 1024).
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?} (K, M, G, T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map_err(|e| format!("{s:?}: {e}"))?
        .checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: too large"))
}

/// Retention rules. A snapshot is kept when any rule keeps it.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Remove these snapshots (ids or unique prefixes; a damaged snapshot
    /// object too) instead of applying a policy
    #[arg(value_name = "SNAPSHOT")]
    pub snapshots: Vec<String>,
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N hours that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_hourly: u32,
    /// Keep the newest snapshot of each of the last N days that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Keep the newest snapshot of each of the last N years that have one
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_yearly: u32,
    /// Keep snapshots younger than this before the group's newest (e.g. 1y6m, 14d12h)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<tessera_core::retention::KeepWithin>,
    /// Keep snapshots carrying all these tags (comma-separated; repeat for alternatives)
    #[arg(long, value_name = "TAGS")]
    pub keep_tag: Vec<String>,
    /// Apply the rules separately per group of: host, paths, tags (comma-separated; '' for one group)
    #[arg(long, default_value = "host,paths")]
    pub group_by: tessera_core::retention::GroupBy,
    /// Only consider snapshots of this host (repeatable)
    #[arg(long)]
    pub host: Vec<String>,
    /// Only consider snapshots carrying this tag (repeatable: any of them)
    #[arg(long)]
    pub tag: Vec<String>,
    /// Say what would be removed and why; remove nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Print the decisions as JSON
    #[arg(long)]
    pub json: bool,
    /// Prune afterwards (with the prune options below)
    #[arg(long)]
    pub prune: bool,
    #[command(flatten)]
    pub prune_options: PruneOptionsArgs,
}

/// `prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Say what would be deleted and repacked; change nothing
    #[arg(short = 'n', long)]
    pub dry_run: bool,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub options: PruneOptionsArgs,
}

/// Options shared by `prune` and `forget --prune`.
#[derive(Args, Debug)]
pub struct PruneOptionsArgs {
    /// Repack a pack when at least this share of its bytes is unused
    /// (percent, 0-100; 100 repacks nothing)
    #[arg(long, value_name = "PERCENT", default_value_t = 50.0)]
    pub repack_threshold: f64,
    /// A backup still running after this long (by the storage's clock) is
    /// expired, so its crash cannot hold deletion back forever
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub session_lease: jiff::SignedDuration,
}

/// `copy`: where to, and which snapshots.
#[derive(Args, Debug)]
pub struct CopyArgs {
    /// Target repository (its password: --to-password-file, --to-password-command,
    /// TESSERA_TO_PASSWORD or --to-key-file)
    #[arg(long, env = "TESSERA_TO_REPO")]
    pub to: String,
    /// Password file of the target
    #[arg(long, env = "TESSERA_TO_PASSWORD_FILE")]
    pub to_password_file: Option<PathBuf>,
    /// Password command of the target
    #[arg(long, env = "TESSERA_TO_PASSWORD_COMMAND")]
    pub to_password_command: Option<String>,
    /// Key file of the target
    #[arg(long, env = "TESSERA_TO_KEY_FILE")]
    pub to_key_file: Option<PathBuf>,
    /// Snapshots to copy (ids, prefixes or `latest`; default: all). Those the
    /// target already has (same time, host, user, paths, tags and kind) are skipped
    pub snapshots: Vec<String>,
}

/// A second repository and how to unlock it.
pub struct OtherRepo {
    pub location: String,
    pub password_file: Option<PathBuf>,
    pub password_command: Option<String>,
    pub key_file: Option<PathBuf>,
}
