//! A stored disk as a read-only NBD export ([`DiskExport`]): chunks are
//! read from the repository as clients ask (a few kept in memory), holes
//! are answered as holes and reported by block status, so `qemu-img
//! convert` and a QEMU backing file skip them. On it: restores to other
//! formats ([`restore_converted`]) and instant restores (a qcow2 overlay
//! backed by the export).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use tessera_core::{BlobId, Repository};

use crate::nbd::server::{Until, serve_unix};
use crate::nbd::{Export, STATE_HOLE, STATE_ZERO};
use crate::restore::DiskMap;
use crate::{Error, Result};

/// Chunks kept in memory per export.
const CACHED_CHUNKS: usize = 16;

/// A disk of a snapshot, served.
pub struct DiskExport {
    repo: Repository,
    map: DiskMap,
    runtime: tokio::runtime::Handle,
    cache: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
}

impl DiskExport {
    /// Serves `map` from `repo`; reads run on `runtime` (the calling
    /// threads are the server's, outside it).
    pub fn new(repo: Repository, map: DiskMap, runtime: tokio::runtime::Handle) -> Self {
        DiskExport {
            repo,
            map,
            runtime,
            cache: Mutex::new(VecDeque::new()),
        }
    }

    fn chunk(&self, i: u64, id: BlobId) -> std::io::Result<Arc<Vec<u8>>> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((_, c)) = cache.iter().find(|(k, _)| *k == i) {
                return Ok(c.clone());
            }
        }
        let off = i * u64::from(self.map.chunk_size);
        let bytes = self
            .runtime
            .block_on(
                self.repo
                    .read_blob(id, &format!("the disk chunk at offset {off}")),
            )
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if bytes.len() != self.map.chunk_len(i) as usize {
            return Err(std::io::Error::other(format!(
                "the disk chunk at offset {off} holds {} bytes, not {}",
                bytes.len(),
                self.map.chunk_len(i)
            )));
        }
        let bytes = Arc::new(bytes);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHED_CHUNKS {
                cache.pop_front();
            }
            cache.push_back((i, bytes.clone()));
        }
        Ok(bytes)
    }
}

impl DiskExport {
    /// The disk's size.
    pub fn disk_size(&self) -> u64 {
        self.map.size
    }
}

impl Export for DiskExport {
    fn size(&self) -> u64 {
        self.map.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<bool> {
        let cs = u64::from(self.map.chunk_size);
        let mut hole = true;
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            let i = at / cs;
            let within = (at - i * cs) as usize;
            let n = (cs as usize - within).min(buf.len() - done);
            let dest = buf.get_mut(done..done + n).unwrap_or_default();
            match self.map.blob_at(i) {
                None => dest.fill(0),
                Some(id) => {
                    let chunk = self.chunk(i, id)?;
                    let src = chunk
                        .get(within..within + n)
                        .ok_or_else(|| std::io::Error::other("a short chunk"))?;
                    dest.copy_from_slice(src);
                    hole = false;
                }
            }
            done += n;
        }
        Ok(hole)
    }

    fn allocation(&self, offset: u64, len: u64) -> Vec<(u64, u32)> {
        let cs = u64::from(self.map.chunk_size);
        let end = (offset + len).min(self.map.size);
        let mut out: Vec<(u64, u32)> = Vec::new();
        let mut at = offset;
        while at < end {
            let i = at / cs;
            let stop = ((i + 1) * cs).min(end);
            let flags = if self.map.blob_at(i).is_some() {
                0
            } else {
                STATE_HOLE | STATE_ZERO
            };
            match out.last_mut() {
                Some(last) if last.1 == flags => last.0 += stop - at,
                _ => out.push((stop - at, flags)),
            }
            if out.len() > 1024 {
                break;
            }
            at = stop;
        }
        out
    }
}

/// Serves `export` as NBD export `name` on Unix socket `socket` until
/// stopped, or with `until_last_client` once a client came and all left.
///
/// # Errors
/// Binding the socket.
pub fn serve(
    socket: &Path,
    name: &str,
    export: Arc<DiskExport>,
    until_last_client: bool,
    ready: impl FnOnce(),
) -> Result<()> {
    let until = if until_last_client {
        Until::LastClientGone
    } else {
        Until::Stopped
    };
    serve_unix(socket, name, export, until, ready)
}

/// A private socket path for a temporary export.
pub fn temp_socket() -> Result<(PathBuf, PathBuf)> {
    let dir = std::env::temp_dir().join(format!(
        "tessera-serve-{}-{}",
        std::process::id(),
        crate::image::unique()
    ));
    std::fs::create_dir(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    Ok((dir.join("nbd.sock"), dir))
}

/// Restores a disk into `target` in `format` (e.g. `qcow2`) by serving it
/// over NBD to `qemu-img convert`, which skips the holes.
///
/// # Errors
/// qemu-img failing (its message), reading the repository.
pub async fn restore_converted(
    repo: &Repository,
    map: DiskMap,
    target: &Path,
    format: &str,
) -> Result<()> {
    let (socket, dir) = temp_socket()?;
    let export = Arc::new(DiskExport::new(
        repo.clone(),
        map,
        tokio::runtime::Handle::current(),
    ));
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let sock = socket.clone();
    std::thread::spawn(move || {
        let r = serve(&sock, "disk", export, true, move || {
            let _ = ready_tx.send(());
        });
        if let Err(e) = r {
            eprintln!("tessera: serving the disk: {e}");
        }
    });
    ready_rx
        .await
        .map_err(|_| Error::Nbd("the NBD server did not start".into()))?;
    let url = format!("nbd+unix:///disk?socket={}", socket.display());
    let target = target.to_path_buf();
    let format = format.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("qemu-img")
            .args(["convert", "-p", "-f", "raw", "-O", &format, "-W", "-m", "8"])
            .arg(&url)
            .arg(&target)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
    })
    .await
    .map_err(|e| Error::Nbd(format!("qemu-img convert: {e}")))?;
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.map_err(|e| Error::Tool {
        program: "qemu-img".into(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(Error::Tool {
            program: "qemu-img convert".into(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// Makes `overlay` a new qcow2 image of `size` bytes backed by the export
/// `name` on `socket` (raw; not opened now, so the server need not be
/// up): a VM started from it boots at once, and QMP `block-stream` pulls
/// the rest in.
///
/// # Errors
/// qemu-img failing.
pub fn create_overlay(overlay: &Path, socket: &Path, name: &str, size: u64) -> Result<()> {
    let backing = format!("nbd+unix:///{name}?socket={}", socket.display());
    let out = Command::new("qemu-img")
        .args([
            "create", "-q", "-f", "qcow2", "-u", "-b", &backing, "-F", "raw",
        ])
        .arg(overlay)
        .arg(size.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Tool {
            program: "qemu-img".into(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Tool {
            program: "qemu-img create".into(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}
