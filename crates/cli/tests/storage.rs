//! Storage for real: request counts, the metadata cache, and faults, all
//! against the S3 test server (whatever storage the rest of the suite uses).

use std::path::Path;
use std::process::Output;

use crate::common::{TestRepo, assert_success, on_s3, random_bytes};

/// An S3 repository, or `None` when this suite already runs on S3 (these
/// tests ran in the local pass) or the server is missing outside CI.
fn s3_repo(init_args: &[&str]) -> Option<TestRepo> {
    if on_s3() {
        return None;
    }
    TestRepo::new_s3(init_args)
}

#[derive(Debug, PartialEq, Eq)]
struct Requests {
    put: u64,
    get: u64,
    list: u64,
    delete: u64,
}

/// The counts `--print-requests` printed.
fn requests(out: &Output) -> Requests {
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("requests to "))
        .unwrap_or_else(|| panic!("no request counts in: {err}"));
    let counts: Vec<u64> = line
        .split(": ")
        .nth(1)
        .unwrap()
        .split(", ")
        .map(|part| part.split(' ').next().unwrap().parse().unwrap())
        .collect();
    Requests {
        put: counts[0],
        get: counts[1],
        list: counts[2],
        delete: counts[3],
    }
}

fn run(t: &TestRepo, args: &[&str]) -> Output {
    let out = t.run(args);
    assert_success(&out, args);
    out
}

/// Times of every ancestor of `path` (the directories the snapshot records
/// above it).
fn ancestor_times(path: &Path) -> Vec<(i64, i64, i64, i64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    path.ancestors()
        .skip(1)
        .map(|a| {
            let m = std::fs::symlink_metadata(a).unwrap();
            (
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                m.atime(),
                m.atime_nsec(),
            )
        })
        .collect()
}

/// The last JSON line a `backup --json` printed: its summary.
fn summary(out: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"summary\""))
        .unwrap_or_else(|| panic!("no summary in: {stdout}"));
    serde_json::from_str(line).unwrap()
}

fn tree(root: &Path, files: usize) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 50));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}")), format!("file {i}\n").repeat(20)).unwrap();
    }
}

#[test]
fn an_unchanged_backup_makes_the_same_few_requests_whatever_the_tree_size() {
    let mut seen = Vec::new();
    for files in [40, 4000] {
        let Some(t) = s3_repo(&[]) else { return };
        // The snapshot records every ancestor of the source, and other
        // tests change their times (making directories in /tmp, where a
        // checkout may itself be): that rewrites the few ancestor trees,
        // one pack and one index segment more, whatever the tree's size.
        let base = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let src = base.path().join("src");
        tree(&src, files);
        let before = ancestor_times(&src);
        let src = src.to_str().unwrap();
        run(&t, &["backup", src]);
        let out = run(&t, &["--print-requests", "backup", "--json", src]);
        let moved = ancestor_times(Path::new(src)) != before;
        let mut again = requests(&out);
        let summary = summary(&out);
        // Nothing per file: no file read again, nothing stored for them.
        assert_eq!(summary["files_unmodified"], files, "{summary}");
        assert!(
            summary["data_added_plain"].as_u64().unwrap() < 4096,
            "{files} files: {summary}"
        );
        // The session marker and the snapshot (and the ancestors' pack and
        // index segment when one of them changed meanwhile).
        if moved {
            assert!(matches!(again.put, 2 | 4), "{files} files: {again:?}");
            again.put = 2;
        } else {
            assert_eq!(again.put, 2, "{files} files: {again:?}");
        }
        assert!(
            again.get <= 2 && again.list <= 4,
            "{files} files: {again:?}"
        );
        seen.push(again);

        // With the metadata cache, listing and browsing read nothing but
        // the config and the key slot.
        for args in [&["snapshots"][..], &["ls", "latest"]] {
            let mut all = vec!["--print-requests"];
            all.extend_from_slice(args);
            let r = requests(&run(&t, &all));
            assert!(r.get <= 2 && r.put == 0, "{args:?}: {r:?}");
        }
        // Without it, `ls` reads the index and the trees.
        let r = requests(&run(
            &t,
            &["--no-cache", "--print-requests", "ls", "latest"],
        ));
        assert!(r.get > 2, "{r:?}");
    }
    assert_eq!(seen[0], seen[1], "requests grew with the tree");
}

