//! QEMU's tools: what an image is (`qemu-img info`), serving it read-only
//! over NBD (`qemu-nbd -r`), and its persistent dirty bitmaps.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::{Error, Result};

/// One persistent dirty bitmap of a qcow2 image.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BitmapInfo {
    /// Its name.
    pub name: String,
    /// Bytes per bit.
    pub granularity: u64,
    /// `auto` (enabled), `in-use` (not stored cleanly: inconsistent after
    /// a crash), ...
    #[serde(default)]
    pub flags: Vec<String>,
}

impl BitmapInfo {
    /// Whether QEMU did not store it cleanly (it was in use when the
    /// process died): its content cannot be trusted.
    pub fn inconsistent(&self) -> bool {
        self.flags
            .iter()
            .any(|f| f == "in-use" || f == "inconsistent")
    }

    /// Whether it records writes (`auto`): a disabled one stopped counting
    /// at some point (a live backup that died holding it).
    pub fn recording(&self) -> bool {
        self.flags.iter().any(|f| f == "auto")
    }
}

/// What `qemu-img info` says about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// `raw`, `qcow2`, ...
    pub format: String,
    /// Virtual size in bytes.
    pub size: u64,
    /// Its persistent dirty bitmaps (qcow2).
    pub bitmaps: Vec<BitmapInfo>,
}

#[derive(Deserialize)]
struct InfoJson {
    format: String,
    #[serde(rename = "virtual-size")]
    virtual_size: u64,
    #[serde(rename = "format-specific", default)]
    specific: Option<Specific>,
}

#[derive(Deserialize)]
struct Specific {
    #[serde(default)]
    data: Option<SpecificData>,
}

#[derive(Deserialize)]
struct SpecificData {
    #[serde(default)]
    bitmaps: Vec<BitmapInfo>,
}

/// `qemu-img info` of `image` (with `-U`: it may be in use).
///
/// # Errors
/// [`Error::Tool`] when qemu-img is missing or fails.
pub fn info(image: &Path) -> Result<ImageInfo> {
    let out = run(Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(image))?;
    let parsed: InfoJson = serde_json::from_slice(&out).map_err(|e| Error::Tool {
        program: "qemu-img info".into(),
        detail: format!("{}: unexpected output: {e}", image.display()),
    })?;
    Ok(ImageInfo {
        format: parsed.format,
        size: parsed.virtual_size,
        bitmaps: parsed
            .specific
            .and_then(|s| s.data)
            .map(|d| d.bitmaps)
            .unwrap_or_default(),
    })
}

/// Creates an empty image of `format` and `size` bytes.
///
/// # Errors
/// [`Error::Tool`].
pub fn create_image(path: &Path, format: &str, size: u64) -> Result<()> {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(path)
        .arg(size.to_string()))
    .map(|_| ())
}

/// Creates an empty qcow2 image of `size` bytes (a fleecing overlay).
///
/// # Errors
/// [`Error::Tool`].
pub fn create_qcow2(path: &Path, size: u64) -> Result<()> {
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size.to_string()))
    .map(|_| ())
}

/// Adds a persistent, enabled dirty bitmap to a qcow2 image (not in use).
///
/// # Errors
/// [`Error::Tool`].
pub fn add_bitmap(image: &Path, name: &str) -> Result<()> {
    run(Command::new("qemu-img")
        .args(["bitmap", "--add", "-f", "qcow2"])
        .arg(image)
        .arg(name))
    .map(|_| ())
}

/// Removes a persistent dirty bitmap.
///
/// # Errors
/// [`Error::Tool`].
pub fn remove_bitmap(image: &Path, name: &str) -> Result<()> {
    run(Command::new("qemu-img")
        .args(["bitmap", "--remove", "-f", "qcow2"])
        .arg(image)
        .arg(name))
    .map(|_| ())
}

fn run(cmd: &mut Command) -> Result<Vec<u8>> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| Error::Tool {
        program: program.clone(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            format!("{program} is not installed (Debian: apt-get install qemu-utils)")
        } else {
            e.to_string()
        },
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            program: format!(
                "{program} {}",
                args.first().map(String::as_str).unwrap_or_default()
            ),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

/// `qemu-nbd -r` serving one image on a private Unix socket; stopped when
/// dropped.
pub struct QemuNbd {
    child: Child,
    socket: PathBuf,
    _dir: PathBuf,
}

impl QemuNbd {
    /// Serves `image` (format `format`) read-only, exposing the dirty
    /// bitmap `bitmap` if given; waits until the socket accepts.
    ///
    /// # Errors
    /// [`Error::Tool`]: qemu-nbd is missing, the image is locked by a
    /// running QEMU, or it exits.
    pub fn start(image: &Path, format: &str, bitmap: Option<&str>) -> Result<Self> {
        Self::spawn(image, format, bitmap, false)
    }

    /// Serves `image` writable (a restore target).
    ///
    /// # Errors
    /// As [`QemuNbd::start`].
    pub fn start_writable(image: &Path, format: &str) -> Result<Self> {
        Self::spawn(image, format, None, true)
    }

    fn spawn(image: &Path, format: &str, bitmap: Option<&str>, writable: bool) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("tessera-nbd-{}-{}", std::process::id(), unique()));
        std::fs::create_dir(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let socket = dir.join("nbd.sock");
        let mut cmd = Command::new("qemu-nbd");
        if writable {
            // Written through the page cache and flushed at the end (an
            // O_DIRECT write per chunk makes a restore wait on each). No
            // zero detection: a restore never writes its holes.
            cmd.arg("--cache=writeback");
        } else {
            cmd.args(["-r", "--cache=none"]);
        }
        cmd.args(["--persistent", "--shared=8", "--aio=threads", "-f", format])
            .arg(format!("--socket={}", socket.display()));
        if let Some(b) = bitmap {
            cmd.args(["-B", b]);
        }
        cmd.arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let child = cmd.spawn().map_err(|e| Error::Tool {
            program: "qemu-nbd".into(),
            detail: if e.kind() == std::io::ErrorKind::NotFound {
                "qemu-nbd is not installed (Debian: apt-get install qemu-utils)".into()
            } else {
                e.to_string()
            },
        })?;
        let mut nbd = QemuNbd {
            child,
            socket,
            _dir: dir,
        };
        let started = Instant::now();
        // The socket file appears at bind(), before listen(): wait until a
        // connection is accepted (the probe is closed at once).
        while std::os::unix::net::UnixStream::connect(&nbd.socket).is_err() {
            if let Ok(Some(status)) = nbd.child.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = nbd.child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(Error::Tool {
                    program: "qemu-nbd".into(),
                    detail: format!("{}: {status}: {}", image.display(), err.trim()),
                });
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(Error::Tool {
                    program: "qemu-nbd".into(),
                    detail: format!(
                        "{}: {} accepts no connection after 30 s",
                        image.display(),
                        nbd.socket.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(nbd)
    }

    /// Its socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for QemuNbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

pub(crate) fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
