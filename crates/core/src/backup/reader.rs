//! The reading stage: turns a depth-first sequence of [`Entry`]s into
//! batches of chunked bytes plus the "pieces" that say which chunks belong to
//! which file. Small files share a batch; a large file spans several. Each
//! file is chunked on its own, so its cut points do not depend on its
//! neighbours (the same file dedups wherever it sits).

use std::io::Read;
use std::ops::Range;

use crate::chunker::Chunker;
use crate::id::BlobId;
use crate::tree::Meta;

/// Bytes read per batch (at least twice the largest chunk).
pub(crate) const BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Pieces per batch: bounds the latency of metadata-only runs (a walk of
/// unchanged files reads no bytes but must keep flowing).
const PIECES_PER_BATCH: usize = 4096;

/// Where a file's bytes come from.
pub enum Content {
    /// Read the bytes (the reader is first called on the reading thread, so
    /// a lazy reader opens its file there).
    Read(Box<dyn Read + Send>),
    /// Already cut into chunks (a copy from another repository): each is
    /// stored as one blob, whatever this repository's chunker would cut.
    /// An error leaves the file out, as a failed read does.
    Chunks(Box<dyn Iterator<Item = std::io::Result<Vec<u8>>> + Send>),
    /// Cut into blocks by the caller, some of them already stored (a disk
    /// image read with changed-block tracking: clean blocks keep the blob
    /// of the previous snapshot, dirty ones are read). Each
    /// [`Block::Data`] is stored as one blob; the caller checks that the
    /// repository holds each [`Block::Stored`] (see [`crate::KnownBlobs`]).
    /// An error leaves the file out, as a failed read does.
    Blocks(Box<dyn Iterator<Item = std::io::Result<Block>> + Send>),
    /// Already stored: the chunk ids and their total size (e.g. from a
    /// files cache). The caller checks that the repository holds them.
    Stored {
        /// Chunk ids in order.
        content: Vec<BlobId>,
        /// Total bytes.
        size: u64,
    },
}

/// One block of [`Content::Blocks`].
pub enum Block {
    /// Bytes to store as one blob (deduplicated like any chunk).
    Data(Vec<u8>),
    /// A blob the repository holds, taken as is.
    Stored {
        /// Its id.
        id: BlobId,
        /// Its plaintext size.
        size: u32,
    },
    /// Replaces the node's metadata: for what is known only once the
    /// content has been read (which blocks were holes, say). The last one
    /// before the end counts.
    Meta(Meta),
}

/// Called with a file's chunk ids and size once they are packed (on the
/// backup thread: keep it short, e.g. send to a channel).
pub type OnStored = Box<dyn FnOnce(&[BlobId], u64) + Send>;

/// One entry of a backup source, in depth-first order: a `Dir` opens a
/// directory whose entries follow until its `EndDir`.
pub enum Entry {
    /// Opens a directory.
    Dir {
        /// Name within its parent (raw bytes).
        name: Vec<u8>,
        /// Adapter metadata.
        meta: Meta,
    },
    /// Closes the innermost open directory.
    EndDir,
    /// A file with content.
    File {
        /// Name within its parent.
        name: Vec<u8>,
        /// Adapter metadata.
        meta: Meta,
        /// The bytes.
        content: Content,
        /// Told the chunk ids when the content has been read and packed
        /// (not for a file that failed to read).
        on_stored: Option<OnStored>,
    },
    /// An entry without content (symlink, device, FIFO, ...).
    Leaf {
        /// Name within its parent.
        name: Vec<u8>,
        /// Adapter metadata.
        meta: Meta,
    },
}

/// What the ordered stage does with the next chunks of a batch.
pub(crate) enum Piece {
    /// Opens a directory.
    Dir { name: Vec<u8>, meta: Meta },
    /// Closes a directory.
    EndDir,
    /// An entry without content.
    Leaf { name: Vec<u8>, meta: Meta },
    /// A file whose chunks are already stored.
    Stored {
        name: Vec<u8>,
        meta: Meta,
        content: Vec<BlobId>,
        size: u64,
    },
    /// Starts a file: its chunks follow.
    Start {
        name: Vec<u8>,
        meta: Meta,
        on_stored: Option<OnStored>,
    },
    /// The next `n` chunks of the batch belong to the open file.
    Chunks(usize),
    /// A stored blob belongs to the open file next.
    Known { id: BlobId, size: u32 },
    /// New metadata for the open file.
    Meta(Meta),
    /// The open file is complete.
    End,
    /// The open file could not be read: leave it out, with a warning.
    Failed(std::io::Error),
}

/// A batch: bytes, chunk ranges over them, and the pieces in order.
pub(crate) struct Batch {
    pub data: Vec<u8>,
    pub chunks: Vec<Range<usize>>,
    pub pieces: Vec<Piece>,
}

/// Fills batches from entries; `emit` receives each full batch and returns
/// false when the consumer has stopped.
pub(crate) struct Batcher<F: FnMut(Batch) -> bool> {
    chunker: Chunker,
    capacity: usize,
    data: Vec<u8>,
    chunks: Vec<Range<usize>>,
    pieces: Vec<Piece>,
    spare: std::sync::mpsc::Receiver<Vec<u8>>,
    emit: F,
    stopped: bool,
}

impl<F: FnMut(Batch) -> bool> Batcher<F> {
    pub(crate) fn new(
        chunker: Chunker,
        spare: std::sync::mpsc::Receiver<Vec<u8>>,
        emit: F,
    ) -> Self {
        let capacity = BATCH_BYTES.max(2 * chunker.params().max_size());
        Batcher {
            chunker,
            capacity,
            data: Vec::with_capacity(capacity),
            chunks: Vec::new(),
            pieces: Vec::new(),
            spare,
            emit,
            stopped: false,
        }
    }

    /// Reads every entry; returns false if the consumer stopped early.
    pub(crate) fn run(mut self, entries: impl Iterator<Item = Entry>) -> bool {
        for entry in entries {
            match entry {
                Entry::Dir { name, meta } => self.pieces.push(Piece::Dir { name, meta }),
                Entry::EndDir => self.pieces.push(Piece::EndDir),
                Entry::Leaf { name, meta } => self.pieces.push(Piece::Leaf { name, meta }),
                Entry::File {
                    name,
                    meta,
                    content,
                    on_stored,
                } => match content {
                    Content::Stored { content, size } => self.pieces.push(Piece::Stored {
                        name,
                        meta,
                        content,
                        size,
                    }),
                    Content::Read(reader) => {
                        self.pieces.push(Piece::Start {
                            name,
                            meta,
                            on_stored,
                        });
                        self.read_file(reader);
                    }
                    Content::Chunks(chunks) => {
                        self.pieces.push(Piece::Start {
                            name,
                            meta,
                            on_stored,
                        });
                        self.take_blocks(Box::new(chunks.map(|c| c.map(Block::Data))));
                    }
                    Content::Blocks(blocks) => {
                        self.pieces.push(Piece::Start {
                            name,
                            meta,
                            on_stored,
                        });
                        self.take_blocks(blocks);
                    }
                },
            }
            if self.pieces.len() >= PIECES_PER_BATCH {
                self.flush(0);
            }
            if self.stopped {
                return false;
            }
        }
        if !self.pieces.is_empty() || !self.data.is_empty() {
            self.flush(0);
        }
        !self.stopped
    }

    /// Reads one file into the batch buffer, chunking it and emitting full
    /// batches as it goes.
    fn read_file(&mut self, mut reader: Box<dyn Read + Send>) {
        // Start of this file's bytes that are not yet cut into chunks.
        let mut start = self.data.len();
        loop {
            if self.stopped {
                return;
            }
            let space = self.capacity - self.data.len();
            if space == 0 {
                let cut = self.cut(start, false);
                self.flush(cut);
                // The uncut tail now starts the new batch.
                start = 0;
                continue;
            }
            // `read_to_end` fills spare capacity without zeroing it first and
            // retries on `Interrupted`; `take` stops it at the batch size.
            match (&mut reader).take(space as u64).read_to_end(&mut self.data) {
                Ok(n) if n < space => {
                    self.cut(start, true);
                    self.pieces.push(Piece::End);
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    // Bytes of this file not yet chunked are dropped; the
                    // ordered stage drops its chunks from earlier batches.
                    self.data.truncate(start);
                    self.pieces.push(Piece::Failed(e));
                    return;
                }
            }
        }
    }

    /// Adds a file's ready-cut blocks to the batch, emitting full batches
    /// as it goes.
    fn take_blocks(&mut self, blocks: Box<dyn Iterator<Item = std::io::Result<Block>> + Send>) {
        let mut pending = 0;
        for block in blocks {
            if self.stopped {
                return;
            }
            let chunk = match block {
                Ok(Block::Data(c)) => c,
                Ok(Block::Stored { id, size }) => {
                    if pending > 0 {
                        self.pieces.push(Piece::Chunks(pending));
                        pending = 0;
                    }
                    self.pieces.push(Piece::Known { id, size });
                    if self.pieces.len() >= PIECES_PER_BATCH {
                        let all = self.data.len();
                        self.flush(all);
                    }
                    continue;
                }
                Ok(Block::Meta(meta)) => {
                    if pending > 0 {
                        self.pieces.push(Piece::Chunks(pending));
                        pending = 0;
                    }
                    self.pieces.push(Piece::Meta(meta));
                    if self.pieces.len() >= PIECES_PER_BATCH {
                        let all = self.data.len();
                        self.flush(all);
                    }
                    continue;
                }
                Err(e) => {
                    if pending > 0 {
                        self.pieces.push(Piece::Chunks(pending));
                    }
                    // The ordered stage drops the chunks already queued.
                    self.pieces.push(Piece::Failed(e));
                    return;
                }
            };
            if chunk.is_empty() {
                continue;
            }
            if self.data.len() + chunk.len() > self.capacity && !self.data.is_empty() {
                if pending > 0 {
                    self.pieces.push(Piece::Chunks(pending));
                    pending = 0;
                }
                let all = self.data.len();
                self.flush(all);
            }
            let start = self.data.len();
            self.data.extend_from_slice(&chunk);
            self.chunks.push(start..self.data.len());
            pending += 1;
        }
        if pending > 0 {
            self.pieces.push(Piece::Chunks(pending));
        }
        self.pieces.push(Piece::End);
    }

    /// Cuts chunks from `start` on (all of it at the end of a file, else
    /// leaving less than a maximal chunk); returns where the uncut tail starts.
    fn cut(&mut self, start: usize, end_of_file: bool) -> usize {
        let max = self.chunker.params().max_size();
        let mut pos = start;
        let mut n = 0;
        while let Some(rest) = self.data.get(pos..) {
            if rest.is_empty() || (!end_of_file && rest.len() < max) {
                break;
            }
            let len = self.chunker.cut(rest).max(1);
            self.chunks.push(pos..pos + len);
            pos += len;
            n += 1;
        }
        if n > 0 {
            self.pieces.push(Piece::Chunks(n));
        }
        pos
    }

    /// Emits the batch up to `keep_from`, carrying the bytes after it into
    /// the next batch (where they start at 0).
    fn flush(&mut self, keep_from: usize) {
        let keep_from = keep_from.min(self.data.len()).max(
            // Without a carry, everything read is chunked already.
            self.chunks.last().map_or(0, |r| r.end),
        );
        let mut next = self.spare.try_recv().unwrap_or_default();
        next.clear();
        next.reserve_exact(self.capacity);
        next.extend_from_slice(self.data.get(keep_from..).unwrap_or_default());
        let mut data = std::mem::replace(&mut self.data, next);
        data.truncate(keep_from);
        let batch = Batch {
            data,
            chunks: std::mem::take(&mut self.chunks),
            pieces: std::mem::take(&mut self.pieces),
        };
        if !(self.emit)(batch) {
            self.stopped = true;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::chunker::ChunkerParams;
    use crate::chunker::tests::pseudo_random as bytes;

    fn chunker() -> Chunker {
        let params = ChunkerParams::FastCdc {
            min: 256,
            avg: 1024,
            max: 4096,
        };
        Chunker::new(params, &[7; 32]).unwrap()
    }

    /// Runs the batcher with a small buffer and returns each file's chunks
    /// (as byte vectors) in order.
    fn run(files: Vec<Vec<u8>>, capacity: usize) -> Vec<Vec<Vec<u8>>> {
        let (_spare_tx, spare_rx) = std::sync::mpsc::channel();
        let mut batches = Vec::new();
        let mut b = Batcher::new(chunker(), spare_rx, |batch| {
            batches.push(batch);
            true
        });
        b.capacity = capacity;
        let entries = files.into_iter().map(|f| Entry::File {
            name: b"f".to_vec(),
            meta: Meta::null(),
            content: Content::Read(Box::new(std::io::Cursor::new(f))),
            on_stored: None,
        });
        assert!(b.run(entries));
        let mut out: Vec<Vec<Vec<u8>>> = Vec::new();
        for batch in batches {
            let mut next = 0;
            for p in batch.pieces {
                match p {
                    Piece::Start { .. } => out.push(Vec::new()),
                    Piece::Chunks(n) => {
                        for r in &batch.chunks[next..next + n] {
                            out.last_mut().unwrap().push(batch.data[r.clone()].to_vec());
                        }
                        next += n;
                    }
                    Piece::End => {}
                    _ => panic!("unexpected piece"),
                }
            }
            assert_eq!(next, batch.chunks.len());
            assert_eq!(batch.chunks.last().map_or(0, |r| r.end), batch.data.len());
        }
        out
    }

    #[test]
    fn files_are_chunked_alone_whatever_the_batch_size() {
        let files: Vec<Vec<u8>> = (0..20u8)
            .map(|i| bytes(usize::from(i) * 1500 + usize::from(i % 3), i))
            .collect();
        let alone: Vec<Vec<Vec<u8>>> = files
            .iter()
            .map(|f| {
                chunker()
                    .cut_all(f)
                    .into_iter()
                    .map(|r| f[r].to_vec())
                    .collect()
            })
            .collect();
        for capacity in [8192, 9000, 20_000, 1 << 20] {
            let got = run(files.clone(), capacity);
            assert_eq!(got, alone, "capacity {capacity}");
        }
    }

    #[test]
    fn a_failed_read_drops_the_file_and_continues() {
        struct Fails(usize);
        impl Read for Fails {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0 == 0 {
                    return Err(std::io::Error::other("gone"));
                }
                let n = self.0.min(buf.len());
                buf[..n].fill(1);
                self.0 -= n;
                Ok(n)
            }
        }
        let (_spare_tx, spare_rx) = std::sync::mpsc::channel();
        let mut batches = Vec::new();
        let mut b = Batcher::new(chunker(), spare_rx, |batch| {
            batches.push(batch);
            true
        });
        b.capacity = 8192;
        let entries = vec![
            Entry::File {
                name: b"bad".to_vec(),
                meta: Meta::null(),
                content: Content::Read(Box::new(Fails(10_000))),
                on_stored: None,
            },
            Entry::File {
                name: b"good".to_vec(),
                meta: Meta::null(),
                content: Content::Read(Box::new(std::io::Cursor::new(vec![2u8; 100]))),
                on_stored: None,
            },
        ];
        assert!(b.run(entries.into_iter()));
        let pieces: Vec<&Piece> = batches.iter().flat_map(|b| &b.pieces).collect();
        assert!(matches!(pieces.last(), Some(Piece::End)));
        assert!(pieces.iter().any(|p| matches!(p, Piece::Failed(_))));
        let last = batches.last().unwrap();
        assert_eq!(
            last.data,
            vec![2u8; 100],
            "only the good file's bytes remain"
        );
    }
}
