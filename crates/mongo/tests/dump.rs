//! Backups and restores against a MongoDB-wire server.

use futures::TryStreamExt;
use mongodb::bson::{
    Binary, Bson, DateTime, Document, RawDocumentBuf, doc, oid::ObjectId, spec::BinarySubtype,
};
use tessera_mongo::{BackupOptions, Error, RestoreOptions, backup, restore};

use crate::common::{Server, db_name, documents, repo};

fn user(i: i32) -> Document {
    doc! {
        "_id": i,
        "name": format!("user {i}"),
        "oid": ObjectId::from_bytes([i as u8; 12]),
        "born": DateTime::from_millis(-1_000_000_000_000 + i64::from(i) * 86_400_000),
        "score": f64::from(i) / 7.0,
        "big": 9_007_199_254_740_993_i64 + i64::from(i),
        "ok": i % 2 == 0,
        "none": Bson::Null,
        "tags": [["a", i], [[i, "deep"]], []],
        "blob": Binary { subtype: BinarySubtype::Generic, bytes: vec![i as u8; 40] },
        "sub": {"x": {"y": {"z": i}}},
    }
}

async fn fill(conn: &tessera_mongo::Connection, app: &str, logs: &str) {
    let users = conn.client.database(app).collection::<Document>("users");
    users.insert_many((0..3000).map(user)).await.unwrap();
    conn.client
        .database(app)
        .collection::<Document>("orders_2026")
        .insert_many((0..50).map(|i| doc! {"_id": format!("o{i}"), "user": i % 7}))
        .await
        .unwrap();
    conn.client
        .database(logs)
        .collection::<Document>("jan")
        .insert_many((0..10).map(|i| doc! {"_id": i, "line": "x".repeat(i as usize)}))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_and_collections_back_up_and_restore_as_they_were() {
    let Some(server) = Server::start() else {
        return;
    };
    let conn = server.connect().await;
    let (app, logs) = (db_name("app"), db_name("logs"));
    fill(&conn, &app, &logs).await;
    let before_users = documents(&conn, &app, "users").await;
    let before_orders = documents(&conn, &app, "orders_2026").await;
    let repo = repo().await;
    let done = backup(
        &repo,
        &conn,
        BackupOptions {
            databases: vec![app.clone(), logs.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(done.meta.documents, 3060);
    assert_eq!(done.meta.databases.len(), 2);
    let names: Vec<&str> = done.meta.databases[0]
        .collections
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["orders_2026", "users"]);

    // The stored stream holds exactly the bytes the server sent.
    let snap = repo.find_snapshot(&done.summary.id.to_hex()).await.unwrap();
    let root = repo.read_tree(snap.snapshot.tree, "root").await.unwrap();
    let tessera_core::NodeKind::Dir { subtree } = &root.get(b"databases").unwrap().kind else {
        panic!()
    };
    let dbs = repo.read_tree(*subtree, "databases").await.unwrap();
    let tessera_core::NodeKind::Dir { subtree } = &dbs.get(app.as_bytes()).unwrap().kind else {
        panic!()
    };
    let app_dir = repo.read_tree(*subtree, "app").await.unwrap();
    assert!(
        app_dir.get(b"orders_2026.metadata.bson").is_some(),
        "{:?}",
        app_dir.nodes
    );
    let mut stored = Vec::new();
    repo.restore_node(app_dir.get(b"users.bson").unwrap(), &mut stored)
        .await
        .unwrap();
    let stored = tessera_mongo::bson_stream::split_all(&stored, "users").unwrap();
    let sent: Vec<RawDocumentBuf> = conn
        .client
        .database(&app)
        .collection::<RawDocumentBuf>("users")
        .find(doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(stored, sent);

    // Into a server that holds them: refused, nothing written.
    let err = restore(&repo, &snap, &conn, &RestoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotEmpty(_)), "{err}");
    assert!(
        err.to_string().contains(&format!("{app}.users")) && err.to_string().contains("--drop"),
        "{err}"
    );
    assert_eq!(documents(&conn, &app, "users").await.len(), 3000);

    // With --drop, and into an emptied server: the same documents.
    conn.client
        .database(&app)
        .collection::<Document>("users")
        .delete_many(doc! {"_id": {"$lt": 100}})
        .await
        .unwrap();
    let report = restore(
        &repo,
        &snap,
        &conn,
        &RestoreOptions {
            drop: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((report.collections, report.documents), (3, 3060));
    assert_eq!(documents(&conn, &app, "users").await, before_users);
    assert_eq!(documents(&conn, &app, "orders_2026").await, before_orders);
    for db in [&app, &logs] {
        conn.client.database(db).drop().await.unwrap();
    }
    restore(&repo, &snap, &conn, &RestoreOptions::default())
        .await
        .unwrap();
    assert_eq!(documents(&conn, &app, "users").await, before_users);

    // One namespace, renamed.
    let logs2 = db_name("logs2");
    let report = restore(
        &repo,
        &snap,
        &conn,
        &RestoreOptions {
            include: vec![format!("{logs}.*")],
            renames: vec![(format!("{logs}.*"), format!("{logs2}.*"))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((report.collections, report.documents), (1, 10));
    assert_eq!(
        documents(&conn, &logs2, "jan").await,
        documents(&conn, &logs, "jan").await
    );
    for db in [&app, &logs, &logs2] {
        conn.client.database(db).drop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_collection_costs_nothing_the_next_time() {
    let Some(server) = Server::start() else {
        return;
    };
    let conn = server.connect().await;
    let (app, logs) = (db_name("app"), db_name("logs"));
    fill(&conn, &app, &logs).await;
    let repo = repo().await;
    let options = BackupOptions {
        databases: vec![app.clone()],
        ..Default::default()
    };
    let first = backup(&repo, &conn, options.clone()).await.unwrap();
    let second = backup(&repo, &conn, options).await.unwrap();
    assert!(
        first.summary.snapshot.stats.new_bytes > 100_000,
        "{:?}",
        first.summary.snapshot.stats
    );
    // Only the snapshot's small trees and metadata are new.
    assert!(
        second.summary.snapshot.stats.new_bytes < 2_000,
        "{:?}",
        second.summary.snapshot.stats
    );
    for db in [&app, &logs] {
        conn.client.database(db).drop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_named_and_commits_nothing() {
    let Some(mut server) = Server::start() else {
        return;
    };
    let conn = server.connect().await;
    let repo = repo().await;
    let missing = db_name("missing");
    let err = backup(
        &repo,
        &conn,
        BackupOptions {
            databases: vec![missing.clone()],
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("database {missing:?} does not exist")),
        "{err}"
    );

    let err = tessera_mongo::connect("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=500")
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("connecting to MongoDB at 127.0.0.1:1"),
        "{err}"
    );

    if server.is_real() {
        return;
    }
    // The server goes away in the middle of a dump.
    let big = db_name("big");
    let coll = conn.client.database(&big).collection::<Document>("c");
    for part in 0..10 {
        coll.insert_many((0..2000).map(|i| doc! {"_id": part * 2000 + i, "pad": "p".repeat(500)}))
            .await
            .unwrap();
    }
    let dump = backup(
        &repo,
        &conn,
        BackupOptions {
            databases: vec![big.clone()],
            ..Default::default()
        },
    );
    let killer = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        server.kill();
    };
    let (result, ()) = tokio::join!(dump, killer);
    let err = result.unwrap_err();
    assert!(err.to_string().contains(&format!("{big}.c")), "{err}");
    assert!(repo.snapshots().await.unwrap().is_empty());
}
