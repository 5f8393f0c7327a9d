//! The async and blocking APIs, including use from inside a runtime.

use std::io::Cursor;
use std::sync::Arc;

use tessera::{
    BackupOptions, Credential, InitOptions, KdfParams, ObjectStoreBackend, Repository,
    StreamSource, blocking,
};

fn fast() -> InitOptions {
    InitOptions {
        kdf: KdfParams::insecure_fast(),
        chunker: tessera::ChunkerParams::FastCdc {
            min: 4096,
            avg: 16384,
            max: 65536,
        },
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_api_several_streams_in_one_snapshot() {
    let backend = Arc::new(ObjectStoreBackend::memory());
    let pw = Credential::password("pw");
    let repo = Repository::init(backend.clone(), &pw, fast())
        .await
        .unwrap();
    let (a, b) = (data(300_000, 1), data(5, 2));
    let summary = repo
        .backup(
            vec![
                StreamSource::new("a", Cursor::new(a.clone())),
                StreamSource::new("b", Cursor::new(b.clone())),
            ],
            BackupOptions {
                tags: vec!["t".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(summary.snapshot.paths, vec!["a", "b"]);

    // A second handle sees the snapshot and restores both streams.
    let again = Repository::open(backend, &pw).await.unwrap();
    let found = again.find_snapshot(&summary.id.short()).await.unwrap();
    let mut out = Vec::new();
    again
        .restore_stream(&found.snapshot, "a", &mut out)
        .await
        .unwrap();
    assert_eq!(out, a);
    out.clear();
    again
        .restore_stream(&found.snapshot, "b", &mut out)
        .await
        .unwrap();
    assert_eq!(out, b);
    let streams = again.streams(&found.snapshot).await.unwrap();
    assert_eq!(
        streams,
        vec![("a".to_string(), 300_000), ("b".to_string(), 5)]
    );

    // Duplicate names are refused before anything is written.
    let dup = again
        .backup(
            vec![
                StreamSource::new("x", Cursor::new(vec![1])),
                StreamSource::new("x", Cursor::new(vec![2])),
            ],
            BackupOptions::default(),
        )
        .await;
    assert!(dup.is_err());
    assert_eq!(again.snapshots().await.unwrap().len(), 1);
    assert!(again.check(true).await.unwrap().is_ok());
}

#[test]
fn blocking_api_outside_any_runtime() {
    blocking_round_trip();
}

/// rustic issue 1181: a blocking API over a hidden global runtime panics
/// when called from async code. Ours must not, on either runtime flavour,
/// and dropping the handle there must not panic either.
#[tokio::test(flavor = "current_thread")]
async fn blocking_api_inside_a_current_thread_runtime() {
    blocking_round_trip();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_api_inside_a_multi_thread_runtime() {
    blocking_round_trip();
}

fn blocking_round_trip() {
    let repo = blocking::Repository::init(
        Arc::new(ObjectStoreBackend::memory()),
        &Credential::password("pw"),
        fast(),
    )
    .unwrap();
    let d = data(70_000, 4);
    let s = repo
        .backup(
            vec![StreamSource::new("d", Cursor::new(d.clone()))],
            BackupOptions::default(),
        )
        .unwrap();
    let mut out = Vec::new();
    repo.restore_stream(&s.snapshot, "d", &mut out).unwrap();
    assert_eq!(out, d);
    assert_eq!(repo.snapshots().unwrap().len(), 1);
    drop(repo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_backup_leaves_no_snapshot_and_the_handle_usable() {
    struct Failing(usize);
    impl std::io::Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0).min(10_000);
            buf[..n].fill(7);
            self.0 -= n;
            Ok(n)
        }
    }
    let repo = Repository::init(
        Arc::new(ObjectStoreBackend::memory()),
        &Credential::password("pw"),
        fast(),
    )
    .await
    .unwrap();
    let err = repo
        .backup(
            vec![StreamSource::new("f", Failing(3_000_000))],
            BackupOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("reading stream \"f\"")
            && err.to_string().contains("disk on fire"),
        "{err}"
    );
    assert!(repo.snapshots().await.unwrap().is_empty());
    // The same handle backs up the same bytes afterwards: nothing half-done
    // from the failed run is trusted for dedup.
    let d = vec![7u8; 3_000_000];
    let s = repo
        .backup(
            vec![StreamSource::new("f", Cursor::new(d.clone()))],
            BackupOptions::default(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    repo.restore_stream(&s.snapshot, "f", &mut out)
        .await
        .unwrap();
    assert_eq!(out, d);
    assert!(repo.check(true).await.unwrap().is_ok());
}