#[test]
fn backups_and_restores_ride_out_transient_faults() {
    let Some(t) = s3_repo(&["--pack-size", "1"]) else {
        return;
    };
    let src = t.path("src");
    tree(&src, 300);
    std::fs::write(src.join("big"), random_bytes(6 << 20, 5)).unwrap();
    let faulty = |seed: u64| format!("transient=0.1,torn=0.03,seed={seed}");
    let mut backup = t.cmd();
    backup.env("TESSERA_FAULTS", faulty(1)).args([
        "--print-requests",
        "backup",
        src.to_str().unwrap(),
    ]);
    let out = backup.output().unwrap();
    assert_success(&out, &["backup under faults"]);
    let target = t.path("restored");
    let mut restore = t.cmd();
    restore.env("TESSERA_FAULTS", faulty(2)).args([
        "--no-cache",
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
    ]);
    assert_success(&restore.output().unwrap(), &["restore under faults"]);
    let restored = target.join(src.strip_prefix("/").unwrap());
    let files = crate::common::walk(&src);
    assert_eq!(files.len(), 301);
    for f in files {
        let back = restored.join(f.strip_prefix(&src).unwrap());
        assert!(
            std::fs::read(&f).unwrap() == std::fs::read(&back).unwrap(),
            "{} differs",
            back.display()
        );
    }
    run(&t, &["check", "--read-data"]);
}

