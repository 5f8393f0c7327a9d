//! `qemu-storage-daemon` standing in for a running VM in tests (shared by
//! the vm crate's tests and the CLI's: `#[path]`-included there).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// A daemon serving an image as block node `disk0` (file node `file0`),
/// with a QMP monitor at `DIR/qmp.sock`; optionally an NBD server at
/// `DIR/nbd.sock` exporting `disk0` writable as `guest` (the guest's
/// disk), and a second monitor at `DIR/watch.sock` for the test itself.
/// Killed when dropped.
pub struct StorageDaemon {
    child: Child,
    pub dir: PathBuf,
}

#[allow(dead_code)]
impl StorageDaemon {
    pub fn start(dir: &Path, image: &Path, nbd: bool, watch: bool) -> Self {
        for s in ["qmp.sock", "nbd.sock", "watch.sock"] {
            let _ = std::fs::remove_file(dir.join(s));
        }
        let mut cmd = Command::new("qemu-storage-daemon");
        cmd.arg("--chardev")
            .arg(format!(
                "socket,path={}/qmp.sock,server=on,wait=off,id=m",
                dir.display()
            ))
            .args(["--monitor", "chardev=m"]);
        if watch {
            cmd.arg("--chardev")
                .arg(format!(
                    "socket,path={}/watch.sock,server=on,wait=off,id=w",
                    dir.display()
                ))
                .args(["--monitor", "chardev=w"]);
        }
        cmd.arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={}",
                image.display()
            ))
            .args(["--blockdev", "driver=qcow2,node-name=disk0,file=file0"]);
        if nbd {
            cmd.arg("--nbd-server")
                .arg(format!(
                    "addr.type=unix,addr.path={}/nbd.sock",
                    dir.display()
                ))
                .args([
                    "--export",
                    "type=nbd,id=guest,node-name=disk0,name=guest,writable=on",
                ]);
        }
        let child = cmd.spawn().unwrap();
        let ready = if nbd { "nbd.sock" } else { "qmp.sock" };
        wait_accepting(&dir.join(ready));
        wait_accepting(&dir.join("qmp.sock"));
        if watch {
            wait_accepting(&dir.join("watch.sock"));
        }
        StorageDaemon {
            child,
            dir: dir.to_path_buf(),
        }
    }

    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    pub fn nbd(&self) -> PathBuf {
        self.dir.join("nbd.sock")
    }

    /// The guest's disk as an NBD URL.
    pub fn guest(&self) -> String {
        format!("nbd+unix:///guest?socket={}", self.nbd().display())
    }

    /// SIGKILL: QEMU dies holding the image.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM: the daemon closes the image, storing its bitmaps.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap();
    }
}

impl Drop for StorageDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (up to 5 s) until the Unix socket `path` accepts a connection:
/// the file appears at bind(), before the server listens.
pub fn wait_accepting(path: &Path) {
    for _ in 0..500 {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} accepts no connection after 5 s", path.display());
}
