//! The backup thread's ordered stage: sealed blobs into packs, in stream
//! order, and pieces into tree nodes, a directory's tree sealed when it
//! closes.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use super::reader::{OnStored, Piece};
use super::{BackupProgress, CpuResult, SealedBatch, index_of};
use crate::blob::{self, BlobType};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::pack::{FinishedPack, PackWriter};
use crate::repo::{Inner, poisoned};
use crate::snapshot::SnapshotStats;
use crate::tree::{Meta, Node, NodeKind, Tree};

/// Pack writers and counters of the backup thread.
pub(super) struct Packer<'a> {
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

/// The backup thread's ordered stage: packs sealed batches in order and
/// assembles tree nodes from their pieces, sealing each directory's tree
/// blob when it closes.
pub(super) struct Assembler<'a> {
    packer: Packer<'a>,
    /// Open directories: the root first, each with its name, meta and nodes.
    stack: Vec<Frame>,
    /// The file whose chunks are arriving.
    open_file: Option<OpenFile>,
    warnings: Vec<String>,
    progress: Option<&'a BackupProgress>,
}

struct Frame {
    name: Vec<u8>,
    meta: Meta,
    nodes: Vec<Node>,
}

struct OpenFile {
    name: Vec<u8>,
    meta: Meta,
    content: Vec<BlobId>,
    size: u64,
    on_stored: Option<OnStored>,
}

impl<'a> Assembler<'a> {
    /// An assembler with the root directory open and no pack begun.
    pub(super) fn new(
        inner: &'a Inner,
        tx: &'a tokio::sync::mpsc::Sender<FinishedPack>,
        progress: Option<&'a BackupProgress>,
    ) -> Self {
        Assembler {
            packer: Packer {
                inner,
                tx,
                data: None,
                tree: None,
                stats: SnapshotStats::default(),
            },
            stack: vec![Frame {
                name: Vec::new(),
                meta: Meta::null(),
                nodes: Vec::new(),
            }],
            open_file: None,
            warnings: Vec::new(),
            progress,
        }
    }

    fn frame(&mut self) -> Result<&mut Frame> {
        self.stack
            .last_mut()
            .ok_or_else(|| Error::InvalidArgument("more EndDir entries than Dir entries".into()))
    }

    fn push_node(&mut self, node: Node) -> Result<()> {
        if let Some(p) = self.progress {
            p.entries_done.fetch_add(1, Ordering::Relaxed);
        }
        self.frame()?.nodes.push(node);
        Ok(())
    }

