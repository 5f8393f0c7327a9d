//! Files cache, excludes, warnings, resume, --delete, partial restore, diff.

use std::path::Path;
use std::sync::Arc;

use tessera_fs::{BackupOptions, DiffKind, Excludes, RestoreOptions};

use crate::common::repo;

fn tree(root: &Path) {
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(root.join("cache-dir")).unwrap();
    std::fs::create_dir_all(root.join("skip-me")).unwrap();
    std::fs::write(root.join("a/one.txt"), b"one").unwrap();
    std::fs::write(root.join("a/b/two.log"), b"two").unwrap();
    std::fs::write(root.join("a/b/three.txt"), vec![3u8; 300_000]).unwrap();
    std::fs::write(
        root.join("cache-dir/CACHEDIR.TAG"),
        b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache",
    )
    .unwrap();
    std::fs::write(root.join("cache-dir/blob"), b"cached").unwrap();
    std::fs::write(root.join("skip-me/.nobackup"), b"").unwrap();
    std::fs::write(root.join("skip-me/data"), b"data").unwrap();
    std::fs::write(root.join("huge"), vec![1u8; 2_000_000]).unwrap();
}

async fn listing(repo: &tessera_core::Repository, snap: &tessera_core::Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    tessera_fs::walk_tree(repo, snap.tree, b"/", |e| {
        out.push(String::from_utf8_lossy(e.path).into_owned());
        Ok(true)
    })
    .await
    .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excludes_leave_out_what_they_name() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    tree(&root);
    let repo = repo().await;
    let options = BackupOptions {
        excludes: Excludes {
            patterns: vec!["*.log".into()],
            if_present: vec![".nobackup".into()],
            caches: true,
            larger_than: Some(1_000_000),
            ..Default::default()
        },
        ..Default::default()
    };
    let done = tessera_fs::backup(&repo, std::slice::from_ref(&root), options)
        .await
        .unwrap();
    let rel: Vec<String> = listing(&repo, &done.snapshot)
        .await
        .into_iter()
        .filter_map(|p| {
            p.strip_prefix(&format!("{}/", root.display()))
                .map(String::from)
        })
        .collect();
    assert_eq!(rel, ["a", "a/b", "a/b/three.txt", "a/one.txt"]);
    // The ancestors of the backed-up path are in the snapshot too.
    assert!(done.snapshot.paths == [root.display().to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_files_cache_skips_unchanged_files_and_survives_its_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    tree(&root);
    let cache = dir.path().join("cache/files.db");
    let repo = repo().await;
    let options = || BackupOptions {
        cache: Some(cache.clone()),
        ..Default::default()
    };
    let first = tessera_fs::backup(&repo, std::slice::from_ref(&root), options())
        .await
        .unwrap();
    assert_eq!((first.files_new, first.files_unchanged), (8, 0));
    let second = tessera_fs::backup(&repo, std::slice::from_ref(&root), options())
        .await
        .unwrap();
    assert_eq!(
        (
            second.files_new,
            second.files_changed,
            second.files_unchanged
        ),
        (0, 0, 8)
    );
    // The tree of the backed-up directory is the same blob (its parent
    // holds the cache, whose writes change the parent's mtime).
    let subtree = |snap: tessera_core::Snapshot| {
        let (repo, root) = (&repo, &root);
        async move {
            let node = tessera_fs::find_node(repo, &snap, root)
                .await
                .unwrap()
                .unwrap();
            match node.kind {
                tessera_core::NodeKind::Dir { subtree } => subtree,
                _ => panic!("not a directory"),
            }
        }
    };
    assert_eq!(
        subtree(second.snapshot.clone()).await,
        subtree(first.snapshot.clone()).await
    );
    assert_eq!(second.snapshot.stats.new_chunks, 0);
    // Change one file (size kept, mtime moved): it is read again.
    std::fs::write(root.join("a/one.txt"), b"ONE").unwrap();
    let third = tessera_fs::backup(&repo, std::slice::from_ref(&root), options())
        .await
        .unwrap();
    assert_eq!((third.files_changed, third.files_unchanged), (1, 7));
    assert_ne!(
        subtree(third.snapshot.clone()).await,
        subtree(first.snapshot.clone()).await
    );
    // Without the cache, everything is read and the snapshot is the same.
    std::fs::remove_dir_all(dir.path().join("cache")).unwrap();
    let fourth = tessera_fs::backup(&repo, std::slice::from_ref(&root), options())
        .await
        .unwrap();
    assert_eq!(fourth.files_new, 8);
    assert_eq!(
        subtree(fourth.snapshot.clone()).await,
        subtree(third.snapshot.clone()).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_files_cache_damaged_inside_is_a_warning_and_replaced_by_the_next_backup() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    tree(&root);
    let cache = dir.path().join("cache/files.db");
    let repo = repo().await;
    let options = || BackupOptions {
        cache: Some(cache.clone()),
        ..Default::default()
    };
    let backup = || tessera_fs::backup(&repo, std::slice::from_ref(&root), options());
    assert_eq!(backup().await.unwrap().files_new, 8);
    // Wreck every page after the first (SQLite's header stays valid, so
    // opening works; the first query fails).
    let mut bytes = std::fs::read(&cache).unwrap();
    assert!(bytes.len() > 4096, "{} bytes", bytes.len());
    for b in bytes.iter_mut().skip(4096) {
        *b = 0x5a;
    }
    std::fs::write(&cache, &bytes).unwrap();
    let damaged = backup().await.unwrap();
    assert_eq!((damaged.files_new, damaged.files_unchanged), (8, 0));
    assert!(
        damaged.warnings.iter().any(|w| w.contains("files cache")),
        "{:?}",
        damaged.warnings
    );
    assert!(!cache.exists(), "the damaged cache was not discarded");
    // The next backup starts a new cache, quietly; the one after uses it.
    let fresh = backup().await.unwrap();
    assert!(fresh.warnings.is_empty(), "{:?}", fresh.warnings);
    assert_eq!(fresh.files_new, 8);
    assert_eq!(backup().await.unwrap().files_unchanged, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_resumes_deletes_extras_and_restores_parts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    tree(&root);
    let repo = repo().await;
    let done = tessera_fs::backup(&repo, std::slice::from_ref(&root), BackupOptions::default())
        .await
        .unwrap();
    let out = dir.path().join("out");
    let first = tessera_fs::restore(
        &repo,
        &done.snapshot,
        &root,
        &out,
        RestoreOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(first.files, 8);
    assert!(first.bytes_written > 2_000_000);
    // Damage one file in the middle, keep its size; add an extra file.
    let three = out.join("a/b/three.txt");
    let mut bytes = std::fs::read(&three).unwrap();
    bytes[150_000] ^= 1;
    std::fs::write(&three, &bytes).unwrap();
    std::fs::write(out.join("a/extra"), b"not in the snapshot").unwrap();
    let again = tessera_fs::restore(
        &repo,
        &done.snapshot,
        &root,
        &out,
        RestoreOptions {
            delete: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        again.files_unchanged, 7,
        "only the damaged file is rewritten"
    );
    assert_eq!(
        again.bytes_written, 300_000,
        "only the damaged blob is written"
    );
    assert_eq!(again.deleted, 1);
    assert!(!out.join("a/extra").exists());
    assert_eq!(std::fs::read(&three).unwrap(), vec![3u8; 300_000]);
    // A sub-path, with an include pattern.
    let part = dir.path().join("part");
    let sub = root.join("a");
    let r = tessera_fs::restore(
        &repo,
        &done.snapshot,
        &sub,
        &part,
        RestoreOptions {
            include: vec!["*.txt".into()],
            exclude: vec!["three.txt".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.files, 1);
    assert!(part.join("one.txt").exists());
    assert!(!part.join("b/two.log").exists() && !part.join("b/three.txt").exists());
    // --delete with filters: entries the filters left out stay, and so does
    // what lies outside the included directories; inside them, what the
    // snapshot lacks goes.
    std::fs::write(out.join("a/b/two.log"), b"filtered out, kept").unwrap();
    std::fs::write(out.join("a/stray"), b"outside the included directory").unwrap();
    std::fs::write(out.join("a/b/stray"), b"inside it, not in the snapshot").unwrap();
    let filtered = tessera_fs::restore(
        &repo,
        &done.snapshot,
        &root,
        &out,
        RestoreOptions {
            include: vec!["/**/a/b".into()],
            exclude: vec!["*.log".into()],
            delete: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(filtered.deleted, 1);
    assert!(!out.join("a/b/stray").exists());
    assert!(out.join("a/stray").exists());
    assert_eq!(
        std::fs::read(out.join("a/b/two.log")).unwrap(),
        b"filtered out, kept"
    );
    assert!(out.join("a/b/three.txt").exists() && out.join("a/one.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_names_added_removed_modified_and_metadata_changes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    tree(&root);
    let repo = repo().await;
    let a = tessera_fs::backup(&repo, std::slice::from_ref(&root), BackupOptions::default())
        .await
        .unwrap();
    std::fs::write(root.join("a/new"), b"new").unwrap();
    std::fs::remove_file(root.join("huge")).unwrap();
    std::fs::write(root.join("a/b/two.log"), b"TWO!").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("a/one.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let b = tessera_fs::backup(&repo, std::slice::from_ref(&root), BackupOptions::default())
        .await
        .unwrap();
    let d = tessera_fs::diff(&repo, a.snapshot.tree, b.snapshot.tree)
        .await
        .unwrap();
    let r = format!("{}", root.display());
    let find = |p: &str| {
        d.iter()
            .find(|(x, _)| x == format!("{r}/{p}").as_bytes())
            .map(|x| x.1)
    };
    assert_eq!(find("a/new"), Some(DiffKind::Added));
    assert_eq!(find("huge"), Some(DiffKind::Removed));
    assert_eq!(find("a/b/two.log"), Some(DiffKind::Modified));
    assert_eq!(find("a/one.txt"), Some(DiffKind::Metadata));
    assert_eq!(find("a/b/three.txt"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changing_while_read_is_reported_and_not_cached() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    std::fs::create_dir_all(&root).unwrap();
    let grow = root.join("growing.log");
    std::fs::write(&grow, vec![7u8; 32 << 20]).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (grow, stop) = (grow.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(grow).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"more\n").unwrap();
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(5));
    let repo = repo().await;
    let cache = dir.path().join("files.db");
    let done = tessera_fs::backup(
        &repo,
        std::slice::from_ref(&root),
        BackupOptions {
            cache: Some(cache.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(
        done.warnings
            .iter()
            .any(|w| w.contains("growing.log") && w.contains("changed while being read")),
        "{:?}",
        done.warnings
    );
    assert_eq!(
        tessera_fs::FilesCache::open(&cache)
            .unwrap()
            .count()
            .unwrap(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_sharing_a_tree_are_each_walked_and_restored() {
    // Identical directories share one tree blob; the walk reuses listings
    // it has entered (and evicts them past its budget): every copy must
    // still be listed and restored, in order.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    for i in 0..300 {
        std::fs::create_dir_all(root.join(format!("empty{i:03}"))).unwrap();
        let same = root.join(format!("same{i:03}/inner"));
        std::fs::create_dir_all(&same).unwrap();
        std::fs::write(same.join("f.txt"), b"identical\n").unwrap();
    }
    let epoch = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    for p in tessera_walk(&root) {
        let f = std::fs::File::open(&p).unwrap();
        let times = std::fs::FileTimes::new()
            .set_accessed(epoch)
            .set_modified(epoch);
        f.set_times(times).unwrap();
    }
    let repo = repo().await;
    let done = tessera_fs::backup(&repo, std::slice::from_ref(&root), BackupOptions::default())
        .await
        .unwrap();
    let mut empty_trees = std::collections::HashSet::new();
    tessera_fs::walk_tree(&repo, done.snapshot.tree, b"/", |e| {
        if let tessera_core::NodeKind::Dir { subtree } = e.node.kind {
            if e.node.name.starts_with("empty") {
                empty_trees.insert(subtree);
            }
        }
        Ok(true)
    })
    .await
    .unwrap();
    assert_eq!(
        empty_trees.len(),
        1,
        "the 300 empty directories share one tree"
    );
    let listed = listing(&repo, &done.snapshot).await;
    let under = |prefix: &str| listed.iter().filter(|p| p.contains(prefix)).count();
    assert_eq!(under("/empty"), 300);
    assert_eq!(under("/f.txt"), 300);
    assert_eq!(
        under("/inner"),
        600,
        "300 directories and the files in them"
    );
    let out = tempfile::tempdir().unwrap();
    tessera_fs::restore(
        &repo,
        &done.snapshot,
        &root,
        out.path(),
        RestoreOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        crate::common::describe(out.path()),
        crate::common::describe(&root)
    );
}

/// Every path below `root`, deepest first (so setting a directory's time
/// comes after its entries were made).
fn tessera_walk(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_chain_thousands_deep_backs_up_and_restores() {
    // 3,000 levels (paths of 6 KB, beyond the kernel's limit), a file in
    // each: the walk's default 2 MiB stack overflowed at about 2,500 and
    // aborted the process.
    const DEPTH: usize = 3000;
    // One descriptor per level (as the CLI does at start).
    tessera_fs::raise_open_file_limit();
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("deep");
    std::fs::create_dir(&root).unwrap();
    let mode = rustix::fs::Mode::from_bits_truncate(0o755);
    let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY;
    let mut dir = rustix::fs::open(&root, flags, mode).unwrap();
    for i in 0..DEPTH {
        let f = rustix::fs::openat(
            &dir,
            "f",
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CREATE,
            mode,
        )
        .unwrap();
        rustix::io::write(&f, format!("level {i}").as_bytes()).unwrap();
        rustix::fs::mkdirat(&dir, "d", mode).unwrap();
        dir = rustix::fs::openat(&dir, "d", flags, mode).unwrap();
    }
    drop(dir);
    let repo = repo().await;
    let done = tessera_fs::backup(&repo, std::slice::from_ref(&root), BackupOptions::default())
        .await
        .unwrap();
    assert!(done.warnings.is_empty(), "{:?}", done.warnings);
    assert_eq!(done.files_new, DEPTH as u64);
    let target = scratch.path().join("restored");
    let summary = tessera_fs::restore(
        &repo,
        &done.snapshot,
        &root,
        &target,
        RestoreOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((summary.files, summary.dirs), (DEPTH as u64, DEPTH as u64));
    // The deepest file holds its own bytes (read piece by piece: its path
    // is too long to open in one call).
    let mut dir = rustix::fs::open(&target, flags, mode).unwrap();
    for _ in 0..DEPTH - 1 {
        dir = rustix::fs::openat(&dir, "d", flags, mode).unwrap();
    }
    let f = rustix::fs::openat(&dir, "f", rustix::fs::OFlags::RDONLY, mode).unwrap();
    let mut buf = [0u8; 32];
    let n = rustix::io::read(&f, &mut buf).unwrap();
    assert_eq!(&buf[..n], format!("level {}", DEPTH - 1).as_bytes());
    // Removing a path this deep needs *at calls too: leave it to rm.
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(scratch.path())
        .status();
}