#[test]
fn a_permanent_failure_mid_backup_fails_clearly_and_loses_nothing() {
    let Some(t) = s3_repo(&["--pack-size", "1"]) else {
        return;
    };
    let first = random_bytes(3 << 20, 1);
    let id = t.backup("first", &first, &[]);
    let input = t.path("second");
    std::fs::write(&input, random_bytes(8 << 20, 2)).unwrap();
    let mut c = t.cmd();
    c.env("TESSERA_FAULTS", "full-after=3")
        .args(["backup", "--stdin", "--stdin-name", "second"])
        .stdin(std::fs::File::open(&input).unwrap());
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a full store must fail the backup");
    assert!(
        err.contains("no storage space") || err.contains("No space left"),
        "{err}"
    );
    assert!(err.contains("packs/"), "names the object: {err}");
    run(&t, &["check", "--read-data"]);
    assert_eq!(t.dump(&id, "first"), first);
    let snapshots = run(&t, &["snapshots", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&snapshots.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn create_only_credentials_back_up_and_a_prune_that_cannot_delete_stops_cleanly() {
    let Some(t) = s3_repo(&["--pack-size", "1"]) else {
        return;
    };
    let deny = |args: &[&str]| {
        let mut c = t.cmd();
        c.env("TESSERA_FAULTS", "deny-delete").args(args);
        c.output().unwrap()
    };
    let src = t.path("data");
    std::fs::write(&src, random_bytes(3 << 20, 3)).unwrap();
    let src = src.to_str().unwrap();
    for _ in 0..2 {
        assert_success(&deny(&["backup", src]), &["backup, no deletes"]);
    }
    std::fs::write(t.path("data"), random_bytes(3 << 20, 4)).unwrap();
    assert_success(&deny(&["backup", src]), &["backup, no deletes"]);
    // Forgetting and pruning need deletes: with create-only credentials
    // prune stops with a clear error, and the repository stays whole for
    // a prune that may delete.
    run(&t, &["forget", "--keep-last", "1"]);
    let out = deny(&["prune"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("permission denied") && err.contains("index/"),
        "{err}"
    );
    run(&t, &["check", "--read-data"]);
    let report: serde_json::Value = serde_json::from_str(&t.ok(&["prune", "--json"])).unwrap();
    assert!(report["packs_deleted"].as_u64().unwrap() > 0, "{report}");
    run(&t, &["check", "--read-data"]);
}

/// moto (PyPI `moto[server]`), the AWS emulator: unlike s3s-fs it has
/// object lock. Started per test on a free port, killed on drop.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    fn start() -> Option<Moto> {
        use crate::common::server;
        let port = server::free_port();
        let child = std::process::Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => return server::unavailable("moto_server", &e.to_string()),
        };
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        assert!(server::wait_for_port(port, 30), "moto did not listen");
        Some(moto)
    }

    /// `tessera init` with test parameters (fast KDF, 1 MiB packs) and `extra`.
    fn init(&self, url: &str, extra: &[&str], dir: &Path) {
        let mut args = vec!["init", "--kdf-memory", "64", "--kdf-iterations", "1"];
        args.extend_from_slice(&["--pack-size", "1"]);
        args.extend_from_slice(extra);
        let out = self.tessera(url, &[], dir).args(&args).output().unwrap();
        assert_success(&out, &args);
    }

    /// Runs a boto3 script with `s3` bound to a client of this server.
    fn boto(&self, script: &str) -> String {
        let program = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='a', aws_secret_access_key='b', region_name='us-east-1')\n{script}",
            self.endpoint
        );
        let out = std::process::Command::new("python3")
            .args(["-c", &program])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `tessera -r URL EXTRA…` against this server, caching under `dir`.
    fn tessera(&self, url: &str, extra: &[&str], dir: &Path) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"));
        c.args(["-r", url])
            .args(extra)
            .env("TESSERA_PASSWORD", crate::common::PASSWORD)
            .env("TESSERA_CACHE_DIR", dir.join("cache"))
            .env_remove("TESSERA_REPO");
        self.apply(&mut c);
        c
    }

    fn apply(&self, c: &mut std::process::Command) {
        c.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "a")
            .env("AWS_SECRET_ACCESS_KEY", "b")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ALLOW_HTTP", "true");
    }
}

