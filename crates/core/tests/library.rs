//! The engine's maintenance operations through the library alone (the CLI
//! tests cover them again through the command line): prune, check,
//! repair and copy, on repositories in memory.

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use tessera_core::{
    Backend, BackupOptions, ChunkerParams, Credential, InitOptions, KdfParams, ObjectKind,
    ObjectStoreBackend, PruneOptions, Repository, SnapshotId, StreamSource,
};

fn options() -> InitOptions {
    InitOptions {
        kdf: KdfParams::insecure_fast(),
        chunker: ChunkerParams::FastCdc {
            min: 256,
            avg: 1024,
            max: 4096,
        },
        data_pack_size: 16 * 1024,
        tree_pack_size: 1024,
        ..Default::default()
    }
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut out);
    out
}

async fn repo() -> (Arc<dyn Backend>, Repository) {
    let store: Arc<dyn Backend> = Arc::new(ObjectStoreBackend::memory());
    let repo = Repository::init(store.clone(), &Credential::password("pw"), options())
        .await
        .unwrap();
    (store, repo)
}

async fn backup(repo: &Repository, streams: &[(&str, &[u8])], tag: &str) -> SnapshotId {
    let sources = streams
        .iter()
        .map(|(n, d)| StreamSource::new(*n, Cursor::new(d.to_vec())))
        .collect();
    let options = BackupOptions {
        tags: vec![tag.into()],
        ..Default::default()
    };
    repo.backup(sources, options).await.unwrap().id
}

async fn restored(repo: &Repository, id: SnapshotId, name: &str) -> Vec<u8> {
    let snapshot = repo.read_snapshot(id).await.unwrap();
    let mut out = Vec::new();
    repo.restore_stream(&snapshot, name, &mut out)
        .await
        .unwrap();
    out
}

fn repack_all() -> PruneOptions {
    PruneOptions {
        repack_threshold: 0.0,
        lease: jiff::SignedDuration::ZERO,
        ..Default::default()
    }
}

/// A handle keeps its index; a prune on it moves blobs and deletes
/// packs. Reading trees and streams on that same handle afterwards must
/// find the blobs where they went (it failed with "pack is missing"
/// until `fetch_span` looked them up anew; found by tests/model.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handle_that_pruned_reads_what_the_prune_moved() {
    let (_, repo) = repo().await;
    let (a, b) = (data(40_000, 1), data(40_000, 2));
    let first = backup(&repo, &[("a", &a), ("b", &b)], "one").await;
    let second = backup(&repo, &[("b", &b)], "two").await;
    // Load the handle's index now, before the prune moves things.
    assert_eq!(restored(&repo, second, "b").await, b);
    repo.forget_snapshot(first).await.unwrap();
    let report = repo.prune(&repack_all()).await.unwrap();
    assert!(report.packs_repacked > 0, "{report:?}");
    assert!(report.packs_deleted > 0, "{report:?}");
    assert_eq!(restored(&repo, second, "b").await, b);
    let check = repo.check(true).await.unwrap();
    assert!(check.errors.is_empty(), "{:?}", check.errors);
}

/// A flipped byte in a pack: `check --read-data` names the pack; a check
/// that reads no data does not claim to have seen it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reading_data_names_the_damaged_pack() {
    let (store, repo) = repo().await;
    let a = data(30_000, 3);
    backup(&repo, &[("a", &a)], "one").await;
    let packs = store.list(ObjectKind::Pack).await.unwrap();
    let victim = packs.iter().max_by_key(|p| p.size).unwrap().name.clone();
    let mut bytes = store.get(ObjectKind::Pack, &victim).await.unwrap().to_vec();
    bytes[100] ^= 0x40;
    store.delete(ObjectKind::Pack, &victim).await.unwrap();
    store
        .put(ObjectKind::Pack, &victim, Bytes::from(bytes))
        .await
        .unwrap();
    let fresh = Repository::open(store.clone(), &Credential::password("pw"))
        .await
        .unwrap();
    let quick = fresh.check(false).await.unwrap();
    assert!(quick.errors.is_empty(), "{:?}", quick.errors);
    let full = fresh.check(true).await.unwrap();
    assert!(
        full.errors.iter().any(|e| e.contains(&victim)),
        "{:?}",
        full.errors
    );
}

/// Every index segment gone: `repair_index` rebuilds the index from the
/// pack headers and the snapshot restores again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_index_rebuilds_a_lost_index_from_the_packs() {
    let (store, repo) = repo().await;
    let a = data(50_000, 4);
    let id = backup(&repo, &[("a", &a)], "one").await;
    for seg in store.list(ObjectKind::Index).await.unwrap() {
        store.delete(ObjectKind::Index, &seg.name).await.unwrap();
    }
    let pw = Credential::password("pw");
    let lost = Repository::open(store.clone(), &pw).await.unwrap();
    let snapshot = lost.read_snapshot(id).await.unwrap();
    assert!(
        lost.restore_stream(&snapshot, "a", &mut Vec::new())
            .await
            .is_err()
    );
    let report = lost.repair_index(false).await.unwrap();
    assert!(report.packs_added > 0, "{report:?}");
    let repaired = Repository::open(store, &pw).await.unwrap();
    assert_eq!(restored(&repaired, id, "a").await, a);
}

