//! The write path: read → chunk → hash → dedup → compress → seal → pack →
//! upload → index segment → tree → snapshot.
//!
//! Three stages run at once, joined by bounded channels (back-pressure keeps
//! memory flat whatever the input size):
//! 1. a reader thread per stream fills 16 MiB buffers and cuts them into
//!    chunks (one buffer queued);
//! 2. three batches at a time are hashed, looked up, compressed and sealed on
//!    rayon; the backup thread packs their blobs in stream order (one
//!    finished pack queued);
//! 3. the async side uploads packs (a few at a time), writes an index
//!    segment for every 256 uploaded packs and at the end, then the snapshot.
//!
//! Peak memory is about 5 batches and their sealed blobs + 5 packs, whatever
//! the input size: measured peak RSS of the CLI backing up 1 GiB was 196 MB
//! for text and 279 MB for incompressible data (256 MiB of text: 164 MB).

use std::collections::HashSet;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use rayon::prelude::*;

use crate::blob::{self, BlobType};
use crate::chunker::{Batch, StreamChunker};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::id::{BlobId, IndexId, SnapshotId};
use crate::index::{IndexPack, IndexSegment};
use crate::pack::{FinishedPack, PackWriter};
use crate::repo::{Inner, Repository, poisoned};
use crate::sealed;
use crate::snapshot::{self, SNAPSHOT_VERSION, Snapshot, SnapshotStats};
use crate::tree::{Node, NodeKind, Tree};

/// Bytes read from a stream per batch (at least twice the largest chunk).
const BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Packs uploaded at once.
const UPLOAD_CONCURRENCY: usize = 3;
/// Packs described by one index segment written during a backup.
const PACKS_PER_SEGMENT: usize = 256;

/// One named byte stream to back up.
pub struct StreamSource {
    /// Name within the snapshot (a file name: no `/`, not `.` or `..`).
    pub name: String,
    /// The bytes.
    pub reader: Box<dyn Read + Send>,
}

impl StreamSource {
    /// A stream named `name` read from `reader`.
    pub fn new(name: impl Into<String>, reader: impl Read + Send + 'static) -> Self {
        StreamSource {
            name: name.into(),
            reader: Box::new(reader),
        }
    }
}

/// Live counters a caller can poll to show progress.
#[derive(Debug, Default)]
pub struct BackupProgress {
    /// Bytes read from the sources so far.
    pub bytes_read: AtomicU64,
    /// Plaintext bytes of new chunks so far.
    pub bytes_new: AtomicU64,
    /// Bytes uploaded so far.
    pub bytes_uploaded: AtomicU64,
}

/// Options of a backup.
#[derive(Clone, Debug, Default)]
pub struct BackupOptions {
    /// Snapshot time (default: now).
    pub time: Option<jiff::Timestamp>,
    /// Host name (default: this machine's).
    pub hostname: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Adapter name recorded in the snapshot (default `stream`).
    pub source_kind: Option<String>,
    /// Adapter metadata recorded in the snapshot.
    pub source_meta: serde_json::Value,
    /// Progress counters to update.
    pub progress: Option<Arc<BackupProgress>>,
}

/// The outcome of a backup.
#[derive(Clone, Debug)]
pub struct BackupSummary {
    /// The new snapshot's id.
    pub id: SnapshotId,
    /// The new snapshot.
    pub snapshot: Snapshot,
}

/// What the backup thread hands back.
struct CpuResult {
    root: BlobId,
    stats: SnapshotStats,
}

/// Checks that a stream name can be restored as a file name.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the problem.
pub fn validate_stream_name(name: &str) -> Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "stream name {name:?} must be a file name: not empty, `.` or `..`, without `/` or NUL"
        )));
    }
    Ok(())
}

impl Repository {
    /// Backs up named byte streams into one new snapshot.
    ///
    /// Readers run on a dedicated thread; CPU work runs on rayon; uploads run
    /// on the caller's Tokio runtime. One backup runs at a time per handle.
    ///
    /// # Errors
    /// Reading a stream, storage errors, invalid names. On error no
    /// snapshot is written and the repository stays valid (at worst it holds
    /// unreferenced packs).
    pub async fn backup(
        &self,
        streams: Vec<StreamSource>,
        options: BackupOptions,
    ) -> Result<BackupSummary> {
        for s in &streams {
            validate_stream_name(&s.name)?;
        }
        let _one_at_a_time = self.inner.backup_lock.lock().await;
        let index = self.index().await?;
        let result = self.run_backup(streams, options).await;
        if result.is_err() {
            index.write().map_err(|_| poisoned())?.discard_pending();
        }
        result
    }