#[test]
fn object_lock_retains_new_objects_and_prune_leaves_locked_packs_alone() {
    if on_s3() {
        return;
    }
    let Some(moto) = Moto::start() else { return };
    moto.boto("s3.create_bucket(Bucket='locked', ObjectLockEnabledForBucket=True)");
    let dir = tempfile::tempdir().unwrap();
    let tessera = |args: &[&str]| {
        let out = moto
            .tessera("s3://locked/repo", &[], dir.path())
            .args(args)
            .output()
            .unwrap();
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    };
    moto.init("s3://locked/repo", &["--object-lock-days", "2"], dir.path());
    for seed in [1, 2] {
        let input = dir.path().join("data");
        std::fs::write(&input, random_bytes(3 << 20, seed)).unwrap();
        tessera(&["backup", input.to_str().unwrap()]);
    }
    // Every object carries the retention: two days from when it was stored.
    let locks = moto.boto(
        "import datetime\n\
         for o in s3.list_objects_v2(Bucket='locked')['Contents']:\n\
         \x20   h = s3.head_object(Bucket='locked', Key=o['Key'])\n\
         \x20   left = h['ObjectLockRetainUntilDate'] - datetime.datetime.now(datetime.timezone.utc)\n\
         \x20   print(o['Key'], h['ObjectLockMode'], round(left.total_seconds() / 3600))\n",
    );
    let packs: Vec<&str> = locks.lines().filter(|l| l.contains("/packs/")).collect();
    assert!(packs.len() >= 4, "{locks}");
    for line in locks.lines() {
        assert!(line.ends_with(" GOVERNANCE 48"), "{line}");
    }
    // The first backup's packs are unused once it is forgotten, but still
    // locked: prune leaves them and says until when.
    tessera(&["forget", "--keep-last", "1"]);
    let report: serde_json::Value = serde_json::from_str(&tessera(&["prune", "--json"])).unwrap();
    // All of the first backup's 3 MiB (however its chunks fell into packs).
    assert!(report["packs_locked"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        report["bytes_locked"].as_u64().unwrap() >= 3 << 20,
        "{report}"
    );
    assert_eq!(report["packs_deleted"], 0, "{report}");
    assert!(report["locked_until"].is_string(), "{report}");
    let human = tessera(&["prune", "--dry-run"]);
    assert!(human.contains("object lock retains until"), "{human}");
    tessera(&["check", "--read-data"]);
}

#[test]
fn data_packs_go_cold_metadata_stays_hot_and_a_restore_says_what_to_thaw() {
    if on_s3() {
        return;
    }
    let Some(moto) = Moto::start() else { return };
    moto.boto("s3.create_bucket(Bucket='tiers')");
    let dir = tempfile::tempdir().unwrap();
    let tessera = |args: &[&str]| {
        moto.tessera(
            "s3://tiers/repo",
            &["--data-storage-class", "GLACIER"],
            dir.path(),
        )
        .args(args)
        .output()
        .unwrap()
    };
    let ok = |args: &[&str]| {
        let out = tessera(args);
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    };
    moto.init("s3://tiers/repo", &[], dir.path());
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), random_bytes(3 << 20, 8)).unwrap();
    std::fs::write(src.join("small"), b"small file\n").unwrap();
    ok(&["backup", src.to_str().unwrap()]);
    let classes = moto.boto(
        "for o in s3.list_objects_v2(Bucket='tiers')['Contents']:\n\
         \x20   print(o['Key'], o.get('StorageClass'))\n",
    );
    let cold: Vec<String> = classes
        .lines()
        .filter(|l| l.ends_with(" GLACIER"))
        .map(|l| {
            l.split(' ')
                .next()
                .unwrap()
                .trim_start_matches("repo/")
                .to_string()
        })
        .collect();
    // However the chunks fell into packs: at least one data pack, and
    // every other object hot.
    assert!(!cold.is_empty(), "{classes}");
    for line in classes.lines().filter(|l| !l.ends_with(" GLACIER")) {
        assert!(
            line.ends_with(" STANDARD"),
            "metadata must stay hot: {line}"
        );
    }
    // Listing and browsing read only hot objects, even without the cache.
    ok(&["--no-cache", "snapshots"]);
    let ls = ok(&["--no-cache", "ls", "latest"]);
    assert!(ls.contains("small"), "{ls}");
    // The plan names exactly the cold packs; the restore itself fails on
    // them, clearly.
    let plan: serde_json::Value = serde_json::from_str(&ok(&[
        "restore", "latest", "--target", "unused", "--plan", "--json",
    ]))
    .unwrap();
    let mut planned: Vec<String> = plan["packs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["object"].as_str().unwrap().to_string())
        .collect();
    planned.sort();
    let mut cold = cold;
    cold.sort();
    assert_eq!(planned, cold);
    let target = dir.path().join("restored");
    let out = tessera(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("InvalidObjectState") && err.contains("--plan"),
        "{err}"
    );
    // Once thawed (moto restores at once), the restore reads them.
    moto.boto(&format!(
        "for k in {:?}:\n\
         \x20   s3.restore_object(Bucket='tiers', Key='repo/' + k, RestoreRequest={{'Days': 1}})\n",
        planned
    ));
    ok(&["restore", "latest", "--target", target.to_str().unwrap()]);
    let back = target.join(src.strip_prefix("/").unwrap());
    assert_eq!(
        std::fs::read(back.join("big")).unwrap(),
        std::fs::read(src.join("big")).unwrap()
    );
}
