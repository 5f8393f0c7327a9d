//! Every storage backend passes the same conformance suite: memory, local,
//! the S3-compatible test server, and the decorators (retries over injected
//! faults, request counting, the metadata cache).

use std::sync::Arc;

use tessera::storage::conformance;
use tessera::{
    Backend, CachedBackend, CountingBackend, FaultPlan, FaultyBackend, ObjectStoreBackend,
    RetryPolicy, RetryingBackend,
};

#[path = "support/server.rs"]
mod server;

#[path = "support/s3.rs"]
mod s3;

#[path = "support/azurite.rs"]
mod azurite;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_conforms() {
    conformance::run_all(Arc::new(ObjectStoreBackend::memory())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_conforms() {
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(Arc::new(
        ObjectStoreBackend::local(dir.path(), true).unwrap(),
    ))
    .await;
    // Staged uploads never show up as objects.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains('#'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_backend_conforms() {
    let Some(server) = s3::server() else {
        return;
    };
    let url = format!("s3://{}/{}", s3::BUCKET, s3::fresh_prefix("conformance"));
    let storage = open_remote(&server.env(), &url, &tessera::StorageOptions::default());
    // s3s-fs checks If-None-Match before writing, not atomically.
    conformance::run(storage.backend, false).await;
    // Data packs can go to another storage class (s3s-fs keeps it as given).
    let options = tessera::StorageOptions {
        data_storage_class: Some(tessera::StorageClass("STANDARD_IA".into())),
        ..Default::default()
    };
    let url = format!("s3://{}/{}", s3::BUCKET, s3::fresh_prefix("classes"));
    let tiered = open_remote(&server.env(), &url, &options);
    conformance::run(tiered.backend, false).await;
}

#[cfg(feature = "azure")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_backend_conforms() {
    let Some(server) = azurite::server() else {
        return;
    };
    let url = format!(
        "az://{}/{}",
        azurite::CONTAINER,
        s3::fresh_prefix("conformance")
    );
    let storage = open_remote(&server.env(), &url, &tessera::StorageOptions::default());
    conformance::run_all(storage.backend).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_over_transient_faults_conform() {
    let plan: FaultPlan = "transient=0.2,torn=0.1,seed=3".parse().unwrap();
    let faulty: Arc<dyn Backend> = Arc::new(FaultyBackend::new(
        Arc::new(ObjectStoreBackend::memory()),
        plan,
    ));
    let fast = RetryPolicy {
        attempts: 30,
        base: std::time::Duration::from_millis(1),
        max: std::time::Duration::from_millis(5),
    };
    conformance::run_all(Arc::new(RetryingBackend::new(faulty, fast))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counting_and_cached_backends_conform() {
    let counting = Arc::new(CountingBackend::new(Arc::new(ObjectStoreBackend::memory())));
    conformance::run_all(counting.clone()).await;
    let c = counting.counts();
    assert!(
        c.put > 10 && c.get > 10 && c.list > 5 && c.delete > 3,
        "{c:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    conformance::run_all(Arc::new(CachedBackend::new(
        Arc::new(ObjectStoreBackend::memory()),
        dir.path(),
    )))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_metadata_and_drops_what_the_store_lost() {
    use bytes::Bytes;
    use tessera::ObjectKind;
    use tessera::blob::BlobType;
    let store = Arc::new(CountingBackend::new(Arc::new(ObjectStoreBackend::memory())));
    let dir = tempfile::tempdir().unwrap();
    let cached = CachedBackend::new(store.clone(), dir.path());
    cached
        .put(ObjectKind::Index, "aa", Bytes::from_static(b"segment"))
        .await
        .unwrap();
    cached
        .put_pack("bb", Bytes::from_static(b"tree pack bytes"), BlobType::Tree)
        .await
        .unwrap();
    cached
        .put_pack("cc", Bytes::from_static(b"data pack bytes"), BlobType::Data)
        .await
        .unwrap();
    let before = store.counts();
    // Written through: served locally.
    assert_eq!(
        &cached.get(ObjectKind::Index, "aa").await.unwrap()[..],
        b"segment"
    );
    assert_eq!(
        &cached
            .get_pack_range("bb", 5..9, BlobType::Tree)
            .await
            .unwrap()[..],
        b"pack"
    );
    assert_eq!(store.counts().since(&before).get, 0);
    // Data packs are not cached.
    cached
        .get_pack_range("cc", 0..4, BlobType::Data)
        .await
        .unwrap();
    assert_eq!(store.counts().since(&before).get, 1);
    // A damaged copy is dropped and read again from the store.
    let copy = dir.path().join("index/aa");
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&copy, bytes).unwrap();
    assert_eq!(
        &cached.get(ObjectKind::Index, "aa").await.unwrap()[..],
        b"segment"
    );
    assert_eq!(store.counts().since(&before).get, 2);
    // Gone from the store (deleted by another host): the next listing
    // drops the copy.
    store.delete(ObjectKind::Index, "aa").await.unwrap();
    assert!(cached.list(ObjectKind::Index).await.unwrap().is_empty());
    assert!(!copy.exists());
}

/// Opens a remote store after setting the environment its client reads.
#[cfg(any(feature = "s3", feature = "azure"))]
fn open_remote(
    env: &[(&'static str, String)],
    url: &str,
    options: &tessera::StorageOptions,
) -> tessera::Storage {
    for (k, v) in env {
        // SAFETY: the tests of this binary that set variables set the same
        // values, and the stores read them only when built (below).
        unsafe { std::env::set_var(k, v) };
    }
    let storage = tessera::open_storage(url, true, options).unwrap();
    assert!(storage.remote, "{url} opened as a local store");
    storage
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
