//! Helpers: a repository in a temporary directory driven through the binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const PASSWORD: &str = "test password";

/// Deterministic pseudo-random bytes.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; len];
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.finalize_xof().fill(&mut out);
    out
}

#[path = "../../../tests/support/server.rs"]
pub mod server;

#[path = "../../../tests/support/s3.rs"]
pub mod s3;

/// Whether the suite runs against the S3 test server
/// (`TESSERA_TEST_STORAGE=s3`) instead of local directories.
pub fn on_s3() -> bool {
    std::env::var("TESSERA_TEST_STORAGE").is_ok_and(|v| v == "s3")
}

/// A repository location for a test: a directory in `dir`, or a fresh
/// prefix on the S3 test server. Returns the URL to pass to `-r` and the
/// directory the objects are stored in.
pub fn new_location(dir: &Path, name: &str) -> (String, PathBuf) {
    if on_s3() {
        let server = s3::server().expect("TESSERA_TEST_STORAGE=s3 needs the S3 test server");
        let prefix = s3::fresh_prefix(name);
        (format!("s3://{}/{prefix}", s3::BUCKET), server.dir(&prefix))
    } else {
        let path = dir.join(name);
        (path.to_str().unwrap().to_string(), path)
    }
}

pub struct TestRepo {
    pub dir: tempfile::TempDir,
    /// Where the repository's objects are on disk.
    pub repo: PathBuf,
    /// What `-r` gets: the directory, or `s3://…` on the S3 test server.
    pub url: String,
    /// Run without the local metadata cache (tests that damage stored
    /// objects play a host that has no copy of them).
    pub no_cache: bool,
}

impl TestRepo {
    /// A fresh repository; `init_args` are added to `tessera init`.
    pub fn new(init_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (url, repo) = new_location(dir.path(), "repo");
        Self::init_at(dir, url, repo, init_args)
    }

    /// A fresh repository on the S3 test server, whatever the suite's
    /// storage; `None` where the server is missing outside CI.
    pub fn new_s3(init_args: &[&str]) -> Option<Self> {
        let server = s3::server()?;
        let dir = tempfile::tempdir().unwrap();
        let prefix = s3::fresh_prefix("repo");
        let url = format!("s3://{}/{prefix}", s3::BUCKET);
        Some(Self::init_at(dir, url, server.dir(&prefix), init_args))
    }

    fn init_at(dir: tempfile::TempDir, url: String, repo: PathBuf, init_args: &[&str]) -> Self {
        let t = TestRepo {
            dir,
            repo,
            url,
            no_cache: false,
        };
        let mut args = vec!["init", "--kdf-memory", "64", "--kdf-iterations", "1"];
        args.extend_from_slice(init_args);
        t.ok(&args);
        t
    }

    /// The same repository, driven without the metadata cache.
    pub fn without_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
        c.arg("-r").arg(&self.url);
        if self.url.starts_with("s3://")
            && let Some(server) = s3::server()
        {
            server.apply(&mut c);
        }
        if self.no_cache {
            c.env("TESSERA_NO_CACHE", "true");
        }
        for var in [
            "TESSERA_PASSWORD_FILE",
            "TESSERA_PASSWORD_COMMAND",
            "TESSERA_KEY_FILE",
            "TESSERA_REPO",
        ] {
            c.env_remove(var);
        }
        c.env("TESSERA_PASSWORD", PASSWORD);
        // Caches (files, check record) stay inside the test's directory.
        c.env("TESSERA_CACHE_DIR", self.dir.path().join("default-cache"));
        c.stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &Path) -> Output {
        self.cmd()
            .args(args)
            .stdin(std::fs::File::open(stdin).unwrap())
            .output()
            .unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts success; returns stderr.
    pub fn ok_stderr(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_success(&out, args);
        String::from_utf8(out.stderr).unwrap()
    }

    /// Runs and asserts failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "{args:?} succeeded but should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Backs up `data` under `name`; returns the snapshot id.
    pub fn backup(&self, name: &str, data: &[u8], extra: &[&str]) -> String {
        let input = self.path(&format!("input-{name}"));
        std::fs::write(&input, data).unwrap();
        self.backup_file(name, &input, extra)
    }

    pub fn backup_file(&self, name: &str, input: &Path, extra: &[&str]) -> String {
        let mut args = vec!["backup", "--stdin", "--stdin-name", name, "--json"];
        args.extend_from_slice(extra);
        let out = self.run_with_stdin(&args, input);
        assert_success(&out, &args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["snapshot_id"].as_str().unwrap().to_string()
    }

    pub fn dump(&self, snapshot: &str, name: &str) -> Vec<u8> {
        let out = self.run(&["dump", snapshot, name]);
        assert_success(&out, &["dump", snapshot, name]);
        out.stdout
    }

    /// Total bytes of all files in the repository.
    pub fn size(&self) -> u64 {
        walk(&self.repo)
            .iter()
            .map(|p| p.metadata().unwrap().len())
            .sum()
    }

    /// Files of the repository under `dir` (e.g. `packs`, `index`).
    pub fn objects(&self, dir: &str) -> Vec<PathBuf> {
        let mut v = walk(&self.repo.join(dir));
        v.sort();
        v
    }
}

pub fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Flips one bit of a file at `offset`.
pub fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    // Objects are stored read-only-by-convention files; rewrite in place.
    std::fs::write(path, bytes).unwrap();
}