    async fn run_backup(
        &self,
        streams: Vec<StreamSource>,
        options: BackupOptions,
    ) -> Result<BackupSummary> {
        let started = Instant::now();
        let paths: Vec<String> = streams.iter().map(|s| s.name.clone()).collect();
        // Duplicate names fail here, before any work.
        crate::tree::ensure_unique_names(paths.iter().map(String::as_str))?;
        let (pack_tx, pack_rx) = tokio::sync::mpsc::channel::<FinishedPack>(1);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let inner = self.inner.clone();
        let progress = options.progress.clone();
        std::thread::Builder::new()
            .name("tessera-backup".into())
            .spawn(move || {
                let result = cpu_stage(&inner, streams, &pack_tx, progress.as_deref());
                drop(pack_tx);
                let _ = done_tx.send(result);
            })
            .map_err(|e| Error::io("starting the backup thread", e))?;
        let uploaded = self
            .upload_packs(pack_rx, options.progress.as_deref())
            .await;
        let cpu = done_rx
            .await
            .map_err(|_| Error::Internal("the backup thread panicked".into()))?;
        // An upload error explains a stopped backup thread better than its own error.
        let (packs_written, stored_bytes) = uploaded?;
        let mut cpu = cpu?;
        self.index()
            .await?
            .write()
            .map_err(|_| poisoned())?
            .commit_pending();

        cpu.stats.packs_written = packs_written;
        cpu.stats.stored_bytes = stored_bytes;
        cpu.stats.duration_secs = started.elapsed().as_secs_f64();
        let snapshot = Snapshot {
            version: SNAPSHOT_VERSION,
            time: options.time.unwrap_or_else(jiff::Timestamp::now),
            hostname: options.hostname.unwrap_or_else(snapshot::hostname),
            username: snapshot::username(),
            tags: options.tags,
            paths,
            source_kind: options.source_kind.unwrap_or_else(|| "stream".into()),
            source_meta: options.source_meta,
            tree: cpu.root,
            stats: cpu.stats,
            program_version: format!("tessera {}", env!("CARGO_PKG_VERSION")),
        };
        let id = SnapshotId::random();
        let bytes = sealed::seal(
            &self.inner.keyring,
            ObjectKind::Snapshot,
            &id.to_hex(),
            &snapshot.encode(),
        );
        self.inner
            .backend
            .put(ObjectKind::Snapshot, &id.to_hex(), Bytes::from(bytes))
            .await?;
        Ok(BackupSummary { id, snapshot })
    }

    /// Uploads packs as they come, writing index segments after them.
    /// Returns (packs, bytes) written.
    async fn upload_packs(
        &self,
        mut rx: tokio::sync::mpsc::Receiver<FinishedPack>,
        progress: Option<&BackupProgress>,
    ) -> Result<(u64, u64)> {
        let mut inflight = FuturesUnordered::new();
        let mut segment = Vec::new();
        let (mut packs, mut bytes) = (0u64, 0u64);
        let upload = |pack: FinishedPack| async move {
            let len = pack.bytes.len() as u64;
            self.inner
                .backend
                .put(ObjectKind::Pack, &pack.id.to_hex(), pack.bytes)
                .await?;
            Ok::<_, Error>((
                IndexPack {
                    id: pack.id,
                    key_id: pack.key_id,
                    blobs: pack.entries,
                },
                len,
            ))
        };
        let done = |(p, len): (IndexPack, u64),
                    segment: &mut Vec<IndexPack>,
                    packs: &mut u64,
                    bytes: &mut u64| {
            *packs += 1;
            *bytes += len;
            if let Some(progress) = progress {
                progress.bytes_uploaded.fetch_add(len, Ordering::Relaxed);
            }
            segment.push(p);
        };
        while let Some(pack) = rx.recv().await {
            while inflight.len() >= UPLOAD_CONCURRENCY {
                if let Some(r) = inflight.next().await {
                    done(r?, &mut segment, &mut packs, &mut bytes);
                }
            }
            inflight.push(upload(pack));
            if segment.len() >= PACKS_PER_SEGMENT {
                bytes += self
                    .write_index_segment(std::mem::take(&mut segment))
                    .await?;
            }
        }
        while let Some(r) = inflight.next().await {
            done(r?, &mut segment, &mut packs, &mut bytes);
        }
        if !segment.is_empty() {
            bytes += self.write_index_segment(segment).await?;
        }
        Ok((packs, bytes))
    }

    /// Stores an index segment for packs that are already durable.
    async fn write_index_segment(&self, packs: Vec<IndexPack>) -> Result<u64> {
        let id = IndexId::random();
        let plain = IndexSegment { packs }.encode();
        let bytes = sealed::seal(&self.inner.keyring, ObjectKind::Index, &id.to_hex(), &plain);
        let len = bytes.len() as u64;
        self.inner
            .backend
            .put(ObjectKind::Index, &id.to_hex(), Bytes::from(bytes))
            .await?;
        Ok(len)
    }
}

