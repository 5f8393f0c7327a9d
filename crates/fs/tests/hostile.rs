//! Hostile repositories: snapshots a compromised host holding the key could
//! write (through the library's own API, its tree checks switched off with
//! `forge_trees`), restored into a target inside a scratch directory. Each
//! case proves that nothing outside the target changed (every other entry
//! of the scratch directory listed with its metadata and content hash,
//! before and after) and that a refused entry is named.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tessera_core::{BackupOptions, Content, Entry, Repository, Snapshot};
use tessera_fs::{FileKind, FsMeta, RestoreOptions, Time};

use crate::common::repo;

/// One forged entry of a snapshot, depth-first like `Entry`.
enum E {
    Dir(&'static [u8], Vec<E>),
    File(&'static [u8], &'static [u8]),
    Link(&'static [u8], &'static [u8]),
    /// A file (content) or directory (`None`) with a hard-link identity.
    Linked(&'static [u8], Option<&'static [u8]>, (u64, u64)),
}

fn meta(kind: FileKind, size: u64) -> FsMeta {
    FsMeta {
        kind,
        mode: if kind == FileKind::Dir { 0o777 } else { 0o666 },
        uid: 4242,
        gid: 4242,
        user: None,
        group: None,
        mtime: Time(1, 0),
        atime: Time(1, 0),
        size,
        extents: None,
        target: None,
        rdev: None,
        hardlink: None,
        xattrs: Vec::new(),
    }
}

fn entries(list: Vec<E>, out: &mut Vec<Entry>) {
    for e in list {
        match e {
            E::Dir(name, inside) => {
                out.push(Entry::Dir {
                    name: name.to_vec(),
                    meta: meta(FileKind::Dir, 0).to_meta(),
                });
                entries(inside, out);
                out.push(Entry::EndDir);
            }
            E::File(name, data) => out.push(file(name, data, None)),
            E::Link(name, to) => {
                let mut m = meta(FileKind::Symlink, 0);
                m.target = Some(to.to_vec());
                out.push(Entry::Leaf {
                    name: name.to_vec(),
                    meta: m.to_meta(),
                });
            }
            E::Linked(name, Some(data), (dev, ino)) => {
                out.push(file(name, data, Some((dev, ino, 2))))
            }
            E::Linked(name, None, (dev, ino)) => {
                let mut m = meta(FileKind::Dir, 0);
                m.hardlink = Some((dev, ino, 2));
                out.push(Entry::Dir {
                    name: name.to_vec(),
                    meta: m.to_meta(),
                });
                out.push(Entry::EndDir);
            }
        }
    }
}

fn file(name: &[u8], data: &'static [u8], hardlink: Option<(u64, u64, u64)>) -> Entry {
    let mut m = meta(FileKind::File, data.len() as u64);
    m.hardlink = hardlink;
    Entry::File {
        name: name.to_vec(),
        meta: m.to_meta(),
        content: Content::Read(Box::new(data)),
        on_stored: None,
    }
}

/// A path's bytes for a forged entry (entries borrow `'static` names).
fn leaked(path: &Path) -> &'static [u8] {
    Box::leak(
        path.as_os_str()
            .as_encoded_bytes()
            .to_vec()
            .into_boxed_slice(),
    )
}

/// Writes a filesystem snapshot of `list` exactly as given.
async fn forge(repo: &Repository, list: Vec<E>) -> Snapshot {
    let mut all = Vec::new();
    entries(list, &mut all);
    repo.forge_trees(true);
    let stored = repo.store_tree(all.into_iter(), None).await.unwrap();
    repo.forge_trees(false);
    let options = BackupOptions {
        source_kind: Some(tessera_fs::SOURCE_KIND.into()),
        paths: vec!["/forged".into()],
        ..Default::default()
    };
    repo.commit_snapshot(stored, options)
        .await
        .unwrap()
        .snapshot
}

/// A scratch directory: `outside/` (a victim file, a victim directory with
/// a file in it) beside the restore's `target/`.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(outside.join("x")).unwrap();
        std::fs::write(outside.join("victim.txt"), b"keep me").unwrap();
        std::fs::write(outside.join("x/inner.txt"), b"keep me too").unwrap();
        std::fs::create_dir(dir.path().join("target")).unwrap();
        Scratch { dir }
    }

    fn target(&self) -> PathBuf {
        self.dir.path().join("target")
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside")
    }

    /// Every entry of the scratch directory but the target's contents:
    /// kind, mode, owner, size, times, content hash or symlink target. The
    /// scratch directory itself is included, the target by its kind only.
    fn fingerprint(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        let root = self.dir.path();
        describe(root, root, &self.target(), &mut out);
        out
    }
}

