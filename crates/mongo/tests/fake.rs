//! A replica-set primary the test controls: `fake_replset.py` (MockupDB,
//! PyPI) on a free port. In CI (`CI=true`) one that cannot be started
//! fails the test. Also included by the CLI's tests.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{Bson, Document, Timestamp, doc};

pub struct FakeReplSet {
    pub uri: String,
    child: Child,
}

impl FakeReplSet {
    /// A fake primary, or `None` (outside CI) when MockupDB is missing.
    pub fn start() -> Option<FakeReplSet> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../mongo/tests/fake_replset.py"
        );
        let ok = Command::new("python3")
            .args(["-c", "import mockupdb"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "mockupdb is missing: scripts/test.sh installs it (pip install mockupdb==1.8.1)"
            );
            eprintln!("skipped: mockupdb is not installed (pip install mockupdb==1.8.1)");
            return None;
        }
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("fake_replset.py exited at start ({status})");
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "fake_replset.py did not listen on {port} in 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(FakeReplSet {
            uri: format!("mongodb://127.0.0.1:{port}/?directConnection=true"),
            child,
        })
    }

    /// Sends `tesseraControl` with these fields (see the script).
    pub async fn control(&self, fields: Document) -> Document {
        let client = mongodb::Client::with_uri_str(&self.uri).await.unwrap();
        let mut command = doc! {"tesseraControl": 1};
        command.extend(fields);
        client.database("admin").run_command(command).await.unwrap()
    }
}

impl Drop for FakeReplSet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The oplog position `t:1`.
pub fn ts(t: u32) -> Bson {
    Bson::Timestamp(Timestamp {
        time: t,
        increment: 1,
    })
}

/// An oplog entry in the server's shape.
pub fn op(t: u32, op: &str, ns: &str, o: Document, o2: Option<Document>) -> Document {
    let mut d = doc! {"op": op, "ns": ns, "o": o};
    if let Some(o2) = o2 {
        d.insert("o2", o2);
    }
    d.insert("ts", ts(t));
    d.insert("t", 1_i64);
    d.insert("v", 2_i64);
    d.insert(
        "wall",
        mongodb::bson::DateTime::from_millis(i64::from(t) * 1000),
    );
    d
}

/// A periodic no-op entry.
pub fn noop(t: u32) -> Document {
    op(t, "n", "", doc! {"msg": "periodic noop"}, None)
}