/// Pack writers and counters of the backup thread.
struct Packer<'a> {
    inner: &'a Inner,
    tx: &'a tokio::sync::mpsc::Sender<FinishedPack>,
    data: Option<PackWriter>,
    tree: Option<PackWriter>,
    stats: SnapshotStats,
}

/// Seals a pack's header and queues it for upload (waits while the queue is full).
fn send_pack(
    inner: &Inner,
    tx: &tokio::sync::mpsc::Sender<FinishedPack>,
    pack: PackWriter,
) -> Result<()> {
    let finished = pack.finish(&inner.keyring)?;
    tx.blocking_send(finished)
        .map_err(|_| Error::Internal("the upload stage stopped".into()))
}

impl Packer<'_> {
    /// Adds sealed blobs of one type, starting new packs at the target size.
    fn add(&mut self, blobs: Vec<blob::SealedBlob>, blob_type: BlobType) -> Result<()> {
        let key = self.inner.keyring.write_key();
        let target = match blob_type {
            BlobType::Data => self.inner.config.pack_size.data,
            BlobType::Tree => self.inner.config.pack_size.tree,
        } as usize;
        let index = self
            .inner
            .index
            .get()
            .ok_or_else(|| Error::Internal("index not loaded".into()))?;
        let slot = match blob_type {
            BlobType::Data => &mut self.data,
            BlobType::Tree => &mut self.tree,
        };
        let mut added = Vec::with_capacity(blobs.len());
        for b in &blobs {
            if slot
                .as_ref()
                .is_some_and(|p| !p.is_empty() && p.len() + b.bytes.len() > target)
            {
                if let Some(full) = slot.take() {
                    send_pack(self.inner, self.tx, full)?;
                }
            }
            let pack =
                slot.get_or_insert_with(|| PackWriter::new(blob_type, key, target + target / 8));
            let entry = pack.add(b)?;
            added.push((pack.id(), entry));
            self.stats.new_chunks += u64::from(blob_type == BlobType::Data);
            self.stats.new_bytes += u64::from(b.raw_len) * u64::from(blob_type == BlobType::Data);
        }
        {
            let mut index = index.write().map_err(|_| poisoned())?;
            for (pack, entry) in &added {
                index.add_pending(*pack, key.id(), entry)?;
            }
        }
        Ok(())
    }

    /// Sends the partly filled packs of both types.
    fn flush(&mut self) -> Result<()> {
        for pack in [self.data.take(), self.tree.take()].into_iter().flatten() {
            send_pack(self.inner, self.tx, pack)?;
        }
        Ok(())
    }
}

/// The backup thread: reads, chunks, dedups, seals and packs every stream.
fn cpu_stage(
    inner: &Arc<Inner>,
    streams: Vec<StreamSource>,
    tx: &tokio::sync::mpsc::Sender<FinishedPack>,
    progress: Option<&BackupProgress>,
) -> Result<CpuResult> {
    let mut packer = Packer {
        inner,
        tx,
        data: None,
        tree: None,
        stats: SnapshotStats::default(),
    };
    let mut nodes = Vec::with_capacity(streams.len());
    for source in streams {
        let name = source.name.clone();
        let (content, size) = chunk_stream(inner, source, &mut packer, progress)?;
        nodes.push(Node {
            name,
            size,
            kind: NodeKind::Stream { content },
        });
    }
    let tree = Tree::new(nodes)?.encode();
    let root = inner.keyring.blob_id(&tree);
    let known = inner
        .index
        .get()
        .ok_or_else(|| Error::Internal("index not loaded".into()))?
        .read()
        .map_err(|_| poisoned())?
        .contains(&root);
    if !known {
        let sealed = blob::seal(
            inner.keyring.write_key(),
            root,
            BlobType::Tree,
            &tree,
            inner.config.compression.level,
        )?;
        packer.add(vec![sealed], BlobType::Tree)?;
    }
    packer.flush()?;
    Ok(CpuResult {
        root,
        stats: packer.stats,
    })
}

/// Batches hashed and sealed at once on rayon. The backup thread waits for
/// the oldest; with only two, the last large chunk of that batch often
/// compresses on one core while the other has nothing queued. Three kept
/// both cores busy (+13 % throughput on text); four gained nothing more.
const BATCHES_IN_FLIGHT: usize = 3;

/// A batch after the parallel stage: every chunk's id, and sealed blobs for
/// the chunks the index did not hold when they were looked up.
struct SealedBatch {
    ids: Vec<BlobId>,
    sealed: Vec<blob::SealedBlob>,
    len: u64,
}

