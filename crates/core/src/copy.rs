//! `copy`: a snapshot into another repository (3-2-1: a local repository
//! and an offsite one), storing there only the blobs it lacks.
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
use crate::tree::{NodeKind, Tree};

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
        let entries = Walk {
            source: self.clone(),
            runtime: tokio::runtime::Handle::current(),
            known,
            stack: vec![(root, 0)],
            failed: failed.clone(),
        };
        let stored = target.store_tree(entries, None).await;
        if let Some(e) = failed.lock().map_err(|_| poisoned())?.take() {
            return Err(e);
        }
        let stored = stored?;
        let options = BackupOptions {
            time: Some(snap.time),
            hostname: Some(snap.hostname.clone()),
            tags: snap.tags.clone(),
            username: Some(snap.username.clone()),
            paths: snap.paths.clone(),
            source_kind: Some(snap.source_kind.clone()),
            source_meta: snap.source_meta.clone(),
            progress: None,
        };
        target.commit_snapshot(stored, options).await
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
    failed: FirstError,
}

impl Walk {
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
        let depth = self.stack.len();
        let (tree, next) = self.stack.last_mut()?;
        let Some(node) = tree.nodes.get(*next).cloned() else {
            self.stack.pop();
            // The root tree has no Dir entry of its own to close.
            return if depth > 1 {
                Some(Entry::EndDir)
            } else {
                self.next()
            };
        };
        *next += 1;
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
                        Some(Entry::Dir {
                            name,
                            meta: node.meta,
                        })
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
