//! The committed golden repository of format version 1 must keep opening
//! and restoring: format changes are deliberate.
//!
//! Regenerate (only when adding a new format version, into a new
//! directory): `TESSERA_WRITE_GOLDEN=tests/fixtures/repo-vN cargo test --test main golden -- --ignored`.

use std::path::Path;
use std::sync::Arc;

use tessera::gc::{GcPlan, OpenSessions, PackList, RoundKind};
use tessera::session::SessionMarker;
use tessera::{
    BackupOptions, ChunkerParams, Credential, InitOptions, KdfParams, ObjectStoreBackend, PackId,
    PruneOptions, SnapshotId, StreamSource, blocking,
};

const PASSWORD: &str = "golden";

fn hello() -> Vec<u8> {
    b"hello, golden repository\n".repeat(2000)
}

fn noise() -> Vec<u8> {
    let mut out = vec![0u8; 200_000];
    blake3::Hasher::new()
        .update(b"golden")
        .finalize_xof()
        .fill(&mut out);
    out
}

fn fixture() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/repo-v1"
    ))
}

/// The config's object lock field: absent when unset (so the v1 golden
/// config is unchanged), exactly this JSON when set.
#[test]
fn config_object_lock_layout() {
    use tessera::config::{LockMode, ObjectLock};
    let dir = tempfile::tempdir().unwrap();
    copy_dir(fixture(), dir.path());
    let backend = Arc::new(ObjectStoreBackend::local(dir.path(), false).unwrap());
    let repo = blocking::Repository::open(backend, &Credential::password(PASSWORD)).unwrap();
    let mut config = repo.as_async().config().clone();
    assert_eq!(config.object_lock, None);
    let plain = String::from_utf8(config.encode()).unwrap();
    assert!(!plain.contains("object_lock"), "{plain}");
    config.object_lock = Some(ObjectLock {
        mode: LockMode::Compliance,
        days: 30,
    });
    let plain = String::from_utf8(config.encode()).unwrap();
    let compact: String = plain.split_whitespace().collect();
    assert!(
        compact.contains(r#""object_lock":{"mode":"compliance","days":30}"#),
        "{plain}"
    );
    assert_eq!(
        tessera::RepoConfig::decode(plain.as_bytes()).unwrap(),
        config
    );
}

#[test]
fn golden_v1_repository_opens_and_restores() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(fixture(), dir.path());
    let backend = Arc::new(ObjectStoreBackend::local(dir.path(), false).unwrap());
    let repo =
        blocking::Repository::open(backend.clone(), &Credential::password(PASSWORD)).unwrap();
    assert_eq!(repo.as_async().config().version, 1);
    assert_eq!(
        repo.as_async().config().chunker,
        ChunkerParams::FastCdc {
            min: 4096,
            avg: 16384,
            max: 65536
        }
    );
    let snaps = repo.snapshots().unwrap();
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0].snapshot.time.to_string(), "2026-01-01T00:00:00Z");
    assert_eq!(snaps[0].snapshot.tags, vec!["golden"]);
    assert_eq!(snaps[1].snapshot.paths, vec!["hello.txt", "noise.bin"]);
    let mut out = Vec::new();
    repo.restore_stream(&snaps[1].snapshot, "hello.txt", &mut out)
        .unwrap();
    assert!(out == hello());
    out.clear();
    repo.restore_stream(&snaps[1].snapshot, "noise.bin", &mut out)
        .unwrap();
    assert!(out == noise());
    let report = repo.check(true).unwrap();
    assert!(report.is_ok() && report.warnings.is_empty(), "{report:?}");

    // The key-file slot opens it too.
    let key = std::fs::read_to_string(fixture().with_extension("key")).unwrap();
    blocking::Repository::open(backend.clone(), &Credential::key_file(&key).unwrap()).unwrap();

    // A repository written before the GC protocol prunes: both snapshots
    // are kept whole, nothing is deleted.
    let report = repo.prune(&PruneOptions::default()).unwrap();
    assert_eq!(
        (report.snapshots, report.packs_deleted),
        (2, 0),
        "{report:?}"
    );
    let mut out = Vec::new();
    repo.restore_stream(&snaps[1].snapshot, "noise.bin", &mut out)
        .unwrap();
    assert!(out == noise());
}

