//! `copy`: a snapshot into another repository (3-2-1: a local repository
//! and an offsite one), storing there only the blobs it lacks; and
//! `repair snapshots`, the same walk into the same repository, leaving
//! out what was lost.
//!
//! The snapshot's trees are walked and replayed into the target as a new
//! backup whose files come as ready-cut chunks: nothing is re-chunked, and
//! metadata is carried as it is. When both repositories name blobs alike
//! (the target was made with `init --copy-params-from`), a file whose
//! chunks the target already holds is not read at all, and the copy's
//! trees have the ids of the original's. Otherwise every chunk is read
//! and named anew in the target, which still stores each once.

use std::sync::{Arc, Mutex};

use crate::backup::{BackupOptions, BackupSummary, Content, Entry, KnownBlobs};
use crate::error::{Error, Result};
use crate::id::BlobId;
use crate::repo::{Repository, poisoned};
use crate::snapshot::SnapshotEntry;
use crate::tree::{Node, NodeKind, Tree};

/// The first error met while the target pulls entries (an iterator cannot
/// return one): the copy fails with it and commits nothing.
type FirstError = Arc<Mutex<Option<Error>>>;

impl Repository {
    /// Copies `entry` (a snapshot of this repository) into `target`;
    /// returns the target's new snapshot. Time, host, user, tags, paths,
    /// kind and adapter metadata are kept.
    ///
    /// # Errors
    /// Reading the source (missing or corrupt objects, named), writing the
    /// target. On error the target gets no snapshot (at worst unreferenced
    /// packs).
    pub async fn copy_snapshot(
        &self,
        target: &Repository,
        entry: &SnapshotEntry,
    ) -> Result<BackupSummary> {
        let snap = &entry.snapshot;
        let root = self
            .read_tree(snap.tree, &format!("snapshot {}", entry.id.short()))
            .await?;
        let known = if self.shares_ids_with(target) {
            Some(target.known_blobs().await?)
        } else {
            None
        };
        let failed: FirstError = Arc::new(Mutex::new(None));
        let entries = Walk::new(self, root, known, failed.clone());
        let stored = target.store_tree(entries, None).await;
        let first_error = failed.lock().map_err(|_| poisoned())?.take();
        if let Some(e) = first_error {
            if let Ok(tree) = stored {
                target.abandon_tree(tree).await;
            }
            return Err(e);
        }
        target.commit_snapshot(stored?, same_as(entry)).await
    }

    /// Rewrites a snapshot that lost data (blobs missing from the index,
    /// trees that do not read): files with lost data and unreadable
    /// directories are left out, everything else is kept as it is, and
    /// the new snapshot gets the original's time, host, user, paths and
    /// tags plus the tag `repaired`. Returns `None` for an intact
    /// snapshot. The original stays: remove it with
    /// [`Repository::forget_snapshot`] once the repair is committed.
    ///
    /// # Errors
    /// The root tree cannot be read (nothing to salvage); storage errors.
    pub async fn repair_snapshot(&self, entry: &SnapshotEntry) -> Result<Option<RepairedSnapshot>> {
        let root = self
            .read_tree(
                entry.snapshot.tree,
                &format!("snapshot {}", entry.id.short()),
            )
            .await?;
        let failed: FirstError = Arc::new(Mutex::new(None));
        let left_out = Arc::new(Mutex::new(Vec::new()));
        let mut walk = Walk::new(self, root, Some(self.known_blobs().await?), failed.clone());
        walk.left_out = Some(left_out.clone());
        let stored = self.store_tree(walk, None).await;
        let first_error = failed.lock().map_err(|_| poisoned())?.take();
        if let Some(e) = first_error {
            if let Ok(tree) = stored {
                self.abandon_tree(tree).await;
            }
            return Err(e);
        }
        let stored = stored?;
        let left_out = std::mem::take(&mut *left_out.lock().map_err(|_| poisoned())?);
        if left_out.is_empty() {
            // Nothing lost: the same trees, already stored.
            self.abandon_tree(stored).await;
            return Ok(None);
        }
        let mut options = same_as(entry);
        if !options.tags.iter().any(|t| t == REPAIRED_TAG) {
            options.tags.push(REPAIRED_TAG.to_string());
        }
        let snapshot = self.commit_snapshot(stored, options).await?;
        Ok(Some(RepairedSnapshot { snapshot, left_out }))
    }
}

/// Tag of a snapshot rewritten by [`Repository::repair_snapshot`].
pub const REPAIRED_TAG: &str = "repaired";

/// A snapshot rewritten without what was lost.
#[derive(Clone, Debug)]
pub struct RepairedSnapshot {
    /// The new snapshot.
    pub snapshot: BackupSummary,
    /// Paths left out, each with the reason.
    pub left_out: Vec<String>,
}

