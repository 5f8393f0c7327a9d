//! The conformance suite every [`Backend`] must pass.
//!
//! Call [`run_all`] from a test with a fresh, empty backend. Each check
//! panics with a message naming the broken guarantee.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;

use super::{Backend, StorageError};
use crate::format::BlobType;
use crate::format::ObjectKind;

/// Runs every check against `backend` (which must start empty).
pub async fn run_all(backend: Arc<dyn Backend>) {
    run(backend, true).await;
}

/// Runs every check; with `atomic_create` false, leaves out the race of
/// many concurrent creates of one name, for test servers that check
/// `If-None-Match` before they write rather than atomically (s3s-fs 0.14;
/// AWS S3, MinIO and Ceph are atomic). Such a server is good enough for
/// everything but that race, which the GC protocol relies on.
pub async fn run(backend: Arc<dyn Backend>, atomic_create: bool) {
    empty_listing(&*backend).await;
    put_get_round_trip(&*backend).await;
    create_only(&*backend).await;
    ranges(&*backend).await;
    missing_objects(&*backend).await;
    listing_by_kind(&*backend).await;
    delete_is_idempotent(&*backend).await;
    if atomic_create {
        concurrent_creates(backend.clone()).await;
    } else {
        put_race_name(&*backend).await;
    }
    packs_by_class(&*backend).await;
}

async fn empty_listing(b: &dyn Backend) {
    for kind in ObjectKind::ALL {
        assert!(
            b.list(kind).await.unwrap().is_empty(),
            "fresh backend lists {kind:?} objects"
        );
    }
}

