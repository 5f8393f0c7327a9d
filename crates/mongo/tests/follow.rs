//! The oplog follower end to end against a fake replica-set primary whose
//! oplog the test writes: slices, resuming, the majority point, a lost
//! cursor, a gap; then point-in-time restores from a backup of the same
//! primary onto a real MongoDB-wire server, across slices and a
//! transaction split between two of them, and refusal across the gap;
//! and every BSON type through the backup path, byte for byte.

use std::time::Duration;

use mongodb::bson::{Bson, Document, Timestamp, doc};
use tessera_core::Repository;
use tessera_mongo::bson_stream::split_all;
use tessera_mongo::catalog::Catalog;
use tessera_mongo::{
    BackupOptions, FollowEvent, FollowOptions, FollowReport, OpTime, RestoreOptions, backup,
    restore_to,
};
use tokio::sync::{mpsc, oneshot};

use crate::common::{Server, db_name, documents, repo};
use crate::fake::{FakeReplSet, noop, op, ts};

/// A follower running in the background.
struct Running {
    events: mpsc::UnboundedReceiver<FollowEvent>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<tessera_mongo::Result<FollowReport>>,
}

async fn start(repo: &Repository, uri: &str) -> Running {
    let conn = tessera_mongo::connect(uri).await.unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let options = FollowOptions {
        slice: Duration::from_millis(200),
        max_await: Duration::from_millis(200),
        on_event: Some(std::sync::Arc::new(move |e: &FollowEvent| {
            let _ = tx.send(e.clone());
        })),
        ..FollowOptions::default()
    };
    let repo = repo.clone();
    let task = tokio::spawn(async move {
        tessera_mongo::follow(&repo, &conn, options, async {
            let _ = stopped.await;
        })
        .await
    });
    Running { events, stop, task }
}

impl Running {
    /// The next event, within 20 s.
    async fn next(&mut self) -> FollowEvent {
        tokio::time::timeout(Duration::from_secs(20), self.events.recv())
            .await
            .expect("the follower said nothing for 20 s")
            .expect("the follower stopped")
    }

    /// Events up to the first slice whose last entry is `t`, returning
    /// that slice's first entry and `after`.
    async fn slice_to(&mut self, t: u32) -> (OpTime, Option<OpTime>, Vec<FollowEvent>) {
        let mut seen = Vec::new();
        loop {
            let e = self.next().await;
            if let FollowEvent::Slice { meta, .. } = &e {
                assert!(meta.last.t <= t, "a slice past {t}: {meta:?}");
                if meta.last.t == t {
                    return (meta.first, meta.after, seen);
                }
            }
            seen.push(e);
        }
    }

    async fn stop(self) -> FollowReport {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap()
    }
}

fn at(t: u32) -> OpTime {
    OpTime { t, i: 1 }
}