/// Backup options that give a new snapshot the original's identity.
fn same_as(entry: &SnapshotEntry) -> BackupOptions {
    let snap = &entry.snapshot;
    BackupOptions {
        time: Some(snap.time),
        hostname: Some(snap.hostname.clone()),
        tags: snap.tags.clone(),
        username: Some(snap.username.clone()),
        paths: snap.paths.clone(),
        source_kind: Some(snap.source_kind.clone()),
        source_meta: snap.source_meta.clone(),
        progress: None,
    }
}

/// A depth-first walk of the source's trees, as backup entries. Runs on
/// the target's reading thread (outside the runtime), so it blocks on the
/// source's async reads.
struct Walk {
    source: Repository,
    runtime: tokio::runtime::Handle,
    known: Option<KnownBlobs>,
    /// Open trees and the index of their next node.
    stack: Vec<(Tree, usize)>,
    /// Names of the open directories below the root.
    path: Vec<String>,
    failed: FirstError,
    /// Repairing (the target is the source): what cannot be read is left
    /// out and its path recorded here, instead of failing the walk.
    left_out: Option<Arc<Mutex<Vec<String>>>>,
}

impl Walk {
    fn new(source: &Repository, root: Tree, known: Option<KnownBlobs>, failed: FirstError) -> Self {
        Walk {
            source: source.clone(),
            runtime: tokio::runtime::Handle::current(),
            known,
            stack: vec![(root, 0)],
            path: Vec::new(),
            failed,
            left_out: None,
        }
    }

    /// Records `name` (in the open directory) as left out, with why.
    fn leave_out(&self, name: &str, why: &str) {
        if let Some(list) = &self.left_out {
            let mut path = String::new();
            for n in self.path.iter().map(String::as_str).chain([name]) {
                path.push('/');
                path.push_str(n);
            }
            if let Ok(mut l) = list.lock() {
                l.push(format!("{path}: {why}"));
            }
        }
    }

    fn fail(&mut self, e: Error) -> Option<Entry> {
        if let Ok(mut slot) = self.failed.lock() {
            slot.get_or_insert(e);
        }
        self.stack.clear();
        None
    }
}

impl Iterator for Walk {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        // A loop, not recursion: a repair may leave out many entries in a row.
        loop {
            let depth = self.stack.len();
            let (tree, next) = self.stack.last_mut()?;
            let Some(node) = tree.nodes.get(*next).cloned() else {
                self.stack.pop();
                self.path.pop();
                // The root tree has no Dir entry of its own to close.
                if depth > 1 {
                    return Some(Entry::EndDir);
                }
                continue;
            };
            *next += 1;
            if let Some(entry) = self.entry(node) {
                return Some(entry);
            }
            if self.stack.is_empty() {
                return None;
            }
        }
    }
}

impl Walk {
    /// The entry for `node`, or `None` when it is left out (or the walk failed).
    fn entry(&mut self, node: Node) -> Option<Entry> {
        let name = node.name.clone().into_bytes();
        match node.kind {
            NodeKind::Dir { subtree } => {
                let referrer = format!("directory {:?}", node.name);
                match self
                    .runtime
                    .block_on(self.source.read_tree(subtree, &referrer))
                {
                    Ok(t) => {
                        self.stack.push((t, 0));
                        self.path.push(node.name);
                        Some(Entry::Dir {
                            name,
                            meta: node.meta,
                        })
                    }
                    Err(e) if self.left_out.is_some() => {
                        self.leave_out(&node.name, &format!("directory left out: {e}"));
                        None
                    }
                    Err(e) => self.fail(e),
                }
            }
            NodeKind::Leaf => Some(Entry::Leaf {
                name,
                meta: node.meta,
            }),
            NodeKind::Stream { content } => {
                let held = self
                    .known
                    .as_ref()
                    .is_some_and(|k| k.contains_all(&content));
                if !held && self.left_out.is_some() {
                    self.leave_out(&node.name, "file left out: some of its data is lost");
                    return None;
                }
                let content = if held {
                    Content::Stored {
                        content,
                        size: node.size,
                    }
                } else {
                    Content::Chunks(Box::new(Chunks {
                        source: self.source.clone(),
                        runtime: self.runtime.clone(),
                        ids: content.into_iter(),
                        name: node.name.clone(),
                        failed: self.failed.clone(),
                    }))
                };
                Some(Entry::File {
                    name,
                    meta: node.meta,
                    content,
                    on_stored: None,
                })
            }
        }
    }
}

/// A file's chunks, read from the source one by one.
struct Chunks {
    source: Repository,
    runtime: tokio::runtime::Handle,
    ids: std::vec::IntoIter<BlobId>,
    name: String,
    failed: FirstError,
}

impl Iterator for Chunks {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        let id = self.ids.next()?;
        let referrer = format!("file {:?}", self.name);
        match self.runtime.block_on(self.source.read_blob(id, &referrer)) {
            Ok(plain) => Some(Ok(plain)),
            Err(e) => {
                let message = e.to_string();
                if let Ok(mut slot) = self.failed.lock() {
                    slot.get_or_insert(e);
                }
                self.ids = Vec::new().into_iter();
                Some(Err(std::io::Error::other(message)))
            }
        }
    }
}
