//! A real S3-compatible server for tests: `s3s-fs` (crates.io), started
//! once per test process on a free port of 127.0.0.1 and killed with it.
//! A bucket is a directory under its root, and each object a plain file
//! at `ROOT/BUCKET/KEY`, so tests can damage objects as on a local disk.
//!
//! `scripts/test.sh` installs `s3s-fs`. Without it a test fails loudly in
//! CI (`CI=true`); elsewhere [`server`] returns `None` and the caller skips.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

// The includer declares `server` (tests/support/server.rs) beside this module.
use super::server;

pub const ACCESS_KEY: &str = "tessera-test";
pub const SECRET_KEY: &str = "tessera-test-secret";
/// The bucket tests use; each test takes a prefix of its own.
pub const BUCKET: &str = "tessera-tests";

pub struct S3Server {
    pub endpoint: String,
    pub root: PathBuf,
}

impl S3Server {
    /// The environment a client needs to reach the server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    pub fn apply(&self, cmd: &mut Command) {
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
    }

    /// Where the objects under `s3://BUCKET/prefix` live on disk.
    pub fn dir(&self, prefix: &str) -> PathBuf {
        self.root.join(BUCKET).join(prefix)
    }
}

/// The shared server, started on first use.
pub fn server() -> Option<&'static S3Server> {
    static SERVER: OnceLock<Option<S3Server>> = OnceLock::new();
    SERVER.get_or_init(start).as_ref()
}

fn binary() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(home.map(|h| h.join(".cargo/bin")));
    candidates.map(|d| d.join("s3s-fs")).find(|p| p.is_file())
}

fn unavailable(why: String) -> Option<S3Server> {
    server::unavailable("S3 test server (s3s-fs)", &why)
}

fn start() -> Option<S3Server> {
    let Some(bin) = binary() else {
        return unavailable("s3s-fs is not installed".into());
    };
    clean_stale_roots();
    let root = std::env::temp_dir().join(format!("tessera-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join(BUCKET)).unwrap();
    let port = server::free_port();
    let mut cmd = Command::new(&bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Err(e) = server::spawn_for_process(cmd) {
        return unavailable(format!("{} does not start: {e}", bin.display()));
    }
    if !server::wait_for_port(port, 20) {
        return unavailable(format!("s3s-fs did not listen on port {port}"));
    }
    Some(S3Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        root,
    })
}

/// A fresh prefix in the test bucket.
pub fn fresh_prefix(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!("{tag}-{}-{n}", std::process::id())
}

/// Removes the roots of earlier test processes that are gone.
fn clean_stale_roots() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("tessera-s3-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}
