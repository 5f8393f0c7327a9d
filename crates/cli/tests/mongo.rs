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
    assert_eq!(list["backups"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["backups"][0]["snapshot_id"], id.as_str());
    assert_eq!(list["oplog"], serde_json::json!([]), "{list}");
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
        json(&t.ok(&["mongo", "list", "--json"]))["backups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// Waits for a JSON line of `message_type` on the follower's output.
fn wait_for(
    lines: &std::sync::mpsc::Receiver<String>,
    kind: &str,
    last: Option<&str>,
) -> serde_json::Value {
    loop {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("no {kind} line from `mongo oplog`: {e}"));
        let v = json(&line);
        if v["message_type"] == kind && last.is_none_or(|l| v["last"] == l) {
            return v;
        }
    }
}

#[test]
fn mongo_oplog_follows_until_sigterm_and_restores_to_a_point_in_time() {
    use crate::mongo_fake::{FakeReplSet, noop, op};
    use std::io::BufRead;
    let (Some(fake), Some(server)) = (FakeReplSet::start(), Server::start()) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = db_name("pitr");
    let ns = format!("{db}.users");
    rt.block_on(fake.control(doc! {
        "data": {&db: {"users": [{"_id": 1}, {"_id": 2}]}},
        "append": [noop(3000)],
    }));
    let t = TestRepo::new(&[]);
    let out = json(&t.ok(&["mongo", "backup", "--uri", &fake.uri, "--json"]));
    assert_eq!(out["consistent"], "3000:1", "{out}");

    let mut follower = t.cmd();
    follower
        .args([
            "mongo", "oplog", "--uri", &fake.uri, "--slice", "300ms", "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = follower.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let started = wait_for(&lines, "started", None);
    assert_eq!(started["after"], "3000:1", "{started}");
    rt.block_on(fake.control(doc! {"append": [
        op(3010, "i", &ns, doc! {"_id": 3}, Some(doc! {"_id": 3})),
        noop(3020),
    ]}));
    wait_for(&lines, "slice", Some("3020:1"));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let summary = wait_for(&lines, "summary", None);
    assert_eq!(summary["last"], "3020:1", "{summary}");
    assert_eq!(summary["gaps"], 0, "{summary}");
    assert!(
        child.wait().unwrap().success(),
        "SIGTERM: exit 0 after committing"
    );

    let list = json(&t.ok(&["mongo", "list", "--json"]));
    assert_eq!(
        list["oplog"][0]["ranges"],
        serde_json::json!([{"from": "3000:1", "to": "3020:1", "slices": list["oplog"][0]["slices"]}]),
        "{list}"
    );
    assert!(t.ok(&["mongo", "list"]).contains("oplog archive of rs0"));

    // To an oplog position, and to a wall-clock time (oplog seconds are
    // the cluster's clock: 3005 s after the epoch).
    let uri = server.uri.as_str();
    let done = json(&t.ok(&["mongo", "restore", "--uri", uri, "--ts", "3010:1", "--json"]));
    assert_eq!(
        (done["slices"].as_u64(), done["consistent"].as_str()),
        (Some(1), Some("3010:1")),
        "{done}"
    );
    assert_eq!(count(uri, &db, "users"), 3);
    t.ok(&[
        "mongo",
        "restore",
        "--uri",
        uri,
        "--drop",
        "--time",
        "1970-01-01T00:50:05Z",
    ]);
    assert_eq!(count(uri, &db, "users"), 2);
    let err = t.fails(&["mongo", "restore", "--uri", uri, "--drop", "--ts", "3999:1"]);
    assert!(err.contains("reaches 3020:1"), "{err}");

    // A newer backup: the first and the slices before the newer one's
    // consistent point go; nothing a kept backup needs.
    rt.block_on(fake.control(doc! {
        "data": {&db: {"users": [{"_id": 1}, {"_id": 2}, {"_id": 3}]}},
        "append": [noop(3030)],
    }));
    t.ok(&["mongo", "backup", "--uri", &fake.uri]);
    let gone = json(&t.ok(&["mongo", "forget", "--keep-last", "1", "--json"]));
    assert!(
        !gone["oplog_slices_released"].as_array().unwrap().is_empty(),
        "{gone}"
    );
    let list = json(&t.ok(&["mongo", "list", "--json"]));
    assert_eq!(list["backups"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["oplog"], serde_json::json!([]), "{list}");
    rt.block_on(async {
        let c = mongodb::Client::with_uri_str(uri).await.unwrap();
        c.database(&db).drop().await.unwrap();
    });
}