fn describe(root: &Path, path: &Path, target: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let m = std::fs::symlink_metadata(path).unwrap();
    if path == target {
        // The target is the restore's to change; only that it is still a
        // directory (not a link to elsewhere) matters here.
        let kind = if m.file_type().is_symlink() {
            "link"
        } else {
            "dir"
        };
        out.insert(PathBuf::from("target"), kind.to_string());
        return;
    }
    let what = if m.file_type().is_symlink() {
        format!("link {:?}", std::fs::read_link(path).unwrap())
    } else if m.is_file() {
        format!("file {}", blake3::hash(&std::fs::read(path).unwrap()))
    } else {
        "dir".to_string()
    };
    out.insert(
        path.strip_prefix(root).unwrap().to_path_buf(),
        format!(
            "{what} mode {:o} owner {}:{} size {} mtime {}.{} links {}",
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.nlink()
        ),
    );
    if m.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            describe(root, &p, target, out);
        }
    }
}

async fn restore(repo: &Repository, snap: &Snapshot, scratch: &Scratch, delete: bool) -> String {
    let options = RestoreOptions {
        delete,
        ..Default::default()
    };
    match tessera_fs::restore(repo, snap, Path::new("/"), &scratch.target(), options).await {
        Ok(summary) if summary.damaged.is_empty() => {
            format!("ok, warnings: {:?}", summary.warnings)
        }
        Ok(summary) => format!("damaged: {}", summary.damaged.join("; ")),
        Err(e) => format!("error: {e}"),
    }
}

/// Restores each snapshot of `snaps` in turn (the earlier ones are benign
/// set-ups); returns what the last said, after checking the outside.
async fn restore_all(repo: &Repository, snaps: &[Snapshot], delete: bool) -> (Scratch, String) {
    let scratch = Scratch::new();
    let said = restore_into(repo, snaps, delete, &scratch).await;
    (scratch, said)
}

/// [`restore_all`] into a given scratch directory.
async fn restore_into(
    repo: &Repository,
    snaps: &[Snapshot],
    delete: bool,
    scratch: &Scratch,
) -> String {
    let before = scratch.fingerprint();
    let mut said = String::new();
    for snap in snaps {
        said = restore(repo, snap, scratch, delete).await;
    }
    let after = scratch.fingerprint();
    assert_eq!(
        before, after,
        "something outside the target changed ({said})"
    );
    said
}