/// `copy_snapshot` keeps what identifies the snapshot, stores what the
/// target lacks, and the copy restores from the target alone; a second
/// copy of the same snapshot is recognised as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_keeps_the_snapshot_and_is_recognised_the_second_time() {
    let (_, source) = repo().await;
    let (_, target) = repo().await;
    let a = data(60_000, 5);
    let id = backup(&source, &[("a", &a)], "weekly").await;
    let entry = source.find_snapshot(&id.to_hex()).await.unwrap();
    let copied = source.copy_snapshot(&target, &entry).await.unwrap();
    assert!(copied.snapshot.same_origin(&entry.snapshot));
    assert_eq!(copied.snapshot.tags, vec!["weekly".to_string()]);
    assert_eq!(restored(&target, copied.id, "a").await, a);
    let existing = target.snapshots().await.unwrap();
    assert!(
        existing
            .iter()
            .any(|e| e.snapshot.same_origin(&entry.snapshot))
    );
    let other = backup(&source, &[("a", &a)], "daily").await;
    let other = source.read_snapshot(other).await.unwrap();
    assert!(!other.same_origin(&entry.snapshot));
}

/// Blocks taken from an earlier snapshot as stored blobs, mixed with new
/// ones (a VM disk backed up with changed-block tracking): the new
/// snapshot reads back whole, the session id named beforehand is the
/// snapshot's, and only the new block was stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_mix_stored_blobs_with_new_bytes_under_a_known_session_id() {
    use tessera_core::{Block, Content, Entry, Meta, NodeKind};
    let (_store, repo) = repo().await;
    let blocks: Vec<Vec<u8>> = (0..6).map(|i| data(4096, i)).collect();
    let first = {
        let entries = vec![Entry::File {
            name: b"disk".to_vec(),
            meta: Meta::null(),
            content: Content::Blocks(Box::new(
                blocks.clone().into_iter().map(|b| Ok(Block::Data(b))),
            )),
            on_stored: None,
        }];
        let tree = repo.store_tree(entries.into_iter(), None).await.unwrap();
        repo.commit_snapshot(tree, BackupOptions::default())
            .await
            .unwrap()
    };
    let root = repo.read_tree(first.snapshot.tree, "test").await.unwrap();
    let NodeKind::Stream { content } = &root.get(b"disk").unwrap().kind else {
        panic!("not a stream");
    };
    assert_eq!(content.len(), 6);
    let old = content.clone();

    let sid = repo.session_id().await.unwrap();
    let changed = data(4096, 99);
    let mut expected = Vec::new();
    let mut second_blocks = Vec::new();
    for (i, id) in old.iter().enumerate() {
        if i == 3 {
            expected.extend_from_slice(&changed);
            second_blocks.push(Ok(Block::Data(changed.clone())));
        } else {
            expected.extend_from_slice(&blocks[i]);
            second_blocks.push(Ok(Block::Stored {
                id: *id,
                size: 4096,
            }));
        }
    }
    second_blocks.push(Ok(Block::Meta(Meta::to_json(&"read").unwrap())));
    let entries = vec![Entry::File {
        name: b"disk".to_vec(),
        meta: Meta::null(),
        content: Content::Blocks(Box::new(second_blocks.into_iter())),
        on_stored: None,
    }];
    let tree = repo.store_tree(entries.into_iter(), None).await.unwrap();
    let second = repo
        .commit_snapshot(tree, BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(second.id, sid, "the session id names the snapshot");
    assert_eq!(second.snapshot.stats.new_chunks, 1);
    assert_eq!(second.snapshot.stats.total_chunks, 6);
    assert_eq!(second.snapshot.stats.total_bytes, 6 * 4096);
    assert_eq!(restored(&repo, second.id, "disk").await, expected);
    let root = repo.read_tree(second.snapshot.tree, "test").await.unwrap();
    assert_eq!(root.get(b"disk").unwrap().meta.as_str(), "\"read\"");
}

/// A handle's data compression level overrides the repository's for new
/// data blobs only, and goes back with `None`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_compresses_data_at_its_own_level() {
    let (_store, repo) = repo().await;
    let text = b"the same line of text, over and over; ".repeat(20_000);
    repo.set_data_compression(Some(0)).unwrap();
    let plain = repo
        .backup(
            vec![StreamSource::new("t", Cursor::new(text.clone()))],
            BackupOptions::default(),
        )
        .await
        .unwrap();
    let st = &plain.snapshot.stats;
    assert!(st.stored_bytes >= st.new_bytes, "stored as is: {st:?}");
    repo.set_data_compression(None).unwrap();
    let other = b"another line of text, over and over again; ".repeat(20_000);
    let packed = repo
        .backup(
            vec![StreamSource::new("u", Cursor::new(other.clone()))],
            BackupOptions::default(),
        )
        .await
        .unwrap();
    let st = &packed.snapshot.stats;
    assert!(st.stored_bytes < st.new_bytes / 4, "compressed: {st:?}");
    assert_eq!(restored(&repo, plain.id, "t").await, text);
    assert!(repo.set_data_compression(Some(23)).is_err());
}
