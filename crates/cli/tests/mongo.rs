//! `tessera mongo`: the command line the issue names, against a
//! MongoDB-wire server (nx-27017, or TESSERA_TEST_MONGODB_URI).

use mongodb::bson::{Document, doc};

use crate::common::TestRepo;
use crate::mongo_server::{Server, db_name};

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn count(uri: &str, db: &str, coll: &str) -> u64 {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(uri).await.unwrap();
        c.database(db)
            .collection::<Document>(coll)
            .count_documents(doc! {})
            .await
            .unwrap()
    })
}

#[test]
fn mongo_backup_list_restore() {
    let Some(server) = Server::start() else {
        return;
    };
    let (app, logs) = (db_name("app"), db_name("logs"));
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let c = mongodb::Client::with_uri_str(&server.uri).await.unwrap();
        let users = c.database(&app).collection::<Document>("users");
        users
            .insert_many((0..500).map(|i| doc! {"_id": i, "name": format!("u{i}")}))
            .await
            .unwrap();
        c.database(&logs)
            .collection::<Document>("jan")
            .insert_one(doc! {"_id": 1})
            .await
            .unwrap();
    });
    let t = TestRepo::new(&[]);
    let uri = server.uri.as_str();
    let out = json(&t.ok(&[
        "mongo", "backup", "--uri", uri, "--db", &app, "--db", &logs, "--json",
    ]));
    assert_eq!(out["databases"], 2, "{out}");
    assert_eq!(out["collections"], 2, "{out}");
    assert_eq!(out["documents"], 501, "{out}");
    assert!(out["bytes"].as_u64().unwrap() > 5000, "{out}");
    let id = out["snapshot_id"].as_str().unwrap().to_owned();

    let list = json(&t.ok(&["mongo", "list", "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["snapshot_id"], id.as_str());
    assert!(
        t.ok(&["mongo", "list"])
            .contains("2 databases, 2 collections, 501 documents")
    );

    // The target holds the collections: refused, and says how.
    let err = t.fails(&["mongo", "restore", "--uri", uri]);
    assert!(
        err.contains("--drop") && err.contains(&format!("{app}.users")),
        "{err}"
    );
    let done = json(&t.ok(&["mongo", "restore", "--uri", uri, "--drop", "--json"]));
    assert_eq!(done["documents"], 501, "{done}");
    assert_eq!(count(uri, &app, "users"), 500);

    // By id, one database under another name.
    let copy = db_name("copy");
    t.ok(&[
        "mongo",
        "restore",
        &id[..8],
        "--uri",
        uri,
        "--ns-include",
        &format!("{app}.*"),
        "--ns-from",
        &format!("{app}.*"),
        "--ns-to",
        &format!("{copy}.*"),
    ]);
    assert_eq!(count(uri, &copy, "users"), 500);
    assert_eq!(count(uri, &logs, "jan"), 1);

    // Usage and bad input.
    let err = t.fails(&["mongo", "backup", "--uri", uri, "--db", &db_name("nope")]);
    assert!(err.contains("does not exist"), "{err}");
    let err = t.fails(&[
        "mongo",
        "backup",
        "--uri",
        "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300",
    ]);
    assert!(
        err.contains("connecting to MongoDB at 127.0.0.1:1"),
        "{err}"
    );
    let err = t.fails(&["mongo", "restore", "--uri", uri, "--ns-from", "a.*"]);
    assert!(err.contains("pairs"), "{err}");
    assert_eq!(
        json(&t.ok(&["mongo", "list", "--json"]))
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
