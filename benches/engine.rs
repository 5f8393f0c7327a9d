//! Engine benchmarks: each primitive alone, the same primitives chained in
//! one thread (the "bare loop"), the real write pipeline (I/O included,
//! into a local repository), and restore. Also prints the index's RAM per
//! chunk. Quick run: `cargo bench --bench engine -- --quick`.

use std::hint::black_box;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput};
use rayon::prelude::*;
use tessera::blob::{self, BlobType};
use tessera::chunker::{Chunker, ChunkerParams};
use tessera::index::{Index, IndexPack, IndexSegment};
use tessera::keyring::{DataKey, Keyring};
use tessera::pack::PackEntry;
use tessera::{
    BackupOptions, BlobId, Credential, InitOptions, KdfParams, ObjectStoreBackend, PackId,
    StreamSource, blocking,
};

const MIB: usize = 1 << 20;

/// Deterministic text-like data (compresses about 4-6x with zstd-3).
fn text(len: usize) -> Vec<u8> {
    const WORDS: [&str; 24] = [
        "backup",
        "restore",
        "the",
        "of",
        "snapshot",
        "chunk",
        "repository",
        "and",
        "index",
        "pack",
        "to",
        "a",
        "postgres",
        "table",
        "row",
        "select",
        "from",
        "where",
        "id",
        "=",
        "42;",
        "\n",
        "error:",
        "ok",
    ];
    let mut out = Vec::with_capacity(len + 16);
    let mut s = 0x2545_f491_4f6c_dd1du64;
    while out.len() < len {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        out.extend_from_slice(WORDS[(s % 24) as usize].as_bytes());
        out.push(if s & 0x300 == 0 { b'\n' } else { b' ' });
        if s & 0xff == 0 {
            out.extend_from_slice(format!("{}", s >> 40).as_bytes());
        }
    }
    out.truncate(len);
    out
}

fn random(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(b"bench")
        .finalize_xof()
        .fill(&mut out);
    out
}

fn primitives(c: &mut Criterion, data: &[u8]) {
    let ring = Keyring::generate();
    let chunker = Chunker::new(ChunkerParams::default(), ring.chunker_key()).unwrap();
    let chunks = chunker.cut_all(data);
    let mut g = c.benchmark_group("primitives");
    g.throughput(Throughput::Bytes(data.len() as u64))
        .sample_size(10);
    g.bench_function("fastcdc_keyed_512k_1m_4m", |b| {
        b.iter(|| black_box(chunker.cut_all(data).len()))
    });
    g.bench_function("blake3_keyed_per_chunk", |b| {
        b.iter(|| {
            chunks
                .iter()
                .map(|r| ring.blob_id(&data[r.clone()]).0[0])
                .fold(0u8, u8::wrapping_add)
        })
    });
    g.bench_function("zstd3_per_chunk", |b| {
        b.iter(|| {
            chunks
                .iter()
                .map(|r| zstd::bulk::compress(&data[r.clone()], 3).unwrap().len())
                .sum::<usize>()
        })
    });
    let key = DataKey::generate();
    g.bench_function("xchacha20poly1305_per_chunk", |b| {
        b.iter(|| {
            chunks
                .iter()
                .map(|r| key.seal(b"", &data[r.clone()]).len())
                .sum::<usize>()
        })
    });
    let sealed: Vec<_> = chunks
        .iter()
        .map(|r| {
            let p = &data[r.clone()];
            blob::seal(ring.write_key(), ring.blob_id(p), BlobType::Data, p, 3).unwrap()
        })
        .collect();
    g.bench_function("open_blob_decrypt_decompress_verify", |b| {
        b.iter(|| {
            sealed
                .iter()
                .map(|s| {
                    let h = blob::BlobHeader {
                        id: s.id,
                        blob_type: s.blob_type,
                        flags: s.flags,
                        raw_len: s.raw_len,
                    };
                    blob::open(&ring, ring.write_key(), &h, &s.bytes, "bench")
                        .unwrap()
                        .len()
                })
                .sum::<usize>()
        })
    });
    // The bare loop: chunk -> hash -> zstd-3 -> seal, no I/O, no dedup.
    let bare = |data: &[u8]| -> usize {
        chunker
            .cut_all(data)
            .iter()
            .map(|r| {
                let p = &data[r.clone()];
                blob::seal(ring.write_key(), ring.blob_id(p), BlobType::Data, p, 3)
                    .unwrap()
                    .bytes
                    .len()
            })
            .sum()
    };
    g.bench_function("bare_loop_1_thread", |b| b.iter(|| bare(data)));
    g.bench_function("bare_loop_2_threads", |b| {
        b.iter(|| data.par_chunks(data.len() / 2 + 1).map(bare).sum::<usize>())
    });
    g.finish();
}

