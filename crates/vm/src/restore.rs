//! Reading a disk back: its chunk map ([`DiskMap`], checked against the
//! node it comes from), a raw restore that writes chunks in place in pack
//! order and leaves holes as holes ([`restore_raw`]), and the snapshot's
//! disks.

use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tessera_core::{BlobId, Node, NodeKind, Repository, Snapshot};

use crate::meta::{DiskMeta, VmMeta};
use crate::{Error, KIND, Result};

/// Where each chunk of a stored disk is: its extents (runs of whole
/// chunks) and the blob of each data chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskMap {
    /// Virtual size.
    pub size: u64,
    /// Chunk size.
    pub chunk_size: u32,
    /// Data extents (offset, length).
    pub extents: Vec<(u64, u64)>,
    /// Index into `content` of each extent's first chunk.
    first: Vec<usize>,
    /// One blob per data chunk, in disk order.
    pub content: Vec<BlobId>,
    /// The format the disk was read as.
    pub format: String,
}

impl DiskMap {
    /// The map of a disk node, checked: extents in order, not
    /// overlapping, chunk-aligned, inside the disk, and exactly one blob
    /// per data chunk (a forged or damaged node is refused, naming `what`).
    ///
    /// # Errors
    /// [`Error::Repository`] (corrupt) naming `what`.
    pub fn from_node(node: &Node, what: &str) -> Result<Self> {
        let bad = |why: String| Error::Repository(tessera_core::Error::corrupt(what, why));
        let NodeKind::Stream { content } = &node.kind else {
            return Err(bad("a disk node without content".into()));
        };
        let meta = DiskMeta::from_meta(&node.meta).map_err(bad)?;
        let cs = u64::from(meta.chunk_size);
        if !(64 << 10..=4 << 20).contains(&cs) || !cs.is_power_of_two() {
            return Err(bad(format!("chunk size {cs}")));
        }
        let mut first = Vec::with_capacity(meta.extents.len());
        let mut chunks = 0usize;
        let mut end = 0u64;
        let mut data = 0u64;
        for &(off, len) in &meta.extents {
            let stop = off
                .checked_add(len)
                .ok_or_else(|| bad("an extent past 2^64".into()))?;
            if off < end
                || off % cs != 0
                || len == 0
                || stop > meta.size
                || (stop % cs != 0 && stop != meta.size)
            {
                return Err(bad(format!(
                    "extent [{off}, {len}] is out of order, unaligned or outside the disk"
                )));
            }
            first.push(chunks);
            chunks += len.div_ceil(cs) as usize;
            data += len;
            end = stop;
        }
        if chunks != content.len() || data != node.size {
            return Err(bad(format!(
                "{} blobs and {} content bytes for {chunks} data chunks of {data} bytes",
                content.len(),
                node.size
            )));
        }
        Ok(DiskMap {
            size: meta.size,
            chunk_size: meta.chunk_size,
            extents: meta.extents,
            first,
            content: content.clone(),
            format: meta.format,
        })
    }

