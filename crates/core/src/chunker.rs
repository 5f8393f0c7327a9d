//! Content-defined chunking (FastCDC 2020, keyed gear table) and fixed-size
//! chunking for block devices.
//!
//! The gear table is 256 words of keyed BLAKE3 output under the repository's
//! chunker key, so cut points (and chunk sizes) depend on the key. Cut points
//! depend only on the bytes of the stream: [`StreamChunker`] always offers the
//! cut function at least `max` bytes (or everything up to the end of the
//! stream), however the reader splits its reads.

use std::io::Read;
use std::ops::Range;

use fastcdc::v2020::{Normalization, cut_gear, select_masks};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Bounds accepted by the `fastcdc` crate (v2020).
const CDC_MIN_LOWEST: u32 = 64;
const CDC_MAX_HIGHEST: u32 = 1 << 30;

/// How a repository cuts streams into chunks (recorded in `config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "algorithm", rename_all = "kebab-case")]
pub enum ChunkerParams {
    /// FastCDC 2020 with normalization level 1 and a keyed gear table.
    #[serde(rename = "fastcdc-2020")]
    FastCdc {
        /// Smallest chunk (except a stream's last).
        min: u32,
        /// Target average.
        avg: u32,
        /// Largest chunk.
        max: u32,
    },
    /// Fixed-size chunks (block devices, VM images).
    Fixed {
        /// Chunk size.
        size: u32,
    },
}