async fn put_get_round_trip(b: &dyn Backend) {
    let data = Bytes::from((0..100_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    b.put(ObjectKind::Pack, "aa01", data.clone()).await.unwrap();
    assert_eq!(
        b.get(ObjectKind::Pack, "aa01").await.unwrap(),
        data,
        "get returns other bytes than put"
    );
    b.put(ObjectKind::Config, "", Bytes::from_static(b"cfg"))
        .await
        .unwrap();
    assert_eq!(&b.get(ObjectKind::Config, "").await.unwrap()[..], b"cfg");
    b.put(ObjectKind::Snapshot, "empty", Bytes::new())
        .await
        .unwrap();
    assert!(
        b.get(ObjectKind::Snapshot, "empty")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn create_only(b: &dyn Backend) {
    b.put(ObjectKind::Index, "c1", Bytes::from_static(b"first"))
        .await
        .unwrap();
    let again = b
        .put(ObjectKind::Index, "c1", Bytes::from_static(b"second"))
        .await;
    assert!(
        matches!(again, Err(StorageError::AlreadyExists { .. })),
        "a second put to the same name must fail with AlreadyExists, got {again:?}"
    );
    assert_eq!(
        &b.get(ObjectKind::Index, "c1").await.unwrap()[..],
        b"first",
        "create-only put overwrote"
    );
}

async fn ranges(b: &dyn Backend) {
    let data: Vec<u8> = (0..=255u8).collect();
    b.put(ObjectKind::Pack, "bb02", Bytes::from(data.clone()))
        .await
        .unwrap();
    assert_eq!(
        &b.get_range(ObjectKind::Pack, "bb02", 10..20).await.unwrap()[..],
        &data[10..20]
    );
    assert_eq!(
        &b.get_range(ObjectKind::Pack, "bb02", 250..256)
            .await
            .unwrap()[..],
        &data[250..]
    );
    assert!(
        b.get_range(ObjectKind::Pack, "bb02", 5..5)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn missing_objects(b: &dyn Backend) {
    let e = b.get(ObjectKind::Snapshot, "nope").await;
    assert!(
        matches!(e, Err(StorageError::NotFound { .. })),
        "get of a missing object: {e:?}"
    );
    let e = b.get_range(ObjectKind::Pack, "ffff", 0..4).await;
    assert!(
        matches!(e, Err(StorageError::NotFound { .. })),
        "range of a missing object: {e:?}"
    );
}

async fn listing_by_kind(b: &dyn Backend) {
    let mut packs: Vec<_> = b
        .list(ObjectKind::Pack)
        .await
        .unwrap()
        .into_iter()
        .map(|o| (o.name, o.size))
        .collect();
    packs.sort();
    assert_eq!(
        packs,
        vec![("aa01".to_string(), 100_000), ("bb02".to_string(), 256)]
    );
    // The GC protocol's leases read the storage's clock from listings.
    let before = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    for o in b.list(ObjectKind::Pack).await.unwrap() {
        let t = o.modified.expect("listings carry the storage's timestamp");
        assert!(t > before, "implausible storage timestamp {t}");
    }
    b.put(ObjectKind::Gc, "0000000001-plan", Bytes::from_static(b"p"))
        .await
        .unwrap();
    let gc = b.list(ObjectKind::Gc).await.unwrap();
    assert_eq!(gc.len(), 1);
    assert_eq!(gc[0].name, "0000000001-plan");
    b.delete(ObjectKind::Gc, "0000000001-plan").await.unwrap();
    let config = b.list(ObjectKind::Config).await.unwrap();
    assert_eq!(config.len(), 1);
    assert_eq!(b.list(ObjectKind::Index).await.unwrap().len(), 1);
    assert!(
        b.list(ObjectKind::Key).await.unwrap().is_empty(),
        "kinds must not leak into each other"
    );
}

async fn delete_is_idempotent(b: &dyn Backend) {
    b.delete(ObjectKind::Pack, "aa01").await.unwrap();
    b.delete(ObjectKind::Pack, "aa01").await.unwrap();
    assert!(matches!(
        b.get(ObjectKind::Pack, "aa01").await,
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(b.list(ObjectKind::Pack).await.unwrap().len(), 1);
}

async fn concurrent_creates(b: Arc<dyn Backend>) {
    // Many writers race for one name: exactly one wins, and its bytes stay.
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let r = b
                .put(ObjectKind::Snapshot, "race", Bytes::from(vec![i; 4096]))
                .await;
            (i, r.is_ok())
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, ok) = t.await.unwrap();
        if ok {
            winners.push(i);
        }
    }
    assert_eq!(
        winners.len(),
        1,
        "exactly one concurrent create must win: {winners:?}"
    );
    let stored = b.get(ObjectKind::Snapshot, "race").await.unwrap();
    assert_eq!(&stored[..], &vec![winners[0]; 4096][..]);
}

async fn packs_by_class(b: &dyn Backend) {
    // Big enough for a multipart upload on remote stores.
    let big = Bytes::from(
        (0..20u32 << 20)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>(),
    );
    b.put_pack("cc03", big.clone(), BlobType::Data)
        .await
        .unwrap();
    let tree = Bytes::from_static(b"a small tree pack");
    b.put_pack("dd04", tree.clone(), BlobType::Tree)
        .await
        .unwrap();
    let mid = 9u64 << 20;
    assert_eq!(
        b.get_pack_range("cc03", mid..mid + 4096, BlobType::Data)
            .await
            .unwrap(),
        big.slice(mid as usize..mid as usize + 4096),
        "range of a large pack"
    );
    // A large range starting and ending off page boundaries (local
    // stores map these).
    let (from, to) = ((5u64 << 20) + 4321, (7u64 << 20) + 17);
    assert_eq!(
        b.get_pack_range("cc03", from..to, BlobType::Data)
            .await
            .unwrap(),
        big.slice(from as usize..to as usize),
        "large unaligned range of a large pack"
    );
    assert_eq!(b.get(ObjectKind::Pack, "cc03").await.unwrap(), big);
    for _ in 0..2 {
        assert_eq!(
            &b.get_pack_range("dd04", 2..7, BlobType::Tree)
                .await
                .unwrap()[..],
            b"small"
        );
    }
    let sizes: Vec<(String, u64)> = {
        let mut v: Vec<_> = b
            .list(ObjectKind::Pack)
            .await
            .unwrap()
            .into_iter()
            .filter(|o| o.name == "cc03" || o.name == "dd04")
            .map(|o| (o.name, o.size))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        sizes,
        vec![
            ("cc03".to_string(), big.len() as u64),
            ("dd04".to_string(), tree.len() as u64)
        ]
    );
    b.delete(ObjectKind::Pack, "dd04").await.unwrap();
    assert!(matches!(
        b.get_pack_range("dd04", 0..4, BlobType::Tree).await,
        Err(StorageError::NotFound { .. })
    ));
    b.delete(ObjectKind::Pack, "cc03").await.unwrap();
}

/// Stands in for the concurrent race: the name it would have left behind.
async fn put_race_name(b: &dyn Backend) {
    b.put(ObjectKind::Snapshot, "race", Bytes::from(vec![0u8; 4096]))
        .await
        .unwrap();
}
