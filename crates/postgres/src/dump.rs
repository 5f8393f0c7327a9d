//! Logical dumps: `pg_dump -Fc -Z0` of each database streamed straight into
//! one snapshot (no temporary files), and back into `pg_restore`.
//!
//! Uncompressed custom-format dumps of an unchanged database differ only
//! by a timestamp, so nightly dumps dedup almost entirely; the engine
//! compresses what it stores. Roles and tablespaces (`pg_dumpall
//! --globals-only`) go in the same snapshot as `globals.sql`.

use std::io::Read;
use std::process::{Child, ChildStdout, Stdio};

use tessera_core::{BackupOptions, BackupSummary, Repository, Snapshot, StreamSource};

use crate::{Error, KIND_DUMP, PgTools, Result};

/// Name of the stream holding `pg_dumpall --globals-only`.
pub const GLOBALS: &str = "globals.sql";

/// The stream name of database `db`'s dump.
pub fn stream_name(db: &str) -> String {
    format!("{db}.dump")
}

/// Dumps `databases` (and the globals, when `globals`) into one snapshot.
///
/// # Errors
/// [`Error::Tool`] when a `pg_dump` fails (then no snapshot is written);
/// repository errors.
pub async fn dump(
    repo: &Repository,
    tools: &PgTools,
    databases: &[String],
    globals: bool,
    mut options: BackupOptions,
) -> Result<BackupSummary> {
    if databases.is_empty() {
        return Err(Error::InvalidArgument(
            "name at least one database to dump (--dbname)".into(),
        ));
    }
    let mut streams = Vec::new();
    for db in databases {
        let mut cmd = tools.command("pg_dump");
        cmd.args(["-F", "c", "-Z", "0", "--no-password"]);
        match &tools.dsn {
            // A later -d would replace the connection string: pass the
            // database as a connection parameter instead.
            Some(dsn) => cmd.arg("-d").arg(with_dbname(dsn, db)),
            None => cmd.arg("-d").arg(db),
        };
        streams.push(StreamSource::new(
            stream_name(db),
            ToolOutput::spawn(cmd, "pg_dump", db)?,
        ));
    }
    if globals {
        let mut cmd = tools.command("pg_dumpall");
        cmd.args(["--globals-only", "--no-password"]);
        if let Some(dsn) = &tools.dsn {
            cmd.arg("-d").arg(dsn);
        }
        streams.push(StreamSource::new(
            GLOBALS,
            ToolOutput::spawn(cmd, "pg_dumpall", "globals")?,
        ));
    }
    options.source_kind = Some(KIND_DUMP.into());
    options.paths = databases.to_vec();
    let summary = repo.backup(streams, options).await.map_err(|e| match e {
        // The reader's error says which program failed and what it printed.
        tessera_core::Error::Io { source, .. } if source.kind() == std::io::ErrorKind::Other => {
            Error::Tool {
                program: "pg_dump".into(),
                detail: source.to_string(),
            }
        }
        e => e.into(),
    })?;
    Ok(summary)
}

/// `dsn` with `dbname` set to `db`, for a key=value string or a URI.
fn with_dbname(dsn: &str, db: &str) -> String {
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        let sep = if dsn.contains('?') { '&' } else { '?' };
        format!("{dsn}{sep}dbname={db}")
    } else {
        format!(
            "{dsn} dbname='{}'",
            db.replace('\\', "\\\\").replace('\'', "\\'")
        )
    }
}

/// Feeds stream `name` of a dump snapshot to `pg_restore` (custom dumps)
/// or `psql` (`globals.sql`), connected to `tools`, with `extra` arguments.
///
/// # Errors
/// [`Error::Tool`] when the program fails; repository errors.
pub async fn restore(
    repo: &Repository,
    tools: &PgTools,
    snapshot: &Snapshot,
    name: &str,
    extra: &[String],
) -> Result<u64> {
    let (program, mut cmd) = if name.ends_with(".sql") {
        let mut c = tools.command("psql");
        c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1"]);
        ("psql", c)
    } else {
        let mut c = tools.command("pg_restore");
        c.arg("--no-password");
        ("pg_restore", c)
    };
    if let Some(dsn) = &tools.dsn {
        cmd.arg("-d").arg(dsn);
    }
    cmd.args(extra);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("running {program}"), e))?;
    let mut stdin = child.stdin.take().ok_or_else(|| Error::Tool {
        program: program.into(),
        detail: "started without a pipe".into(),
    })?;
    let written = repo.restore_stream(snapshot, name, &mut stdin).await;
    drop(stdin);
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("waiting for {program}"), e))?;
    crate::tools::check_exit(program, &out)?;
    Ok(written?)
}

/// A program's standard output as a stream; at its end, the program's exit
/// status: a failure is a read error, so the backup fails rather than store
/// a truncated dump.
struct ToolOutput {
    child: Child,
    out: ChildStdout,
    what: String,
    stderr: std::thread::JoinHandle<String>,
}

impl ToolOutput {
    fn spawn(mut cmd: std::process::Command, program: &str, what: &str) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running {program}"), e))?;
        let (Some(out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(Error::Tool {
                program: program.into(),
                detail: "started without pipes".into(),
            });
        };
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(ToolOutput {
            child,
            out,
            what: format!("{program} of {what}"),
            stderr,
        })
    }
}

impl Read for ToolOutput {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.out.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let status = self.child.wait()?;
            if !status.success() {
                let stderr = std::mem::replace(&mut self.stderr, std::thread::spawn(String::new));
                let text = stderr.join().unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "{} failed ({status}): {}",
                    self.what,
                    text.trim()
                )));
            }
        }
        Ok(n)
    }
}

impl Drop for ToolOutput {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
