//! A MongoDB-wire server for the tests: `nx-27017` (PyPI, over SQLite)
//! started on a free port, or the real server named by
//! `TESSERA_TEST_MONGODB_URI`. In CI (`CI=true`) a server that cannot be
//! started fails the test. Also included by the CLI's tests.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct Server {
    pub uri: String,
    child: Option<Child>,
    _dir: tempfile::TempDir,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Server {
    /// A server, or `None` (outside CI) when none can be started.
    pub fn start() -> Option<Server> {
        let dir = tempfile::tempdir().unwrap();
        if let Ok(uri) = std::env::var("TESSERA_TEST_MONGODB_URI") {
            return Some(Server {
                uri,
                child: None,
                _dir: dir,
            });
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spawned = Command::new("nx-27017")
            .args([
                "--db",
                "memory",
                "--host",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .arg("--log-file")
            .arg(dir.path().join("nx.log"))
            .arg("--pid-file")
            .arg(dir.path().join("nx.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "nx-27017 cannot be started ({e}): scripts/test.sh installs it (pip install nx-27017==0.8.1)"
                );
                eprintln!("skipped: nx-27017 is not installed (pip install nx-27017==0.8.1)");
                return None;
            }
        };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("nx-27017 exited at start ({status})");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "nx-27017 did not listen on {port} in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Server {
            uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
            child: Some(child),
            _dir: dir,
        })
    }

    /// Stops the server at once (a server that goes away).
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_real(&self) -> bool {
        self.child.is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A database name no other test (or earlier run on a real server) uses.
pub fn db_name(base: &str) -> String {
    format!(
        "t{}_{}_{base}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
