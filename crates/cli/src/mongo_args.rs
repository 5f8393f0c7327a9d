//! `tessera mongo …` arguments.

use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum MongoCommand {
    /// Back up databases and collections as BSON, with options, indexes, users and roles
    #[command(
        after_help = "Examples:\n  tessera mongo backup --uri mongodb://backup@db1,db2,db3/?replicaSet=rs0\n  tessera mongo backup --uri \"$URI\" --db app --collection logs.jan --json\n\nOn a replica set the oplog written during the dump is stored too, so a restore reaches one consistent point. Without --db or --collection every database but local and config is read. Exit status: 0 done, 1 failed (nothing committed), 2 usage."
    )]
    Backup(MongoBackupArgs),
    /// Restore a backup (default: the latest) onto a server
    #[command(
        after_help = "Examples:\n  tessera mongo restore --uri mongodb://localhost/\n  tessera mongo restore 4f2a9c1e --uri \"$URI\" --ns-include app.* --ns-from app.* --ns-to app_copy.*\n  tessera mongo restore --uri \"$URI\" --time \"2026-12-04 03:00:00\"   (point in time: a backup, then the archived oplog)\n\nA target that already holds a collection to restore is refused unless --drop is given. A point-in-time restore is refused across a gap in the oplog archive. Exit status: 0 done, 1 failed, 2 usage."
    )]
    Restore(MongoRestoreArgs),
    /// Archive a replica set's oplog continuously, a slice per interval (for point-in-time restores)
    #[command(
        after_help = "Examples:\n  tessera mongo oplog --uri mongodb://backup@db1,db2,db3/?replicaSet=rs0\n  tessera mongo oplog --uri \"$URI\" --slice 5m\n\nRuns until SIGTERM or SIGINT, then commits what the majority has confirmed and exits. Resumes after the last archived entry; if the oplog rolled over past it, the gap is reported and recorded (no point-in-time restore across it). Exit status: 0 stopped, 1 failed, 3 stopped after a gap."
    )]
    Oplog(MongoOplogArgs),
    /// List MongoDB backups, and the oplog each replica set's archive covers
    List {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove backups by policy, and the oplog slices no kept backup needs
    Forget(crate::args::ForgetArgs),
}

#[derive(Args, Debug)]
pub struct MongoOplogArgs {
    #[command(flatten)]
    pub uri: MongoUri,
    /// How often a slice is committed: the most a lost server can cost
    #[arg(long, default_value = "60s")]
    pub slice: jiff::SignedDuration,
    /// Tag each slice (repeatable)
    #[arg(long)]
    pub tag: Vec<String>,
    /// Host name to record (default: this machine's)
    #[arg(long)]
    pub host: Option<String>,
    /// Print each event as a JSON line
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MongoUri {
    /// The server: a mongodb:// or mongodb+srv:// URI (the driver's options apply)
    #[arg(long, env = "TESSERA_MONGODB_URI", hide_env_values = true)]
    pub uri: String,
}

#[derive(Args, Debug)]
pub struct MongoBackupArgs {
    #[command(flatten)]
    pub uri: MongoUri,
    /// Only this database (repeatable)
    #[arg(long = "db")]
    pub databases: Vec<String>,
    /// Only this collection, DB.COLLECTION (repeatable)
    #[arg(long = "collection")]
    pub collections: Vec<String>,
    /// Average chunk of a collection's stream, cut at document boundaries (default 4K): smaller stores less after scattered updates, for more index entries
    #[arg(long, value_parser = crate::args::parse_size)]
    pub chunk_size: Option<u64>,
    /// Tag the snapshot (repeatable)
    #[arg(long)]
    pub tag: Vec<String>,
    /// Host name to record (default: this machine's)
    #[arg(long)]
    pub host: Option<String>,
    /// Print a JSON summary
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MongoRestoreArgs {
    /// The backup (an id, or `latest`)
    #[arg(default_value = "latest")]
    pub snapshot: String,
    #[command(flatten)]
    pub uri: MongoUri,
    /// Drop each target collection that exists before restoring it
    #[arg(long)]
    pub drop: bool,
    /// Restore to this time (RFC 3339 or "YYYY-MM-DD HH:MM:SS"): the newest backup before it, then the archived oplog up to it (without an archive: the newest backup consistent by then)
    #[arg(long, conflicts_with = "ts")]
    pub time: Option<String>,
    /// Restore to this oplog position, SECS:INC (that entry included)
    #[arg(long)]
    pub ts: Option<String>,
    /// The replica set, where the repository holds several (for --time, --ts)
    #[arg(long)]
    pub set: Option<String>,
    /// Only these namespaces: DB, DB.*, DB.COLLECTION or * (repeatable)
    #[arg(long)]
    pub ns_include: Vec<String>,
    /// Rename a namespace (DB.COLLECTION or DB.*) to --ns-to (repeatable, in pairs)
    #[arg(long)]
    pub ns_from: Vec<String>,
    /// The new name of the --ns-from at the same position
    #[arg(long)]
    pub ns_to: Vec<String>,
    /// Leave users and roles out
    #[arg(long)]
    pub no_users: bool,
    /// Do not replay the oplog stored with the backup
    #[arg(long)]
    pub no_oplog_replay: bool,
    /// Print a JSON summary
    #[arg(long)]
    pub json: bool,
}