/// A forged snapshot whose tree breaks the naming rules: restore refuses
/// it naming the entry (the whole restore when the root tree is bad, the
/// bad directory's entries, listed as damaged, when a tree below is), and
/// check reports snapshot, path and entry.
async fn refused(list: Vec<E>, entry: &str, at: &str) {
    let repo = repo().await;
    let snap = forge(&repo, list).await;
    let (_, said) = restore_all(&repo, std::slice::from_ref(&snap), false).await;
    let shown = format!("{entry:?}");
    let refused = said.starts_with("error:") || said.starts_with("damaged:");
    assert!(refused && said.contains(&shown), "{said}");
    let report = repo.check(false).await.unwrap();
    let id = repo.snapshots().await.unwrap()[0].id.to_hex();
    let error = report.errors.join("\n");
    assert!(
        error.contains(&shown) && error.contains(&id[..8]) && error.contains(at),
        "check said: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_named_dot_dot_is_refused() {
    refused(
        vec![E::Dir(b"..", vec![E::File(b"pwned", b"x")])],
        "..",
        "the root of snapshot",
    )
    .await;
    refused(
        vec![E::Dir(
            b"sub",
            vec![E::Dir(b"..", vec![E::File(b"pwned", b"x")])],
        )],
        "..",
        "/sub",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_slashes_absolute_or_with_nul_are_refused() {
    for name in [
        &b"../../x/escaped.txt"[..],
        b"/abs/escaped.txt",
        b"a/b",
        b"nul\0byte",
    ] {
        let name: &'static [u8] = Box::leak(name.to_vec().into_boxed_slice());
        let shown = String::from_utf8_lossy(name).into_owned();
        refused(vec![E::File(name, b"x")], &shown, "the root of snapshot").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_and_dot_dot_as_symlinks_or_files_are_refused() {
    refused(vec![E::Link(b"..", b"/")], "..", "the root").await;
    refused(vec![E::File(b"..", b"")], "..", "the root").await;
    refused(vec![E::File(b".", b"")], ".", "the root").await;
    refused(vec![E::File(b"", b"x")], "", "the root").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_and_a_directory_of_one_name_are_refused() {
    let repo = repo().await;
    let outside: &'static [u8] = b"/tmp";
    for (link, to) in [(&b"d"[..], outside), (b"up", b"../..")] {
        let snap = forge(
            &repo,
            vec![
                E::Link(link, to),
                E::Dir(link, vec![E::File(b"x", b"through the link")]),
            ],
        )
        .await;
        let (_, said) = restore_all(&repo, std::slice::from_ref(&snap), false).await;
        let shown = format!("{:?}", String::from_utf8_lossy(link));
        assert!(
            said.contains("given twice") && said.contains(&shown),
            "{said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_left_by_one_snapshot_is_not_followed_by_the_next() {
    // Snapshot 1 leaves d -> outside (and up -> ../.., f -> the victim)
    // in the target; snapshot 2 has directories and a file of those names.
    let repo = repo().await;
    for delete in [false, true] {
        let scratch = Scratch::new();
        let outside = scratch.outside();
        let victim = outside.join("victim.txt");
        let to_outside: &'static [u8] = leaked(&outside);
        let to_victim: &'static [u8] = leaked(&victim);
        let first = forge(
            &repo,
            vec![
                E::Link(b"d", to_outside),
                E::Link(b"f", to_victim),
                E::Link(b"up", b"../.."),
            ],
        )
        .await;
        let second = forge(
            &repo,
            vec![
                E::Dir(b"d", vec![E::File(b"x", b"written through d?")]),
                E::File(b"f", b"written through f?"),
                E::Dir(b"up", vec![E::Dir(b"outside", vec![E::File(b"y", b"y")])]),
            ],
        )
        .await;
        let said = restore_into(&repo, &[first, second], delete, &scratch).await;
        assert!(said.starts_with("ok"), "{said}");
        let t = scratch.target();
        assert_eq!(std::fs::read(t.join("d/x")).unwrap(), b"written through d?");
        assert_eq!(std::fs::read(t.join("f")).unwrap(), b"written through f?");
        assert!(
            !std::fs::symlink_metadata(t.join("up"))
                .unwrap()
                .is_symlink()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_replaced_by_a_directory_and_back_stays_inside() {
    let repo = repo().await;
    let first = forge(&repo, vec![E::File(b"f", b"file"), E::Dir(b"g", vec![])]).await;
    let second = forge(
        &repo,
        vec![
            E::Dir(b"f", vec![E::File(b"inner", b"inner")]),
            E::File(b"g", b"now a file"),
        ],
    )
    .await;
    let (scratch, said) = restore_all(&repo, &[first, second], true).await;
    assert!(said.starts_with("ok"), "{said}");
    let t = scratch.target();
    assert_eq!(std::fs::read(t.join("f/inner")).unwrap(), b"inner");
    assert_eq!(std::fs::read(t.join("g")).unwrap(), b"now a file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_links_never_reach_outside_or_a_directory() {
    let repo = repo().await;
    // A symlink to a file outside, then a hard-link member of it; a file
    // whose group's first member is a directory; a file linked to a file.
    let scratch = Scratch::new();
    let victim = scratch.outside().join("victim.txt");
    let to_victim: &'static [u8] = leaked(&victim);
    let mut link_meta = meta(FileKind::Symlink, 0);
    link_meta.target = Some(to_victim.to_vec());
    link_meta.hardlink = Some((1, 1, 2));
    let mut all = vec![Entry::Leaf {
        name: b"a-link".to_vec(),
        meta: link_meta.to_meta(),
    }];
    entries(
        vec![
            E::Linked(b"b-file", Some(b""), (1, 1)),
            E::Linked(b"c-dir", None, (2, 2)),
            E::Linked(b"d-file", Some(b"d"), (2, 2)),
            E::Linked(b"e-one", Some(b"same"), (3, 3)),
            E::Linked(b"f-two", Some(b"same"), (3, 3)),
        ],
        &mut all,
    );
    repo.forge_trees(true);
    let stored = repo.store_tree(all.into_iter(), None).await.unwrap();
    repo.forge_trees(false);
    let snap = repo
        .commit_snapshot(
            stored,
            BackupOptions {
                source_kind: Some(tessera_fs::SOURCE_KIND.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .snapshot;
    let said = restore_into(&repo, std::slice::from_ref(&snap), false, &scratch).await;
    assert!(said.starts_with("ok"), "{said}");
    let t = scratch.target();
    let ino = |p: &str| std::fs::symlink_metadata(t.join(p)).unwrap().ino();
    assert!(
        std::fs::symlink_metadata(t.join("a-link"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(std::fs::read(t.join("b-file")).unwrap(), b"");
    assert_ne!(ino("a-link"), ino("b-file"));
    assert!(std::fs::symlink_metadata(t.join("c-dir")).unwrap().is_dir());
    assert_eq!(std::fs::read(t.join("d-file")).unwrap(), b"d");
    assert_eq!(ino("e-one"), ino("f-two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_refuses_what_the_readers_refuse() {
    let repo = repo().await;
    for bad in [&b".."[..], b".", b"", b"a/b", b"n\0"] {
        let err = repo
            .store_tree(
                vec![Entry::Leaf {
                    name: bad.to_vec(),
                    meta: meta(FileKind::Fifo, 0).to_meta(),
                }]
                .into_iter(),
                None,
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("one path component"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_planted_while_the_restore_runs_is_never_followed() {
    // Another process keeps swapping the directory `d` for a symlink to
    // the outside while the restore creates `d` and writes into it.
    let repo = repo().await;
    let files: Vec<E> = (0..300)
        .map(|i| {
            let name: &'static [u8] = Box::leak(format!("f{i:03}").into_bytes().into_boxed_slice());
            E::File(name, b"planted?")
        })
        .collect();
    let snap = forge(&repo, vec![E::Dir(b"d", files)]).await;
    let scratch = Scratch::new();
    let before = scratch.fingerprint();
    let (t, outside) = (scratch.target(), scratch.outside());
    for _ in 0..20 {
        for e in std::fs::read_dir(&t).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, d, outside) = (stop.clone(), t.join("d"), outside.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let moved = d.with_extension("moved");
                    if std::fs::rename(&d, &moved).is_ok() {
                        let _ = std::os::unix::fs::symlink(&outside, &d);
                        std::thread::yield_now();
                        let _ = std::fs::remove_file(&d);
                        let _ = std::fs::rename(&moved, &d);
                    }
                }
            })
        };
        let _ = restore(&repo, &snap, &scratch, false).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        assert_eq!(
            before,
            scratch.fingerprint(),
            "a file was written through the planted link"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_trees_multiply_is_refused_before_it_is_planned() {
    // Seven nested directories, each named ten times in its parent and
    // all sharing one tree: eight small trees that expand to ten million
    // files.
    let repo = repo().await;
    let mut list = vec![E::File(b"f", b"x")];
    for _ in 0..7 {
        list = vec![E::Dir(b"d", list)];
    }
    repo.forge_dir_copies(10);
    let snap = forge(&repo, list).await;
    repo.forge_dir_copies(1);
    let (scratch, said) = restore_all(&repo, std::slice::from_ref(&snap), false).await;
    assert!(
        said.starts_with("error:") && said.contains("expand to more than"),
        "{said}"
    );
    // Refused while planning: nothing was created.
    assert_eq!(std::fs::read_dir(scratch.target()).unwrap().count(), 0);
    // Listing it is not refused (it holds nothing per entry): the first
    // entries come.
    let mut seen = 0;
    let stop = tessera_fs::walk_tree(&repo, snap.tree, b"/", |_| {
        seen += 1;
        if seen == 100_000 {
            return Err(tessera_fs::Error::Invalid("enough".into()));
        }
        Ok(true)
    })
    .await;
    assert!(stop.is_err() && seen == 100_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_nested_thousands_deep_restores_whole() {
    // Deeper than the directories restore keeps open and than the
    // ancestors it looks through: every path of it is resolved anew
    // from the target now and then. A file at every 1,000th level.
    const DEPTH: usize = 3000;
    let repo = repo().await;
    let mut all = Vec::new();
    for level in 0..DEPTH {
        all.push(Entry::Dir {
            name: b"d".to_vec(),
            meta: meta(FileKind::Dir, 0).to_meta(),
        });
        if level % 1000 == 999 {
            all.push(file(b"f", b"deep", None));
        }
    }
    all.extend((0..DEPTH).map(|_| Entry::EndDir));
    let stored = repo.store_tree(all.into_iter(), None).await.unwrap();
    let options = BackupOptions {
        source_kind: Some(tessera_fs::SOURCE_KIND.into()),
        ..Default::default()
    };
    let snap = repo
        .commit_snapshot(stored, options)
        .await
        .unwrap()
        .snapshot;
    let scratch = Scratch::new();
    let said = restore_into(&repo, std::slice::from_ref(&snap), false, &scratch).await;
    assert!(said.starts_with("ok"), "{said}");
    // Walk it back with *at calls (the path is longer than PATH_MAX).
    let mut dir = rustix::fs::open(
        scratch.target(),
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut files = 0;
    for _ in 0..DEPTH {
        let st = rustix::fs::statat(&dir, "d", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
        assert_eq!(
            st.st_mode & 0o7777,
            0o777,
            "directory metadata set at every level"
        );
        dir = rustix::fs::openat(
            &dir,
            "d",
            rustix::fs::OFlags::PATH,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        if rustix::fs::statat(&dir, "f", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            files += 1;
        }
    }
    assert_eq!(files, DEPTH / 1000);
    // rm -rf of a path this deep needs *at calls too: leave it to a shell.
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(scratch.dir.path())
        .status();
}
