//! Oplog entries in MongoDB's documented shapes replayed onto a server,
//! once and twice.

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, RawDocumentBuf, Timestamp, doc};
use tessera_mongo::replay::Replayer;

use crate::common::{Server, db_name};

fn ts(t: u32) -> Bson {
    Bson::Timestamp(Timestamp {
        time: t,
        increment: 1,
    })
}

fn entry(t: u32, op: &str, ns: &str, o: Document, o2: Option<Document>) -> RawDocumentBuf {
    let mut d = doc! {"op": op, "ns": ns, "o": o, "ts": ts(t), "t": 1_i64, "v": 2_i64};
    if let Some(o2) = o2 {
        d.insert("o2", o2);
    }
    RawDocumentBuf::from_document(&d).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_twice_gives_what_replaying_once_gives() {
    let Some(server) = Server::start() else {
        return;
    };
    let conn = server.connect().await;
    let db = db_name("app");
    let ns = format!("{db}.users");
    let cmd = format!("{db}.$cmd");
    let prev = |t: u32| doc! {"ts": ts(t), "t": 1_i64};
    let mut part = doc! {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [
    {"op": "i", "ns": &ns, "o": {"_id": 10, "in": "txn"}}], "partialTxn": true},
    "ts": ts(20), "prevOpTime": {"ts": Bson::Timestamp(Timestamp { time: 0, increment: 0 }), "t": -1_i64}};
    let first_part = RawDocumentBuf::from_document(&part).unwrap();
    part = doc! {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [
    {"op": "i", "ns": &ns, "o": {"_id": 11, "in": "txn"}}], "count": 2_i64},
    "ts": ts(21), "prevOpTime": prev(20)};
    let last_part = RawDocumentBuf::from_document(&part).unwrap();
    let open =
        RawDocumentBuf::from_document(&doc! {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [
        {"op": "i", "ns": &ns, "o": {"_id": 12}}], "partialTxn": true}, "ts": ts(22),
        "prevOpTime": {"ts": Bson::Timestamp(Timestamp { time: 0, increment: 0 }), "t": -1_i64}})
        .unwrap();
    let entries = vec![
        entry(
            1,
            "c",
            &cmd,
            doc! {"create": "users", "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}},
            None,
        ),
        entry(
            2,
            "i",
            &ns,
            doc! {"_id": 1, "name": "a", "tags": ["x", "y"]},
            Some(doc! {"_id": 1}),
        ),
        entry(
            3,
            "u",
            &ns,
            doc! {"$v": 2, "diff": {"u": {"name": "b"}, "i": {"age": 3}, "stags": {"a": true, "u1": "z"}}},
            Some(doc! {"_id": 1}),
        ),
        entry(4, "i", &ns, doc! {"_id": 2, "n": 1}, None),
        entry(
            5,
            "u",
            &ns,
            doc! {"$v": 1, "$set": {"n": 5}},
            Some(doc! {"_id": 2}),
        ),
        entry(6, "i", &ns, doc! {"_id": 3}, None),
        entry(7, "d", &ns, doc! {"_id": 3}, None),
        entry(
            8,
            "u",
            &ns,
            doc! {"_id": 4, "whole": true},
            Some(doc! {"_id": 4}),
        ),
        entry(9, "n", "", doc! {"msg": "periodic noop"}, None),
        entry(
            10,
            "i",
            &format!("{}.other", db_name("skipped")),
            doc! {"_id": 1},
            None,
        ),
        first_part,
        last_part,
        // A transaction that never committed within the range: not applied.
        open,
    ];
    let map = |ns: &str| (!ns.contains("skipped")).then(|| ns.to_owned());
    let expected = vec![
        doc! {"_id": 1, "name": "b", "tags": ["x", "z"], "age": 3},
        doc! {"_id": 2, "n": 5},
        doc! {"_id": 4, "whole": true},
        doc! {"_id": 10, "in": "txn"},
        doc! {"_id": 11, "in": "txn"},
    ];
    for round in 1..=2 {
        let mut r = Replayer::new(&conn.client, &map);
        for e in &entries {
            r.apply_entry(e).await.unwrap();
        }
        assert_eq!(r.stats.skipped, 1, "round {round}");
        let got = crate::common::documents(&conn, &db, "users").await;
        assert_eq!(got, expected, "round {round}");
    }
    conn.client.database(&db).drop().await.unwrap();
}

/// The keys of a collection's indexes, sorted (the stand-in server names
/// indexes its own way).
async fn indexes(conn: &tessera_mongo::Connection, db: &str, coll: &str) -> Vec<String> {
    let mut keys: Vec<String> = conn
        .client
        .database(db)
        .collection::<Document>(coll)
        .list_indexes()
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap()
        .iter()
        .map(|i| i.keys.to_string())
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_replay_in_order_once_or_twice() {
    let Some(server) = Server::start() else {
        return;
    };
    let conn = server.connect().await;
    let db = db_name("ddl");
    let cmd = format!("{db}.$cmd");
    let entries = vec![
        entry(1, "c", &cmd, doc! {"create": "kept"}, None),
        entry(2, "i", &format!("{db}.kept"), doc! {"_id": 1, "n": 1}, None),
        // The oplog's form: one index per entry.
        entry(
            3,
            "c",
            &cmd,
            doc! {"createIndexes": "kept", "v": 2, "key": {"n": 1}, "name": "n_1"},
            None,
        ),
        entry(
            4,
            "c",
            &cmd,
            doc! {"createIndexes": "kept", "v": 2, "key": {"m": -1}, "name": "m_-1"},
            None,
        ),
        entry(
            5,
            "c",
            &cmd,
            doc! {"dropIndexes": "kept", "index": "m_-1"},
            None,
        ),
        entry(
            6,
            "c",
            &cmd,
            doc! {"collMod": "kept", "validator": {}},
            None,
        ),
        entry(7, "c", &cmd, doc! {"create": "gone"}, None),
        entry(8, "i", &format!("{db}.gone"), doc! {"_id": 1}, None),
        entry(9, "c", &cmd, doc! {"drop": "gone"}, None),
        entry(10, "c", &cmd, doc! {"unknownCommand": "x"}, None),
    ];
    let map = |ns: &str| Some(ns.to_owned());
    for round in 1..=2 {
        let mut r = Replayer::new(&conn.client, &map);
        for e in &entries {
            r.apply_entry(e).await.unwrap();
        }
        assert_eq!(
            indexes(&conn, &db, "kept").await,
            [r#"{ "_id": 1 }"#, r#"{ "n": 1 }"#],
            "round {round}"
        );
        let mut names = conn
            .client
            .database(&db)
            .list_collection_names()
            .await
            .unwrap();
        names.sort();
        assert_eq!(names, ["kept"], "round {round}");
        assert!(
            r.stats
                .warnings
                .iter()
                .any(|w| w.contains("unknownCommand")),
            "{:?}",
            r.stats.warnings
        );
    }
    conn.client.database(&db).drop().await.unwrap();
}