    /// Number of chunks of the disk.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(u64::from(self.chunk_size))
    }

    /// The blob of chunk `i`, `None` for a hole.
    pub fn blob_at(&self, i: u64) -> Option<BlobId> {
        let cs = u64::from(self.chunk_size);
        let at = i.checked_mul(cs)?;
        let e = self
            .extents
            .partition_point(|&(off, _)| off <= at)
            .checked_sub(1)?;
        let &(off, len) = self.extents.get(e)?;
        if at >= off + len {
            return None;
        }
        self.content
            .get(self.first.get(e)? + ((at - off) / cs) as usize)
            .copied()
    }

    /// Length of chunk `i` (the last one may be short).
    pub fn chunk_len(&self, i: u64) -> u32 {
        let cs = u64::from(self.chunk_size);
        (self.size.saturating_sub(i * cs)).min(cs) as u32
    }

    /// The offsets each blob is written at (a blob may fill several
    /// chunks).
    pub fn offsets_by_blob(&self) -> std::collections::HashMap<BlobId, Vec<u64>> {
        let mut at: std::collections::HashMap<BlobId, Vec<u64>> = std::collections::HashMap::new();
        for (off, id) in self.data_chunks() {
            at.entry(id).or_default().push(off);
        }
        at
    }

    /// The length the chunk at `off` must have; an error naming blob and
    /// offset when `len` is not it.
    ///
    /// # Errors
    /// [`Error::Repository`] (corrupt).
    pub fn check_chunk(&self, id: BlobId, off: u64, len: usize) -> Result<u64> {
        let want = self
            .size
            .saturating_sub(off)
            .min(u64::from(self.chunk_size));
        if len as u64 != want {
            return Err(Error::Repository(tessera_core::Error::corrupt(
                format!("blob {}", id.short()),
                format!("the chunk at offset {off} holds {len} bytes, not {want}"),
            )));
        }
        Ok(want)
    }

    /// Every data chunk: (offset, blob).
    pub fn data_chunks(&self) -> impl Iterator<Item = (u64, BlobId)> + '_ {
        let cs = u64::from(self.chunk_size);
        self.extents
            .iter()
            .zip(&self.first)
            .flat_map(move |(&(off, len), &first)| {
                (0..len.div_ceil(cs)).filter_map(move |k| {
                    Some((off + k * cs, *self.content.get(first + k as usize)?))
                })
            })
    }
}

/// The VM metadata of a snapshot, checking its kind.
///
/// # Errors
/// [`Error::InvalidArgument`] for a snapshot of another kind; corrupt
/// metadata.
pub fn vm_meta(snapshot: &Snapshot) -> Result<VmMeta> {
    if snapshot.source_kind != KIND {
        return Err(Error::InvalidArgument(format!(
            "this is a {:?} snapshot, not a VM snapshot",
            snapshot.source_kind
        )));
    }
    serde_json::from_value(snapshot.source_meta.clone()).map_err(|e| {
        Error::Repository(tessera_core::Error::corrupt(
            "snapshot",
            format!("VM metadata does not parse: {e}"),
        ))
    })
}

/// The chunk map of disk `name` of a VM snapshot.
///
/// # Errors
/// No such disk (naming the ones there are); a damaged tree.
pub async fn disk_map(repo: &Repository, snapshot: &Snapshot, name: &str) -> Result<DiskMap> {
    let meta = vm_meta(snapshot)?;
    let root = repo.read_tree(snapshot.tree, "snapshot").await?;
    let disks = match root.get(b"disks").map(|n| &n.kind) {
        Some(NodeKind::Dir { subtree }) => repo.read_tree(*subtree, "disks/").await?,
        _ => {
            return Err(Error::Repository(tessera_core::Error::corrupt(
                "snapshot tree",
                "no disks/ directory",
            )));
        }
    };
    let node = disks.get(name.as_bytes()).ok_or_else(|| {
        let names: Vec<&str> = meta.disks.iter().map(|d| d.name.as_str()).collect();
        Error::InvalidArgument(format!(
            "the snapshot has no disk {name:?} (it has: {})",
            names.join(", ")
        ))
    })?;
    DiskMap::from_node(node, &format!("disks/{name}"))
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Bytes written.
    pub bytes_written: u64,
    /// Chunks written.
    pub chunks: u64,
    /// Bytes left as holes (or zeroed on a device).
    pub hole_bytes: u64,
}

