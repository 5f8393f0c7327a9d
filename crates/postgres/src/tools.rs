//! Running PostgreSQL's programs (`psql`, `pg_basebackup`, `pg_dump`,
//! `pg_ctl`, ...): they speak libpq, so `--dsn` and the `PG*` environment
//! variables work as with any PostgreSQL tool.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// Where PostgreSQL's programs are and how to connect.
#[derive(Clone, Debug, Default)]
pub struct PgTools {
    /// Directory of the programs (default: found on `PATH`).
    pub bin: Option<PathBuf>,
    /// Connection string or URI (`host=... port=...`, `postgresql://...`);
    /// default: libpq's environment (`PGHOST`, `PGPORT`, `PGUSER`, ...).
    pub dsn: Option<String>,
}

impl PgTools {
    /// A command running `program` from [`PgTools::bin`] or `PATH`.
    pub fn command(&self, program: &str) -> Command {
        match &self.bin {
            Some(dir) => Command::new(dir.join(program)),
            None => Command::new(program),
        }
    }

    /// `psql` running `sql` against the server; its output rows, `|` between fields.
    ///
    /// # Errors
    /// [`Error::Tool`] with what psql printed.
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<String>>> {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql]);
        if let Some(dsn) = &self.dsn {
            cmd.args(["-d", dsn]);
        }
        let out = run(cmd, "psql")?;
        Ok(out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect())
    }

    /// The cluster's identity and settings that base backups record.
    ///
    /// # Errors
    /// As [`PgTools::query`]; an answer that does not parse.
    pub fn server_info(&self) -> Result<ServerInfo> {
        let rows = self.query(
            "select system_identifier, current_setting('server_version_num'), \
             (select setting from pg_settings where name = 'wal_segment_size'), \
             current_setting('data_checksums'), current_setting('archive_mode') \
             from pg_control_system()",
        )?;
        let bad = || Error::Tool {
            program: "psql".into(),
            detail: format!("unexpected answer to the server information query: {rows:?}"),
        };
        let row = rows.first().filter(|r| r.len() == 5).ok_or_else(bad)?;
        Ok(ServerInfo {
            system_id: row[0].parse().map_err(|_| bad())?,
            version_num: row[1].parse().map_err(|_| bad())?,
            wal_segment_size: row[2].parse().map_err(|_| bad())?,
            data_checksums: row[3] == "on",
            archive_mode: row[4].clone(),
        })
    }
}

/// What a base backup needs to know of the server.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// Database system identifier.
    pub system_id: u64,
    /// `server_version_num`, e.g. 150010.
    pub version_num: u32,
    /// Bytes per WAL segment.
    pub wal_segment_size: u64,
    /// Whether data pages carry checksums.
    pub data_checksums: bool,
    /// `archive_mode` (`on`, `always`, `off`).
    pub archive_mode: String,
}

/// Runs `cmd` to completion; its standard output, or [`Error::Tool`] with
/// its exit status and standard error.
pub(crate) fn run(mut cmd: Command, program: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {program}"), e))?;
    check_exit(program, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`Error::Tool`] with the exit status and standard error of a program
/// that failed.
pub(crate) fn check_exit(program: &str, out: &std::process::Output) -> Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(Error::Tool {
        program: program.into(),
        detail: format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    })
}