fn init_repo(dir: &std::path::Path) -> blocking::Repository {
    let backend = Arc::new(ObjectStoreBackend::local(dir, true).unwrap());
    let options = InitOptions {
        kdf: KdfParams::insecure_fast(),
        ..Default::default()
    };
    blocking::Repository::init(backend, &Credential::password("bench"), options).unwrap()
}

fn pipeline(c: &mut Criterion, name: &str, data: &Arc<Vec<u8>>) {
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Bytes(data.len() as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    g.bench_function(format!("backup_local_{name}"), |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let repo = init_repo(dir.path());
                (dir, repo)
            },
            |(dir, repo)| {
                let d = data.clone();
                let src = StreamSource::new("s", Cursor::new(ArcBytes(d)));
                repo.backup(vec![src], BackupOptions::default()).unwrap();
                (dir, repo)
            },
            BatchSize::PerIteration,
        )
    });
    let dir = tempfile::tempdir().unwrap();
    let repo = init_repo(dir.path());
    let s = repo
        .backup(
            vec![StreamSource::new("s", Cursor::new(ArcBytes(data.clone())))],
            BackupOptions::default(),
        )
        .unwrap();
    g.bench_function(format!("backup_unchanged_{name}"), |b| {
        b.iter(|| {
            let src = StreamSource::new("s", Cursor::new(ArcBytes(data.clone())));
            repo.backup(vec![src], BackupOptions::default()).unwrap()
        })
    });
    g.bench_function(format!("restore_local_{name}"), |b| {
        b.iter(|| {
            repo.restore_stream(&s.snapshot, "s", &mut std::io::sink())
                .unwrap()
        })
    });
    g.finish();
}

/// Shares the input between iterations without copying it.
struct ArcBytes(Arc<Vec<u8>>);
impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// RAM of the in-memory index per chunk, for one million chunks.
fn index_memory() {
    const N: u32 = 1_000_000;
    const PER_PACK: u32 = 16;
    let rss_before = rss_kib();
    let mut index = Index::new();
    let packs = (0..N / PER_PACK)
        .map(|p| IndexPack {
            id: PackId(*blake3::hash(&p.to_le_bytes()).as_bytes()),
            key_id: tessera::id::DataKeyId([0; 16]),
            blobs: (0..PER_PACK)
                .map(|i| PackEntry {
                    id: BlobId(*blake3::hash(&(p * PER_PACK + i).to_le_bytes()).as_bytes()),
                    blob_type: BlobType::Data,
                    flags: 1,
                    offset: i * MIB as u32,
                    stored_len: MIB as u32,
                    raw_len: MIB as u32,
                })
                .collect(),
        })
        .collect();
    index.add_segment(&IndexSegment { packs }).unwrap();
    index.finish_loading();
    let rss_after = rss_kib();
    println!(
        "index memory: {} chunks in {} packs, {} heap bytes = {:.1} bytes/chunk (RSS grew {:.1} bytes/chunk incl. transient load buffers)",
        index.len(),
        index.pack_count(),
        index.memory_bytes(),
        index.memory_bytes() as f64 / index.len() as f64,
        (rss_after.saturating_sub(rss_before) * 1024) as f64 / index.len() as f64,
    );
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let size = std::env::var("TESSERA_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256usize);
    let txt = text(size * MIB);
    println!(
        "bench input: {size} MiB; text compresses {:.1}x with zstd-3",
        {
            let sample = &txt[..txt.len().min(16 * MIB)];
            sample.len() as f64 / zstd::bulk::compress(sample, 3).unwrap().len() as f64
        }
    );
    index_memory();
    primitives(&mut c, &txt);
    pipeline(&mut c, "text", &Arc::new(txt));
    pipeline(&mut c, "random", &Arc::new(random(size * MIB)));
    c.final_summary();
}