/// Restores a disk into `target` as a raw image: a regular file is
/// created (or truncated) sparse, a block device is written in full
/// (holes as zeros). Chunks are fetched in pack order and written in
/// place, many at once.
///
/// # Errors
/// Reading the repository (a damaged blob names its chunk's offset), a
/// device smaller than the disk, writing the target.
pub async fn restore_raw(repo: &Repository, map: &DiskMap, target: &Path) -> Result<RestoreReport> {
    let device = std::fs::metadata(target)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(!device)
        .truncate(!device)
        .open(target)
        .map_err(|e| Error::io(format!("opening {}", target.display()), e))?;
    let what = target.display().to_string();
    if device {
        let len = std::io::Seek::seek(&mut &file, std::io::SeekFrom::End(0))
            .map_err(|e| Error::io(format!("sizing {what}"), e))?;
        if len < map.size {
            return Err(Error::InvalidArgument(format!(
                "{what} holds {len} bytes, the disk {}",
                map.size
            )));
        }
        zero_holes(&file, map, &what)?;
    } else {
        file.set_len(map.size)
            .map_err(|e| Error::io(format!("sizing {what}"), e))?;
    }
    let at = map.offsets_by_blob();
    let ids: Vec<BlobId> = at.keys().copied().collect();
    let at = Arc::new(at);
    let file = Arc::new(file);
    let written = Arc::new(AtomicU64::new(0));
    let chunks = Arc::new(AtomicU64::new(0));
    let map = Arc::new(map.clone());
    let deliver = {
        let (at, file, written, chunks, what, map) = (
            at.clone(),
            file.clone(),
            written.clone(),
            chunks.clone(),
            what.clone(),
            map.clone(),
        );
        move |id: BlobId, plain: &[u8]| -> Result<()> {
            for &off in at.get(&id).map(Vec::as_slice).unwrap_or_default() {
                let want = map.check_chunk(id, off, plain.len())?;
                file.write_all_at(plain, off)
                    .map_err(|e| Error::io(format!("writing {what} at offset {off}"), e))?;
                written.fetch_add(want, Ordering::Relaxed);
                chunks.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    };
    repo.fetch_blobs(ids, &format!("disk restored to {what}"), deliver)
        .await?;
    file.sync_all()
        .map_err(|e| Error::io(format!("syncing {what}"), e))?;
    let bytes_written = written.load(Ordering::Relaxed);
    Ok(RestoreReport {
        bytes_written,
        chunks: chunks.load(Ordering::Relaxed),
        hole_bytes: map.size - bytes_written,
    })
}

/// Restores a disk into a new image `target` of `format` (qcow2, vmdk,
/// ...): the image is created empty and served writable by `qemu-nbd`, and
/// chunks are written into it in pack order over several NBD connections,
/// as a raw restore writes a file; holes are never written, so they stay
/// unallocated.
///
/// # Errors
/// qemu-img or qemu-nbd failing, reading the repository, NBD writes.
pub async fn restore_image(
    repo: &Repository,
    map: &DiskMap,
    target: &Path,
    format: &str,
) -> Result<RestoreReport> {
    use crate::nbd::NbdClient;
    let what = target.display().to_string();
    if target.exists() {
        std::fs::remove_file(target).map_err(|e| Error::io(format!("replacing {what}"), e))?;
    }
    crate::image::create_image(target, format, map.size)?;
    let server = crate::image::QemuNbd::start_writable(target, format)?;
    // Writer threads, one NBD connection each, so several writes are in
    // flight while the fetch goes on; the channel bounds what waits.
    const WRITERS: usize = 6;
    let (tx, rx) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(WRITERS * 2);
    let rx = Arc::new(std::sync::Mutex::new(rx));
    let failed: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let written = Arc::new(AtomicU64::new(0));
    let chunks = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let mut client = NbdClient::connect(
            server.socket(),
            "",
            &[],
            std::time::Duration::from_secs(120),
        )?;
        let (rx, failed, written, chunks) =
            (rx.clone(), failed.clone(), written.clone(), chunks.clone());
        writers.push(std::thread::spawn(move || -> Result<()> {
            loop {
                let job = rx
                    .lock()
                    .map_err(|_| Error::Nbd("a writer failed".into()))?
                    .recv();
                let Ok((off, data)) = job else { break };
                if let Err(e) = client.write_at(off, &data) {
                    if let Ok(mut f) = failed.lock() {
                        f.get_or_insert(e.to_string());
                    }
                    return Err(e);
                }
                written.fetch_add(data.len() as u64, Ordering::Relaxed);
                chunks.fetch_add(1, Ordering::Relaxed);
            }
            client.flush()?;
            client.disconnect();
            Ok(())
        }));
    }
    let at = map.offsets_by_blob();
    let ids: Vec<BlobId> = at.keys().copied().collect();
    let at = Arc::new(at);
    let map = Arc::new(map.clone());
    let deliver = {
        let (at, tx, failed, map) = (at.clone(), tx.clone(), failed.clone(), map.clone());
        move |id: BlobId, plain: &[u8]| -> Result<()> {
            for &off in at.get(&id).map(Vec::as_slice).unwrap_or_default() {
                map.check_chunk(id, off, plain.len())?;
                if let Some(e) = failed.lock().ok().and_then(|f| f.clone()) {
                    return Err(Error::Nbd(e));
                }
                tx.send((off, plain.to_vec()))
                    .map_err(|_| Error::Nbd("the NBD writers stopped".into()))?;
            }
            Ok(())
        }
    };
    drop(tx);
    let fetched = repo
        .fetch_blobs(ids, &format!("disk restored to {what}"), deliver)
        .await;
    let mut wrote = Ok(());
    for w in writers {
        let r = w
            .join()
            .map_err(|_| Error::Nbd("an NBD writer panicked".into()))?;
        if wrote.is_ok() {
            wrote = r;
        }
    }
    fetched?;
    wrote.map_err(|e| Error::Nbd(format!("{what}: {e}")))?;
    drop(server);
    let bytes_written = written.load(Ordering::Relaxed);
    Ok(RestoreReport {
        bytes_written,
        chunks: chunks.load(Ordering::Relaxed),
        hole_bytes: map.size - bytes_written,
    })
}

/// Writes zeros over the holes of `map` on a device (it holds old data).
fn zero_holes(file: &File, map: &DiskMap, what: &str) -> Result<()> {
    let zeros = vec![0u8; map.chunk_size as usize];
    for i in 0..map.chunks() {
        if map.blob_at(i).is_none() {
            let off = i * u64::from(map.chunk_size);
            let len = map.chunk_len(i) as usize;
            file.write_all_at(zeros.get(..len).unwrap_or_default(), off)
                .map_err(|e| Error::io(format!("zeroing {what} at offset {off}"), e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tessera_core::Meta;

    fn node(extents: Vec<(u64, u64)>, size: u64, blobs: usize) -> Node {
        let meta = DiskMeta {
            kind: "file".into(),
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            atime: (0, 0),
            size,
            extents: extents.clone(),
            chunk_size: 65536,
            format: "raw".into(),
        };
        let content = (0..blobs).map(|i| BlobId([i as u8; 32])).collect();
        let data = extents.iter().map(|e| e.1).sum();
        Node::new(
            b"d",
            data,
            NodeKind::Stream { content },
            Meta::to_json(&meta).unwrap(),
        )
    }

    #[test]
    fn chunks_map_to_blobs_and_holes() {
        let cs = 65536;
        let size = 10 * cs + 100;
        let n = node(vec![(0, 2 * cs), (5 * cs, cs), (10 * cs, 100)], size, 4);
        let m = DiskMap::from_node(&n, "d").unwrap();
        assert_eq!(m.chunks(), 11);
        let got: Vec<Option<u8>> = (0..11)
            .map(|i| m.blob_at(i).map(|b| b.as_bytes()[0]))
            .collect();
        assert_eq!(
            got,
            vec![
                Some(0),
                Some(1),
                None,
                None,
                None,
                Some(2),
                None,
                None,
                None,
                None,
                Some(3)
            ]
        );
        assert_eq!(m.chunk_len(10), 100);
        let offs: Vec<u64> = m.data_chunks().map(|c| c.0).collect();
        assert_eq!(offs, vec![0, cs, 5 * cs, 10 * cs]);
    }

    #[test]
    fn forged_maps_are_refused() {
        let cs = 65536;
        for (extents, size, blobs) in [
            (vec![(0, cs)], cs, 2),               // too many blobs
            (vec![(cs, cs), (0, cs)], 4 * cs, 2), // out of order
            (vec![(100, cs)], 4 * cs, 1),         // unaligned
            (vec![(0, 5 * cs)], 4 * cs, 5),       // past the end
            (vec![(0, cs + 1)], 4 * cs, 2),       // ends inside a chunk
            (vec![(0, cs), (0, cs)], 4 * cs, 2),  // overlapping
        ] {
            let e = DiskMap::from_node(&node(extents.clone(), size, blobs), "disks/x").unwrap_err();
            assert!(e.to_string().contains("disks/x"), "{extents:?}: {e}");
        }
    }
}
