//! Round trips, dedup, snapshot references, JSON output, no plaintext.

use crate::common::{TestRepo, random_bytes};

#[test]
fn small_streams_round_trip_bit_for_bit() {
    let t = TestRepo::new(&[]);
    for (i, len) in [0usize, 1, 1 << 20].into_iter().enumerate() {
        let data = random_bytes(len, i as u64);
        let id = t.backup("data.bin", &data, &[]);
        assert_eq!(t.dump(&id, "data.bin"), data, "{len}-byte stream");
        assert_eq!(t.dump(&id[..8], "data.bin"), data, "by short id");
    }
    let out = t.ok(&["check", "--read-data"]);
    assert!(out.is_empty());
}

#[test]
fn large_stream_round_trip_and_dedup() {
    const MIB: usize = 1 << 20;
    let t = TestRepo::new(&[]);
    let data = random_bytes(200 * MIB, 42);
    let input = t.path("big");
    std::fs::write(&input, &data).unwrap();
    let first = t.backup_file("big", &input, &[]);
    let after_first = t.size();

    // Restore through `restore --target` (a file per stream) and `dump`.
    let target = t.path("restored");
    t.ok(&["restore", &first, "--target", target.to_str().unwrap()]);
    assert!(
        std::fs::read(target.join("big")).unwrap() == data,
        "restore differs"
    );

    // The same data again adds less than 1 %.
    let second = t.backup_file("big", &input, &[]);
    let growth = t.size() - after_first;
    assert!(
        growth * 100 < after_first,
        "second backup added {growth} bytes to {after_first}"
    );

    // A 1 KiB insert adds about one average chunk (1 MiB). The chunk that
    // holds an edit is size-biased and the chunker key is random per
    // repository, so one edit may cost up to a max-size chunk or touch two:
    // measure eight inserts at spread positions and bound the mean.
    let mut third = String::new();
    let mut edited_first = Vec::new();
    let mut added_total = 0u64;
    const EDITS: u64 = 8;
    for k in 0..EDITS as usize {
        let at = (2 * k + 1) * data.len() / (2 * EDITS as usize);
        let mut edited = data[..at].to_vec();
        edited.extend_from_slice(&random_bytes(1024, 7 + k as u64));
        edited.extend_from_slice(&data[at..]);
        std::fs::write(&input, &edited).unwrap();
        let out = t.run_with_stdin(
            &["backup", "--stdin", "--stdin-name", "big", "--json"],
            &input,
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let new_chunks = v["data_blobs"].as_u64().unwrap();
        // Up to three: the inserted bytes can hold a cut point of their
        // own, splitting the edited chunk, and the cut after it may move.
        assert!(
            (1..=3).contains(&new_chunks),
            "a 1 KiB insert at {at} made {new_chunks} new chunks"
        );
        added_total += v["data_added_plain"].as_u64().unwrap();
        if k == 0 {
            third = v["snapshot_id"].as_str().unwrap().to_string();
            edited_first = edited;
        }
    }
    let mean = added_total / EDITS;
    assert!(
        (MIB as u64 / 4..=5 * MIB as u64 / 2).contains(&mean),
        "a 1 KiB insert added {mean} bytes on average; expected about one 1 MiB chunk"
    );
    assert!(
        t.dump(&third, "big") == edited_first,
        "edited stream differs"
    );
    assert!(t.dump(&second, "big") == data, "second snapshot differs");
    t.ok(&["check"]);
}

#[test]
fn snapshot_references_and_json() {
    let t = TestRepo::new(&[]);
    let old = t.backup(
        "s",
        b"old",
        &[
            "--time",
            "2020-01-01T00:00:00Z",
            "--tag",
            "a",
            "--host",
            "h1",
        ],
    );
    let new = t.backup("s", b"new", &["--time", "2021-01-01 12:00:00"]);
    let older_later = t.backup("s", b"middle", &["--time", "2020-06-01T00:00:00Z"]);
    assert_eq!(t.dump("latest", "s"), b"new");
    assert_eq!(t.dump(&old[..10], "s"), b"old");
    assert_eq!(t.dump(&older_later, "s"), b"middle");

    let json: serde_json::Value = serde_json::from_str(&t.ok(&["snapshots", "--json"])).unwrap();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 3);
    let first = &list[0];
    assert_eq!(first["id"], old.as_str());
    assert_eq!(first["short_id"], &old[..8]);
    assert_eq!(first["time"], "2020-01-01T00:00:00Z");
    assert_eq!(first["hostname"], "h1");
    assert_eq!(first["tags"], serde_json::json!(["a"]));
    assert_eq!(first["paths"], serde_json::json!(["s"]));
    assert_eq!(list[2]["id"], new.as_str(), "oldest first");

    let err = t.fails(&["dump", "ffffffff", "s"]);
    assert!(err.contains("no snapshot matches"), "{err}");
    let err = t.fails(&["dump", "latest", "nope"]);
    assert!(err.contains("no stream named \"nope\""), "{err}");
    let table = t.ok(&["snapshots"]);
    assert!(
        table.contains(&old[..8]) && table.contains("3 snapshots"),
        "{table}"
    );
    let config: serde_json::Value = serde_json::from_str(&t.ok(&["cat", "config"])).unwrap();
    assert_eq!(config["version"], 1);
    assert_eq!(config["chunker"]["algorithm"], "fastcdc-2020");
    let snap: serde_json::Value =
        serde_json::from_str(&t.ok(&["cat", "snapshot", &old[..8]])).unwrap();
    assert_eq!(snap["hostname"], "h1");
    let index = t.objects("index")[0]
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let seg: serde_json::Value = serde_json::from_str(&t.ok(&["cat", "index", &index])).unwrap();
    assert!(!seg["packs"].as_array().unwrap().is_empty());
    let stats: serde_json::Value = serde_json::from_str(&t.ok(&["stats", "--json"])).unwrap();
    assert_eq!(stats["snapshots"], 3);
    assert_eq!(stats["logical_bytes"], 3 + 3 + 6);
}

#[test]
fn no_plaintext_in_the_repository() {
    let t = TestRepo::new(&[]);
    let marker = b"TESSERA-PLAINTEXT-MARKER-7f3a";
    let mut data = Vec::new();
    for i in 0..20_000u32 {
        data.extend_from_slice(marker);
        data.extend_from_slice(format!(" line {i}\n").as_bytes());
    }
    data.extend_from_slice(&random_bytes(1 << 20, 9));
    data.extend_from_slice(marker);
    t.backup("secret-name.sql", &data, &["--tag", "secret-tag"]);
    for file in crate::common::walk(&t.repo) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in [&marker[..], b"secret-name", b"secret-tag", b"line 1234"] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} contains {:?}",
                file.display(),
                String::from_utf8_lossy(needle)
            );
        }
    }
}

#[test]
fn invalid_inputs_are_refused_clearly() {
    let t = TestRepo::new(&[]);
    let input = t.path("x");
    std::fs::write(&input, b"x").unwrap();
    let out = t.run_with_stdin(&["backup", "--stdin", "--stdin-name", "a/b"], &input);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be a file name"));
    let err = t.fails(&["init"]);
    assert!(err.contains("already exists"), "{err}");
    let out = t.run(&["backup", "--stdin", "--time", "yesterday-ish"]);
    assert!(!out.status.success());
}