/// The `ts` of every entry the repository's slices hold, in order.
async fn archived(repo: &Repository) -> Vec<u32> {
    let catalog = Catalog::load(repo).await.unwrap();
    let mut out = Vec::new();
    for s in &catalog.slices {
        let root = repo
            .read_tree(s.entry.snapshot.tree, "slice")
            .await
            .unwrap();
        let node = root.get(b"oplog.bson").unwrap();
        let mut bytes = Vec::new();
        repo.restore_node(node, &mut bytes).await.unwrap();
        for d in split_all(&bytes, "slice").unwrap() {
            out.push(d.get_timestamp("ts").unwrap().time);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_slices_resumes_and_reports_gaps() {
    let Some(fake) = FakeReplSet::start() else {
        return;
    };
    let repo = repo().await;
    fake.control(doc! {"append": [noop(1000), noop(1001)]})
        .await;

    // Nothing archived and no backup: from the majority point on.
    let mut f = start(&repo, &fake.uri).await;
    let FollowEvent::Started { after, .. } = f.next().await else {
        panic!("no start event");
    };
    assert_eq!(after, at(1001));
    fake.control(doc! {"append": [noop(1002), noop(1003)]})
        .await;
    let (first, after, _) = f.slice_to(1003).await;
    assert_eq!((first, after), (at(1002), Some(at(1001))));

    // Only what the majority confirmed: 1005 waits.
    fake.control(doc! {"majority": ts(1004), "append": [noop(1004), noop(1005)]})
        .await;
    f.slice_to(1004).await;
    let report = f.stop().await;
    assert_eq!(report.last, Some(at(1004)));
    assert_eq!(report.left_unconfirmed, 1);
    assert_eq!(archived(&repo).await, [1002, 1003, 1004]);

    // Restarted: after the newest archived entry, 1005 once confirmed.
    let mut f = start(&repo, &fake.uri).await;
    let FollowEvent::Started { after, from, .. } = f.next().await else {
        panic!("no start event");
    };
    assert_eq!((after, from), (at(1004), "the newest archived entry"));
    fake.control(doc! {"majority": ts(1005)}).await;
    let (first, after, _) = f.slice_to(1005).await;
    assert_eq!((first, after), (at(1005), Some(at(1004))));

    // A lost cursor: read again from the last archived entry, nothing
    // twice, nothing missed.
    fake.control(doc! {"loseCursors": true, "majority": ts(1007)})
        .await;
    fake.control(doc! {"append": [noop(1006), noop(1007)]})
        .await;
    let (_, after, seen) = f.slice_to(1007).await;
    assert_eq!(after, Some(at(1005)));
    assert!(
        seen.iter()
            .any(|e| matches!(e, FollowEvent::CursorLost { .. })),
        "{seen:?}"
    );
    let report = f.stop().await;
    assert_eq!(report.gaps, 0);
    assert_eq!(archived(&repo).await, [1002, 1003, 1004, 1005, 1006, 1007]);

    // While it is stopped the oplog rolls over past 1007: a gap, reported
    // and recorded, and archiving goes on after it.
    fake.control(doc! {"append": [noop(1008), noop(1009), noop(1010)], "truncateBefore": ts(1009), "majority": ts(1010)})
        .await;
    let mut f = start(&repo, &fake.uri).await;
    f.next().await;
    let gap = f.next().await;
    assert!(
        matches!(gap, FollowEvent::Gap(g) if g.last_archived == at(1007) && g.first_available == at(1009)),
        "{gap:?}"
    );
    let (first, after, _) = f.slice_to(1010).await;
    assert_eq!((first, after), (at(1009), None));
    assert_eq!(f.stop().await.gaps, 1);
    let catalog = Catalog::load(&repo).await.unwrap();
    let gaps = catalog.gaps("rs0");
    assert_eq!(gaps.len(), 1);
    assert_eq!(
        (gaps[0].last_archived, gaps[0].first_available),
        (at(1007), at(1009))
    );
    let gap_slice = catalog
        .slices
        .iter()
        .find(|s| s.meta.after.is_none())
        .unwrap();
    assert_eq!(gap_slice.meta.gap.unwrap().last_archived, at(1007));
}

/// The documents of `db.users`, in `_id` order.
async fn users(conn: &tessera_mongo::Connection, db: &str) -> Vec<Document> {
    documents(conn, db, "users").await
}

fn user(id: i32, name: &str) -> Document {
    doc! {"_id": id, "name": name}
}

fn txn(t: u32, ns: &str, id: i32, prev: Option<u32>, partial: bool) -> Document {
    let mut o = doc! {"applyOps": [{"op": "i", "ns": ns, "o": user(id, "txn")}]};
    if partial {
        o.insert("partialTxn", true);
    } else {
        o.insert("count", 2_i64);
    }
    let mut e = op(t, "c", "admin.$cmd", o, None);
    let prev = prev.map_or(
        Bson::Timestamp(Timestamp {
            time: 0,
            increment: 0,
        }),
        ts,
    );
    e.insert("prevOpTime", doc! {"ts": prev, "t": 1_i64});
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_in_time_restores_replay_the_archive_up_to_the_target() {
    let (Some(fake), Some(target)) = (FakeReplSet::start(), Server::start()) else {
        return;
    };
    let db = db_name("pitr");
    let ns = format!("{db}.users");
    fake.control(doc! {
        "data": {&db: {"users": [user(1, "a"), user(2, "b")]}},
        "append": [noop(2000)],
    })
    .await;
    let repo = repo().await;
    let source = tessera_mongo::connect(&fake.uri).await.unwrap();
    let b = backup(&repo, &source, BackupOptions::default())
        .await
        .unwrap();
    assert_eq!(b.meta.set_name.as_deref(), Some("rs0"));
    assert_eq!(b.meta.consistent, Some(at(2000)));

    // Writes after the backup, archived slice by slice; a transaction's
    // first part in one slice and its last in the next.
    let mut f = start(&repo, &fake.uri).await;
    let FollowEvent::Started { after, from, .. } = f.next().await else {
        panic!("no start event");
    };
    assert_eq!(
        (after, from),
        (at(2000), "the newest backup's consistent point")
    );
    let steps = [
        vec![
            op(2010, "i", &ns, user(3, "c"), Some(doc! {"_id": 3})),
            op(
                2011,
                "u",
                &ns,
                doc! {"$v": 2, "diff": {"u": {"name": "a2"}}},
                Some(doc! {"_id": 1}),
            ),
        ],
        vec![txn(2020, &ns, 4, None, true)],
        vec![txn(2021, &ns, 5, Some(2020), false)],
        vec![op(2030, "d", &ns, doc! {"_id": 2}, None)],
    ];
    for step in steps {
        let last = step.last().unwrap().get_timestamp("ts").unwrap().time;
        fake.control(doc! {"append": step}).await;
        f.slice_to(last).await;
    }
    f.stop().await;

    let conn = target.connect().await;
    let catalog = Catalog::load(&repo).await.unwrap();
    let options = RestoreOptions {
        drop: true,
        ..Default::default()
    };
    let cases: [(u32, Vec<Document>); 5] = [
        (2005, vec![user(1, "a"), user(2, "b")]),
        (2015, vec![user(1, "a2"), user(2, "b"), user(3, "c")]),
        // Inside the open transaction: none of it.
        (2020, vec![user(1, "a2"), user(2, "b"), user(3, "c")]),
        (
            2025,
            vec![
                user(1, "a2"),
                user(2, "b"),
                user(3, "c"),
                user(4, "txn"),
                user(5, "txn"),
            ],
        ),
        (
            2030,
            vec![user(1, "a2"), user(3, "c"), user(4, "txn"), user(5, "txn")],
        ),
    ];
    for (t, want) in cases {
        // A second's end, but for the newest entry archived: that entry
        // itself (nothing after it is archived yet, so `2030:MAX` is not).
        let target = if t == 2030 {
            at(t)
        } else {
            OpTime { t, i: u32::MAX }
        };
        let plan = catalog.plan("rs0", target).unwrap();
        let report = restore_to(&repo, &plan, &conn, &options).await.unwrap();
        assert_eq!(users(&conn, &db).await, want, "restored to {t}: {report:?}");
    }
    // Past the archive: refused, nothing written.
    let e = catalog.plan("rs0", at(2040)).unwrap_err().to_string();
    assert!(e.contains("reaches 2030:1"), "{e}");

    // The oplog rolls over while no follower runs: the gap is recorded and
    // no restore from the backup may cross it.
    fake.control(doc! {"append": [noop(2040), noop(2050)], "truncateBefore": ts(2050)})
        .await;
    let mut f = start(&repo, &fake.uri).await;
    f.slice_to(2050).await;
    f.stop().await;
    let catalog = Catalog::load(&repo).await.unwrap();
    let e = catalog.plan("rs0", at(2050)).unwrap_err();
    assert!(
        matches!(e, tessera_mongo::Error::Gap(_))
            && e.to_string().contains("gap from 2030:1 to 2050:1"),
        "{e}"
    );
    conn.client.database(&db).drop().await.unwrap();
}

/// Documents of every BSON type a server stores, the ones the MongoDB-wire
/// stand-in cannot keep included, as the test builds them.
fn every_type() -> Vec<Document> {
    use mongodb::bson::spec::BinarySubtype;
    use mongodb::bson::{
        Binary, DateTime, Decimal128, JavaScriptCodeWithScope, Regex, oid::ObjectId,
    };
    let bin = |subtype, bytes: &[u8]| {
        Bson::Binary(Binary {
            subtype,
            bytes: bytes.to_vec(),
        })
    };
    vec![
        doc! {
            "_id": ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap(),
            "decimal": Decimal128::from_bytes([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3c, 0x30]),
            "timestamp": Bson::Timestamp(Timestamp { time: 1_700_000_000, increment: 7 }),
            "regex": Regex { pattern: "^a.*z$".into(), options: "im".into() },
            "min": Bson::MinKey,
            "max": Bson::MaxKey,
            "generic": bin(BinarySubtype::Generic, b"\x00\x01\xff"),
            "uuid": bin(BinarySubtype::Uuid, &[0x11; 16]),
            "md5": bin(BinarySubtype::Md5, &[0x22; 16]),
            "user": bin(BinarySubtype::UserDefined(0x80), b"mine"),
            "before_1970": DateTime::from_millis(-2_208_988_800_000),
            "after_2038": DateTime::from_millis(4_102_444_800_123),
            "int32": 7_i32,
            "int64": 7_i64,
            "double": -0.5_f64,
            "string": "naïve ☃",
            "null": Bson::Null,
            "bool": true,
            "code": Bson::JavaScriptCode("function () { return 1; }".into()),
            "code_scope": Bson::JavaScriptCodeWithScope(JavaScriptCodeWithScope {
                code: "x".into(),
                scope: doc! {"x": 1},
            }),
        },
        doc! {
            "_id": 2,
            "nested": {"arrays": [[1, [2, [3, []]]], {"a": [{"b": Bson::MinKey}]}]},
            "empty": {},
            "order": {"z": 1, "a": 2, "m": 3},
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bson_type_is_stored_byte_for_byte() {
    let Some(fake) = FakeReplSet::start() else {
        return;
    };
    let docs = every_type();
    fake.control(doc! {"data": {"types": {"all": docs.clone()}}, "append": [noop(1)]})
        .await;
    let repo = repo().await;
    let source = tessera_mongo::connect(&fake.uri).await.unwrap();
    let b = backup(&repo, &source, BackupOptions::default())
        .await
        .unwrap();
    let root = repo
        .read_tree(b.summary.snapshot.tree, "root")
        .await
        .unwrap();
    let dir = |tree: &tessera_core::Tree, name: &[u8]| match &tree.get(name).unwrap().kind {
        tessera_core::NodeKind::Dir { subtree } => *subtree,
        other => panic!("not a directory: {other:?}"),
    };
    let databases = repo
        .read_tree(dir(&root, b"databases"), "databases")
        .await
        .unwrap();
    let types = repo
        .read_tree(dir(&databases, b"types"), "types")
        .await
        .unwrap();
    let mut stored = Vec::new();
    repo.restore_node(types.get(b"all.bson").unwrap(), &mut stored)
        .await
        .unwrap();
    let mut want = Vec::new();
    for d in &docs {
        want.extend_from_slice(
            mongodb::bson::RawDocumentBuf::from_document(d)
                .unwrap()
                .as_bytes(),
        );
    }
    assert_eq!(
        stored, want,
        "the stored stream differs from the documents sent"
    );
    let back: Vec<Document> = split_all(&stored, "all.bson")
        .unwrap()
        .iter()
        .map(|d| Document::try_from(d.as_ref()).unwrap())
        .collect();
    assert_eq!(back, docs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_named() {
    let Some(fake) = FakeReplSet::start() else {
        return;
    };
    let uri = fake.uri.replace("mongodb://", "mongodb://backup:wrong@");
    let e = tessera_mongo::connect(&uri).await.unwrap_err().to_string();
    let host = fake.uri.split('/').nth(2).unwrap();
    assert!(
        e.contains(&format!("connecting to MongoDB at {host}"))
            && e.contains("Authentication failed"),
        "{e}"
    );
    assert!(!e.contains("wrong"), "the password is in the message: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_during_the_dump_fails_the_backup() {
    let Some(fake) = FakeReplSet::start() else {
        return;
    };
    // The dump starts at 100; writes and a rename land while it reads.
    fake.control(doc! {
        "data": {"app": {"a": [user(1, "x")]}},
        "opTime": ts(100),
        "append": [
            noop(100),
            op(101, "i", "app.a", user(2, "y"), Some(doc! {"_id": 2})),
            op(102, "c", "app.$cmd", doc! {"renameCollection": "app.a", "to": "app.b", "dropTarget": false}, None),
        ],
    })
    .await;
    let repo = repo().await;
    let source = tessera_mongo::connect(&fake.uri).await.unwrap();
    let e = backup(&repo, &source, BackupOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("collection app.a was renamed to app.b") && e.contains("102:1"),
        "{e}"
    );
    assert!(
        repo.snapshots().await.unwrap().is_empty(),
        "a snapshot was committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_the_dump_are_stored_and_replayed_to_the_consistent_point() {
    let (Some(fake), Some(target)) = (FakeReplSet::start(), Server::start()) else {
        return;
    };
    let db = db_name("during");
    let ns = format!("{db}.users");
    // The collection was read before these writes reached it: the oplog of
    // the dump carries them.
    fake.control(doc! {
        "data": {&db: {"users": [user(1, "a"), user(2, "b")]}},
        "opTime": ts(100),
        "append": [
            noop(100),
            op(101, "i", &ns, user(3, "c"), Some(doc! {"_id": 3})),
            op(102, "u", &ns, doc! {"$v": 2, "diff": {"u": {"name": "a2"}}}, Some(doc! {"_id": 1})),
            op(103, "d", &ns, doc! {"_id": 2}, None),
        ],
        "majority": ts(102),
    })
    .await;
    let repo = repo().await;
    let source = tessera_mongo::connect(&fake.uri).await.unwrap();
    let b = backup(&repo, &source, BackupOptions::default())
        .await
        .unwrap();
    // Up to the majority point only: 103 could still be rolled back.
    assert_eq!(
        (b.meta.start, b.meta.consistent),
        (Some(at(100)), Some(at(102)))
    );
    assert_eq!(b.meta.oplog_entries, 2);
    let conn = target.connect().await;
    let entry = tessera_core::SnapshotEntry {
        id: b.summary.id,
        snapshot: b.summary.snapshot.clone(),
    };
    let report = tessera_mongo::restore(&repo, &entry, &conn, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(report.oplog_applied, 2, "{report:?}");
    assert_eq!(
        users(&conn, &db).await,
        [user(1, "a2"), user(2, "b"), user(3, "c")]
    );
    conn.client.database(&db).drop().await.unwrap();
}