impl Default for ChunkerParams {
    /// 512 KiB / 1 MiB / 4 MiB: see `docs/DESIGN.md` ("Chunk size").
    fn default() -> Self {
        ChunkerParams::FastCdc {
            min: 512 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the sizes are out of order or range.
    pub fn validate(&self) -> Result<()> {
        match *self {
            ChunkerParams::FastCdc { min, avg, max } => {
                let ok = CDC_MIN_LOWEST <= min
                    && min <= avg
                    && avg <= max
                    && max <= CDC_MAX_HIGHEST
                    && [min, avg, max].iter().all(|v| v % 2 == 0)
                    && avg >= 256;
                if !ok {
                    return Err(Error::InvalidArgument(format!(
                        "chunk sizes min {min} <= avg {avg} <= max {max} must be even, min >= {CDC_MIN_LOWEST}, max <= {CDC_MAX_HIGHEST}"
                    )));
                }
            }
            ChunkerParams::Fixed { size } => {
                if !(4096..=CDC_MAX_HIGHEST).contains(&size) {
                    return Err(Error::InvalidArgument(format!(
                        "fixed chunk size {size} out of range"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The largest chunk these parameters produce.
    pub fn max_size(&self) -> usize {
        match *self {
            ChunkerParams::FastCdc { max, .. } => max as usize,
            ChunkerParams::Fixed { size } => size as usize,
        }
    }
}

/// A ready-to-use cut function.
#[derive(Clone)]
pub struct Chunker {
    params: ChunkerParams,
    gear: Box<[u64; 256]>,
    gear_ls: Box<[u64; 256]>,
    masks: (u64, u64),
}

impl Chunker {
    /// Builds the chunker for `params`, deriving the gear table from `key`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for invalid parameters.
    pub fn new(params: ChunkerParams, key: &[u8; 32]) -> Result<Self> {
        params.validate()?;
        let mut gear = Box::new([0u64; 256]);
        let mut xof = blake3::Hasher::new_keyed(key);
        xof.update(b"tessera fastcdc-2020 gear table v1");
        let mut reader = xof.finalize_xof();
        for g in gear.iter_mut() {
            let mut word = [0u8; 8];
            reader.fill(&mut word);
            *g = u64::from_le_bytes(word);
        }
        let mut gear_ls = Box::new([0u64; 256]);
        for (ls, g) in gear_ls.iter_mut().zip(gear.iter()) {
            *ls = g << 1;
        }
        let masks = match params {
            ChunkerParams::FastCdc { avg, .. } => select_masks(avg as usize, Normalization::Level1),
            ChunkerParams::Fixed { .. } => (0, 0),
        };
        Ok(Chunker {
            params,
            gear,
            gear_ls,
            masks,
        })
    }

    /// The parameters.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Length of the chunk starting at `data[0]`. `data` must hold at least
    /// `max` bytes unless it is the end of the stream.
    pub fn cut(&self, data: &[u8]) -> usize {
        match self.params {
            ChunkerParams::FastCdc { min, avg, max } => {
                let (mask_s, mask_l) = self.masks;
                let (_, len) = cut_gear(
                    data,
                    min as usize,
                    avg as usize,
                    max as usize,
                    mask_s,
                    mask_l,
                    mask_s << 1,
                    mask_l << 1,
                    self.gear.as_slice(),
                    self.gear_ls.as_slice(),
                );
                len
            }
            ChunkerParams::Fixed { size } => data.len().min(size as usize),
        }
    }

    /// All chunk boundaries of a complete in-memory stream.
    pub fn cut_all(&self, data: &[u8]) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(rest) = data.get(pos..).filter(|r| !r.is_empty()) {
            let len = self.cut(rest).max(1);
            out.push(pos..pos + len);
            pos += len;
        }
        out
    }
}

/// A run of consecutive chunks of one stream, sharing one buffer.
pub struct Batch {
    /// The bytes; chunks are ranges of it. Send the buffer back through the
    /// channel given to [`StreamChunker::recycle_from`] to reuse it.
    pub data: Vec<u8>,
    /// Chunk ranges, in stream order, covering `data` exactly.
    pub chunks: Vec<Range<usize>>,
}

/// Reads a stream in large buffers and cuts it into batches of chunks.
pub struct StreamChunker<R> {
    reader: R,
    chunker: Chunker,
    buffer_size: usize,
    carry: Vec<u8>,
    eof: bool,
    bytes_read: u64,
    spare: Option<std::sync::mpsc::Receiver<Vec<u8>>>,
}

impl<R: Read> StreamChunker<R> {
    /// `buffer_size` is raised to twice the maximum chunk size if smaller.
    pub fn new(reader: R, chunker: Chunker, buffer_size: usize) -> Self {
        let buffer_size = buffer_size.max(2 * chunker.params().max_size());
        StreamChunker {
            reader,
            chunker,
            buffer_size,
            carry: Vec::new(),
            eof: false,
            bytes_read: 0,
            spare: None,
        }
    }

    /// Reuses batch buffers sent back on `spare` instead of allocating new
    /// ones: a fresh multi-MiB buffer costs a page fault per 4 KiB.
    pub fn recycle_from(mut self, spare: std::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        self.spare = Some(spare);
        self
    }

    /// Bytes read from the stream so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// The next batch, or `None` at the end of the stream.
    ///
    /// # Errors
    /// The reader's error.
    pub fn next_batch(&mut self) -> std::io::Result<Option<Batch>> {
        let mut buf = self
            .spare
            .as_ref()
            .and_then(|rx| rx.try_recv().ok())
            .unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(&self.carry);
        let want = self.buffer_size.saturating_sub(buf.len());
        buf.reserve_exact(want);
        if !self.eof {
            // `read_to_end` fills spare capacity without zeroing it first and
            // retries on `Interrupted`; `take` stops it at the batch size.
            let n = (&mut self.reader).take(want as u64).read_to_end(&mut buf)?;
            self.bytes_read += n as u64;
            if n < want {
                self.eof = true;
            }
        }
        if buf.is_empty() {
            return Ok(None);
        }
        let max = self.chunker.params().max_size();
        let mut chunks = Vec::new();
        let mut pos = 0;
        while let Some(rest) = buf.get(pos..) {
            if rest.is_empty() || (!self.eof && rest.len() < max) {
                break;
            }
            let len = self.chunker.cut(rest).max(1);
            chunks.push(pos..pos + len);
            pos += len;
        }
        self.carry.clear();
        self.carry
            .extend_from_slice(buf.get(pos..).unwrap_or_default());
        buf.truncate(pos);
        Ok(Some(Batch { data: buf, chunks }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A reader that returns at most `sizes[i % len]` bytes per call.
    struct Choppy<'a> {
        data: &'a [u8],
        sizes: Vec<usize>,
        call: usize,
    }

    impl Read for Choppy<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let want = self.sizes[self.call % self.sizes.len()].max(1);
            self.call += 1;
            let n = want.min(buf.len()).min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn small_params() -> ChunkerParams {
        ChunkerParams::FastCdc {
            min: 256,
            avg: 1024,
            max: 4096,
        }
    }

    pub(crate) fn pseudo_random(len: usize, seed: u8) -> Vec<u8> {
        let mut out = vec![0u8; len];
        let mut xof = blake3::Hasher::new();
        xof.update(&[seed]);
        xof.finalize_xof().fill(&mut out);
        out
    }

    fn stream_cuts(
        data: &[u8],
        sizes: Vec<usize>,
        buffer: usize,
        chunker: &Chunker,
    ) -> Vec<(usize, usize)> {
        let reader = Choppy {
            data,
            sizes,
            call: 0,
        };
        let mut s = StreamChunker::new(reader, chunker.clone(), buffer);
        let mut base = 0;
        let mut out = Vec::new();
        while let Some(batch) = s.next_batch().unwrap() {
            for r in &batch.chunks {
                out.push((base + r.start, r.len()));
            }
            assert_eq!(
                batch.chunks.iter().map(|r| r.len()).sum::<usize>(),
                batch.data.len()
            );
            base += batch.data.len();
        }
        assert_eq!(base, data.len());
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn cut_points_do_not_depend_on_read_sizes(
            len in 0usize..60_000,
            seed in any::<u8>(),
            sizes in proptest::collection::vec(1usize..9000, 1..8),
            buffer in 0usize..20_000,
        ) {
            let data = pseudo_random(len, seed);
            let chunker = Chunker::new(small_params(), &[7; 32]).unwrap();
            let whole: Vec<(usize, usize)> =
                chunker.cut_all(&data).into_iter().map(|r| (r.start, r.len())).collect();
            prop_assert_eq!(stream_cuts(&data, sizes, buffer, &chunker), whole);
        }
    }

    #[test]
    fn sizes_respect_bounds_and_key_changes_cuts() {
        let data = pseudo_random(400_000, 1);
        let a = Chunker::new(small_params(), &[1; 32]).unwrap();
        let b = Chunker::new(small_params(), &[2; 32]).unwrap();
        let ca = a.cut_all(&data);
        for r in &ca[..ca.len() - 1] {
            assert!((256..=4096).contains(&r.len()), "{r:?}");
        }
        assert_ne!(ca, b.cut_all(&data), "the key must change the cut points");
        let avg = data.len() / ca.len();
        assert!((600..2000).contains(&avg), "average {avg}");
    }

    #[test]
    fn fixed_chunker() {
        let c = Chunker::new(ChunkerParams::Fixed { size: 4096 }, &[0; 32]).unwrap();
        let cuts = c.cut_all(&[0u8; 10_000]);
        assert_eq!(cuts, vec![0..4096, 4096..8192, 8192..10_000]);
    }

    #[test]
    fn invalid_params_rejected() {
        assert!(
            ChunkerParams::FastCdc {
                min: 10,
                avg: 5,
                max: 20
            }
            .validate()
            .is_err()
        );
        assert!(ChunkerParams::Fixed { size: 1 }.validate().is_err());
        ChunkerParams::default().validate().unwrap();
    }
}