    /// Applies one sealed batch: packs its new blobs, then walks its pieces.
    pub(super) fn apply(&mut self, batch: SealedBatch) -> Result<()> {
        let SealedBatch {
            ids,
            sealed,
            len,
            pieces,
            sizes,
        } = batch;
        pack_new(self.packer.inner, sealed, &mut self.packer)?;
        self.packer.stats.total_chunks += ids.len() as u64;
        self.packer.stats.total_bytes += len;
        let mut ids = ids.into_iter().zip(sizes);
        for piece in pieces {
            match piece {
                Piece::Dir { name, meta } => self.stack.push(Frame {
                    name,
                    meta,
                    nodes: Vec::new(),
                }),
                Piece::EndDir => self.close_dir()?,
                Piece::Leaf { name, meta } => {
                    self.push_node(Node::new(&name, 0, NodeKind::Leaf, meta))?;
                }
                Piece::Stored {
                    name,
                    meta,
                    content,
                    size,
                } => {
                    self.packer.stats.total_chunks += content.len() as u64;
                    self.packer.stats.total_bytes += size;
                    self.push_node(Node::new(&name, size, NodeKind::Stream { content }, meta))?;
                }
                Piece::Start {
                    name,
                    meta,
                    on_stored,
                } => {
                    self.open_file = Some(OpenFile {
                        name,
                        meta,
                        content: Vec::new(),
                        size: 0,
                        on_stored,
                    });
                }
                Piece::Chunks(n) => {
                    let file = self
                        .open_file
                        .as_mut()
                        .ok_or_else(|| Error::Internal("chunks outside a file".into()))?;
                    for (id, size) in ids.by_ref().take(n) {
                        file.content.push(id);
                        file.size += size;
                    }
                }
                Piece::Known { id, size } => {
                    let file = self
                        .open_file
                        .as_mut()
                        .ok_or_else(|| Error::Internal("a block outside a file".into()))?;
                    file.content.push(id);
                    file.size += u64::from(size);
                    self.packer.stats.total_chunks += 1;
                    self.packer.stats.total_bytes += u64::from(size);
                }
                Piece::Meta(meta) => {
                    self.open_file
                        .as_mut()
                        .ok_or_else(|| Error::Internal("metadata outside a file".into()))?
                        .meta = meta;
                }
                Piece::End => {
                    let f = self
                        .open_file
                        .take()
                        .ok_or_else(|| Error::Internal("end outside a file".into()))?;
                    if let Some(tell) = f.on_stored {
                        tell(&f.content, f.size);
                    }
                    self.push_node(Node::new(
                        &f.name,
                        f.size,
                        NodeKind::Stream { content: f.content },
                        f.meta,
                    ))?;
                }
                Piece::Failed(e) => {
                    if let Some(f) = self.open_file.take() {
                        let path = self.path_of(&f.name);
                        self.warnings
                            .push(format!("{path}: not backed up: reading failed: {e}"));
                    }
                }
            }
        }
        if let Some(p) = self.progress {
            p.bytes_new
                .store(self.packer.stats.new_bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The path of `name` in the open directories, for messages.
    fn path_of(&self, name: &[u8]) -> String {
        let mut parts: Vec<String> = self
            .stack
            .iter()
            .skip(1)
            .map(|f| String::from_utf8_lossy(&f.name).into_owned())
            .collect();
        parts.push(String::from_utf8_lossy(name).into_owned());
        parts.join("/")
    }

    /// Seals a directory's tree (unless the repository has it) and adds
    /// its node to the parent.
    fn close_dir(&mut self) -> Result<()> {
        if self.stack.len() < 2 {
            return Err(Error::InvalidArgument(
                "more EndDir entries than Dir entries".into(),
            ));
        }
        let frame = self.frame_pop()?;
        let subtree = self.store_tree(frame.nodes)?;
        #[cfg(feature = "forge")]
        let (name, meta) = (frame.name.clone(), frame.meta.clone());
        self.push_node(Node::new(
            &frame.name,
            0,
            NodeKind::Dir { subtree },
            frame.meta,
        ))?;
        #[cfg(feature = "forge")]
        if self.packer.inner.forge_trees.load(Ordering::Relaxed) {
            // Copies named NAME0001, NAME0002, ...: still in byte order.
            for i in 1..self.packer.inner.forge_copies.load(Ordering::Relaxed) {
                let copy = [&name[..], format!("{i:04}").as_bytes()].concat();
                let kind = NodeKind::Dir { subtree };
                self.push_node(Node::new(&copy, 0, kind, meta.clone()))?;
            }
        }
        Ok(())
    }

    fn frame_pop(&mut self) -> Result<Frame> {
        self.stack
            .pop()
            .ok_or_else(|| Error::Internal("no open directory".into()))
    }

    /// Encodes, hashes and (if new) seals and packs a tree blob.
    fn store_tree(&mut self, nodes: Vec<Node>) -> Result<BlobId> {
        let inner = self.packer.inner;
        #[cfg(feature = "forge")]
        let tree = if inner.forge_trees.load(Ordering::Relaxed) {
            Tree::forged(nodes)
        } else {
            Tree::new(nodes)?
        };
        #[cfg(not(feature = "forge"))]
        let tree = Tree::new(nodes)?;
        let tree = tree.encode();
        let id = inner.keyring.blob_id(&tree);
        if !index_of(inner)?
            .read()
            .map_err(|_| poisoned())?
            .contains(&id)
        {
            let sealed = blob::seal(
                inner.keyring.write_key(),
                id,
                BlobType::Tree,
                &tree,
                inner.config.compression.level,
            )?;
            self.packer.add(vec![sealed], BlobType::Tree)?;
        }
        Ok(id)
    }

    /// Closes the root after the last batch.
    pub(super) fn finish(mut self) -> Result<CpuResult> {
        if self.open_file.is_some() || self.stack.len() != 1 {
            return Err(Error::InvalidArgument(
                "the entries ended inside a file or an open directory".into(),
            ));
        }
        let root_frame = self.frame_pop()?;
        let root = self.store_tree(root_frame.nodes)?;
        self.packer.flush()?;
        Ok(CpuResult {
            root,
            stats: self.packer.stats,
            warnings: self.warnings,
        })
    }
}

/// The ordered stage's packing: drop blobs stored meanwhile, pack the rest.
pub(super) fn pack_new(
    inner: &Inner,
    sealed: Vec<blob::SealedBlob>,
    packer: &mut Packer<'_>,
) -> Result<()> {
    let fresh: Vec<blob::SealedBlob> = {
        let index = index_of(inner)?.read().map_err(|_| poisoned())?;
        let mut seen = HashSet::new();
        sealed
            .into_iter()
            .filter(|s| !index.contains(&s.id) && seen.insert(s.id))
            .collect()
    };
    packer.add(fresh, BlobType::Data)
}