/// The plaintext layouts of the GC objects (FORMAT.md §10), byte for byte.
#[test]
fn golden_v1_gc_objects() {
    let plan = GcPlan {
        kind: RoundKind::Prune,
        planner: SnapshotId([0xaa; 32]),
        condemned: vec![PackId([1; 32]), PackId([2; 32])],
    };
    let expected = format!(
        "00{}02000000{}{}",
        "aa".repeat(32),
        "01".repeat(32),
        "02".repeat(32)
    );
    assert_eq!(hex::encode(plan.encode()), expected);
    assert_eq!(
        GcPlan::decode(&hex::decode(&expected).unwrap(), "gc/x").unwrap(),
        plan
    );
    let repair = GcPlan {
        kind: RoundKind::RepairIndex,
        planner: SnapshotId([0xbb; 32]),
        condemned: Vec::new(),
    };
    assert_eq!(
        hex::encode(repair.encode()),
        format!("01{}00000000", "bb".repeat(32))
    );
    let open = OpenSessions(vec![SnapshotId([3; 32])]);
    assert_eq!(
        hex::encode(open.encode()),
        format!("01000000{}", "03".repeat(32))
    );
    let sweep = PackList(vec![PackId([4; 32])]);
    assert_eq!(
        hex::encode(sweep.encode()),
        format!("01000000{}", "04".repeat(32))
    );
    let marker = br#"{"hostname":"h","username":"u","program":"tessera 0.1.0","started":"2026-01-01T00:00:00Z"}"#;
    let m = SessionMarker::decode(marker, "sessions/x").unwrap();
    assert_eq!(m.encode(), marker.to_vec());
    assert_eq!(tessera::snapshot::TOMBSTONE, br#"{"expired":true}"#);
}

#[test]
#[ignore = "writes a new golden repository; see the module docs"]
fn write_golden_repository() {
    let Ok(target) = std::env::var("TESSERA_WRITE_GOLDEN") else {
        return;
    };
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join(target);
    assert!(
        !target.exists(),
        "{} exists: golden repositories are never rewritten",
        target.display()
    );
    let options = InitOptions {
        kdf: KdfParams::insecure_fast(),
        chunker: ChunkerParams::FastCdc {
            min: 4096,
            avg: 16384,
            max: 65536,
        },
        data_pack_size: 64 * 1024,
        ..Default::default()
    };
    let backend = Arc::new(ObjectStoreBackend::local(&target, true).unwrap());
    let repo =
        blocking::Repository::init(backend, &Credential::password(PASSWORD), options).unwrap();
    let key = Credential::new_key_file_contents();
    repo.run(repo.as_async().add_key(
        &Credential::key_file(&key).unwrap(),
        KdfParams::insecure_fast(),
    ))
    .unwrap();
    std::fs::write(target.with_extension("key"), key.as_bytes()).unwrap();
    let at = |s: &str| Some(s.parse().unwrap());
    repo.backup(
        vec![StreamSource::new(
            "hello.txt",
            std::io::Cursor::new(hello()),
        )],
        BackupOptions {
            time: at("2026-01-01T00:00:00Z"),
            tags: vec!["golden".into()],
            hostname: Some("golden-host".into()),
            ..Default::default()
        },
    )
    .unwrap();
    repo.backup(
        vec![
            StreamSource::new("hello.txt", std::io::Cursor::new(hello())),
            StreamSource::new("noise.bin", std::io::Cursor::new(noise())),
        ],
        BackupOptions {
            time: at("2026-01-02T00:00:00Z"),
            hostname: Some("golden-host".into()),
            ..Default::default()
        },
    )
    .unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}