/// Reads one stream on a helper thread; hashes and seals batches on rayon,
/// `BATCHES_IN_FLIGHT` at a time; packs them here, in stream order.
fn chunk_stream(
    inner: &Arc<Inner>,
    source: StreamSource,
    packer: &mut Packer<'_>,
    progress: Option<&BackupProgress>,
) -> Result<(Vec<BlobId>, u64)> {
    let StreamSource { name, reader } = source;
    std::thread::scope(|scope| {
        let (batch_tx, batch_rx) = std::sync::mpsc::sync_channel::<std::io::Result<Batch>>(1);
        let chunker = inner.chunker.clone();
        let (spare_tx, spare_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        scope.spawn(move || {
            let mut stream =
                StreamChunker::new(reader, chunker, BATCH_BYTES).recycle_from(spare_rx);
            loop {
                let next = stream.next_batch().transpose();
                let stop = !matches!(next, Some(Ok(_)));
                if let Some(item) = next {
                    if batch_tx.send(item).is_err() {
                        break;
                    }
                }
                if stop {
                    break;
                }
            }
        });
        let mut content = Vec::new();
        let mut size = 0u64;
        let mut in_flight = std::collections::VecDeque::new();
        let mut finish = |rx: std::sync::mpsc::Receiver<Result<SealedBatch>>| -> Result<()> {
            let done = rx
                .recv()
                .map_err(|_| Error::Internal("a sealing task panicked".into()))??;
            size += done.len;
            pack_batch(inner, done, packer, &mut content)?;
            if let Some(p) = progress {
                p.bytes_read.store(size, Ordering::Relaxed);
                p.bytes_new.store(packer.stats.new_bytes, Ordering::Relaxed);
            }
            Ok(())
        };
        for batch in batch_rx {
            let batch = batch.map_err(|e| Error::io(format!("reading stream {name:?}"), e))?;
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let inner = inner.clone();
            let spare = spare_tx.clone();
            rayon::spawn(move || {
                let sealed = seal_batch(&inner, &batch);
                let _ = spare.send(batch.data);
                let _ = tx.send(sealed);
            });
            in_flight.push_back(rx);
            if in_flight.len() >= BATCHES_IN_FLIGHT {
                if let Some(rx) = in_flight.pop_front() {
                    finish(rx)?;
                }
            }
        }
        while let Some(rx) = in_flight.pop_front() {
            finish(rx)?;
        }
        packer.stats.total_bytes += size;
        Ok((content, size))
    })
}

/// The parallel stage: hash every chunk, look it up, compress and seal the
/// ones the index lacks. A chunk that appears twice in flight may be sealed
/// twice; [`pack_batch`] keeps one.
fn seal_batch(inner: &Inner, batch: &Batch) -> Result<SealedBatch> {
    let index = inner
        .index
        .get()
        .ok_or_else(|| Error::Internal("index not loaded".into()))?;
    let key = inner.keyring.write_key();
    let level = inner.config.compression.level;
    let results: Vec<(BlobId, Option<Result<blob::SealedBlob>>)> = batch
        .chunks
        .par_iter()
        .map(|r| {
            let data = batch.data.get(r.clone()).unwrap_or_default();
            let id = inner.keyring.blob_id(data);
            let known = index.read().map(|i| i.contains(&id)).unwrap_or(false);
            (
                id,
                (!known).then(|| blob::seal(key, id, BlobType::Data, data, level)),
            )
        })
        .collect();
    let mut ids = Vec::with_capacity(results.len());
    let mut sealed = Vec::new();
    for (id, s) in results {
        ids.push(id);
        if let Some(s) = s {
            sealed.push(s?);
        }
    }
    Ok(SealedBatch {
        ids,
        sealed,
        len: batch.data.len() as u64,
    })
}

/// The ordered stage: drop blobs stored meanwhile, pack the rest, record ids.
fn pack_batch(
    inner: &Inner,
    batch: SealedBatch,
    packer: &mut Packer<'_>,
    content: &mut Vec<BlobId>,
) -> Result<()> {
    let fresh: Vec<blob::SealedBlob> = {
        let index = inner
            .index
            .get()
            .ok_or_else(|| Error::Internal("index not loaded".into()))?
            .read()
            .map_err(|_| poisoned())?;
        let mut seen = HashSet::new();
        batch
            .sealed
            .into_iter()
            .filter(|s| !index.contains(&s.id) && seen.insert(s.id))
            .collect()
    };
    packer.stats.total_chunks += batch.ids.len() as u64;
    packer.add(fresh, BlobType::Data)?;
    content.extend(batch.ids);
    Ok(())
}
