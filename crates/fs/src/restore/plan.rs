//! Step 1 of a restore: walk the snapshot (or the part asked for), apply
//! the include and exclude patterns, and list every entry to restore.
//!
//! An entry is kept as its parent directory's number and its own name,
//! never as a full path: a tree nested 20,000 deep then takes memory in
//! proportion to its entries, not to the sum of their path lengths (which
//! was 400 MB), and paths are only built for messages.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use ignore::Match;
use ignore::gitignore::Gitignore;
use tessera_core::{BlobId, Node, NodeKind, Repository, Snapshot};

use super::{RestoreOptions, io_err};
use crate::Error;
use crate::beneath::{Dirs, Target};
use crate::meta::{FileKind, FsMeta};
use crate::paths::{display, patterns};
use crate::snapshot_tree::{TreeEntry, WalkRules, find_node, walk};

/// One entry to restore.
pub(super) struct Item {
    /// The directory it goes into (an item's number; `None`: the target).
    pub parent: Option<usize>,
    /// Its name there (one path component).
    pub name: Box<[u8]>,
    pub kind: FileKind,
    pub meta: FsMeta,
    pub content: Vec<BlobId>,
    /// For a later member of a hard-link group: the item it links to.
    pub link_to: Option<usize>,
    /// Directories above it below the target.
    pub depth: usize,
}

/// Everything a restore will do, before it does any of it.
pub(super) struct Plan {
    /// The target's path (absolute, resolved).
    pub target: Vec<u8>,
    /// Parents before their entries.
    pub items: Vec<Item>,
    /// Where the restore started: `None` for the snapshot's root.
    pub start: Option<Node>,
    /// For `--delete`: the directories restored whole (`None`: the target).
    pub covered: Vec<Option<usize>>,
    /// For `--delete`: per directory, every name the snapshot has there
    /// (restored or left out by the patterns).
    pub in_snapshot: HashMap<Option<usize>, HashSet<Box<[u8]>>>,
    /// Directories whose entries could not be read (a damaged tree), why.
    pub lost_dirs: Vec<(usize, String)>,
}

impl Dirs for Plan {
    fn parent(&self, dir: usize) -> Option<usize> {
        self.items.get(dir).and_then(|i| i.parent)
    }

    fn name(&self, dir: usize) -> &[u8] {
        self.items.get(dir).map_or(&[][..], |i| &i.name[..])
    }
}

impl Plan {
    /// The target path of item `at` (`None`: the target), for messages.
    pub fn path(&self, at: Option<usize>) -> Vec<u8> {
        let mut p = self.target.clone();
        if let Some(i) = at {
            if !p.ends_with(b"/") {
                p.push(b'/');
            }
            p.extend_from_slice(&self.rel_path(i));
        }
        p
    }

    /// [`Plan::path`] of item `at`, lossy, for messages.
    pub fn show(&self, at: usize) -> String {
        display(&self.path(Some(at)))
    }
}

/// The directory item `idx` goes into, open, and its name there.
pub(super) fn parent_of<'p>(
    root: &Target,
    plan: &'p Plan,
    idx: usize,
) -> Result<(Arc<OwnedFd>, &'p [u8]), Error> {
    let item = plan
        .items
        .get(idx)
        .ok_or_else(|| Error::Internal(format!("restore item {idx} unknown")))?;
    let dir = root.dir(plan, item.parent).map_err(|e| {
        io_err(
            &plan.path(Some(idx)),
            "opening its directory beneath the target",
            e,
        )
    })?;
    Ok((dir, &item.name))
}

/// The pattern set, or `None` for no patterns (so "include" means all).
fn matcher(list: &[String]) -> Result<Option<Gitignore>, Error> {
    (!list.is_empty()).then(|| patterns(list)).transpose()
}

/// A pattern match as a state a directory hands down to its entries:
/// `Some(true)` included, `Some(false)` re-included by a `!` pattern,
/// `None` not matched.
fn state<T>(m: Match<T>) -> Option<bool> {
    match m {
        Match::None => None,
        Match::Ignore(_) => Some(true),
        Match::Whitelist(_) => Some(false),
    }
}

/// Plans restoring `path` of `snapshot` into `target` (see
/// [`super::restore`]).
pub(super) async fn plan(
    repo: &Repository,
    snapshot: &Snapshot,
    path: &Path,
    target: Vec<u8>,
    options: &RestoreOptions,
) -> Result<Plan, Error> {
    let start = find_node(repo, snapshot, path).await?;
    let start_path = path.as_os_str().as_bytes().to_vec();
    let include = matcher(&options.include)?;
    // An entry is included when it or its nearest matched ancestor
    // matches (as `matched_path_or_any_parents`): each directory hands
    // its state down, so a path is matched once, not once per ancestor.
    let inherited = match (&include, &start) {
        (Some(m), Some(_)) => {
            state(m.matched_path_or_any_parents(OsStr::from_bytes(&start_path), true))
        }
        _ => None,
    };
    let b = RefCell::new(Builder {
        plan: Plan {
            target,
            items: Vec::new(),
            start: None,
            covered: Vec::new(),
            in_snapshot: HashMap::new(),
            lost_dirs: Vec::new(),
        },
        exclude: matcher(&options.exclude)?,
        include,
        delete: options.delete,
        parents: vec![(None, inherited)],
        keep: Vec::new(),
    });
    if b.borrow().include.is_none() {
        b.borrow_mut().plan.covered.push(None);
    }
    let rules = WalkRules {
        past_damage: true,
        bounded: true,
    };
    let visit = |e: &TreeEntry| b.borrow_mut().add(e);
    let lost = |e: &TreeEntry, why: &str| {
        let tree = match e.node.kind {
            NodeKind::Dir { subtree } => subtree.to_hex(),
            _ => String::new(),
        };
        b.borrow_mut().lose(&format!("(tree {tree}): {why}"));
    };
    match &start {
        None => walk(repo, snapshot.tree, b"/", rules, visit, lost).await?,
        Some(node) => match &node.kind {
            NodeKind::Dir { subtree } => {
                walk(repo, *subtree, &start_path, rules, visit, lost).await?
            }
            _ => {
                let meta = FsMeta::from_meta(&node.meta).ok();
                let mut b = b.borrow_mut();
                b.add(&TreeEntry {
                    path: &start_path,
                    node,
                    meta: meta.as_ref(),
                    depth: 0,
                })?;
                // One file restored into the target: the target's other
                // entries are not its business.
                b.plan.covered.clear();
            }
        },
    }
    let mut plan = b.into_inner().finish();
    plan.start = start;
    Ok(plan)
}

/// A plan being built from the walk.
struct Builder {
    plan: Plan,
    include: Option<Gitignore>,
    exclude: Option<Gitignore>,
    delete: bool,
    /// Per depth of the walk: the directory its entries go into, and the
    /// include state it hands down.
    parents: Vec<(Option<usize>, Option<bool>)>,
    /// With `include`: per item, whether it is kept (an included entry,
    /// or a directory above one).
    keep: Vec<bool>,
}

impl Builder {
    /// Plans one entry met by the walk; false to leave out what is in it.
    fn add(&mut self, e: &TreeEntry) -> Result<bool, Error> {
        self.parents.truncate(e.depth + 1);
        let (parent, inherited) = self.parents.last().copied().unwrap_or((None, None));
        let name = e.node.name_bytes();
        if self.delete {
            self.plan
                .in_snapshot
                .entry(parent)
                .or_default()
                .insert(name.into());
        }
        let Some(meta) = e.meta.cloned() else {
            return Err(Error::Invalid(format!(
                "{}: no filesystem metadata in the snapshot",
                display(e.path)
            )));
        };
        let is_dir = meta.kind == FileKind::Dir;
        let path = OsStr::from_bytes(e.path);
        if self
            .exclude
            .as_ref()
            .is_some_and(|m| m.matched(path, is_dir).is_ignore())
        {
            return Ok(false);
        }
        let matched = match &self.include {
            Some(m) => state(m.matched(path, is_dir)).or(inherited),
            None => Some(true),
        };
        let included = matched == Some(true);
        if !included && !is_dir {
            return Ok(false);
        }
        let idx = self.plan.items.len();
        if self.include.is_some() {
            self.keep.push(included && is_dir);
            if included {
                self.keep_above(parent);
            }
        }
        if included && is_dir && self.delete {
            self.plan.covered.push(Some(idx));
        }
        self.plan.items.push(Item {
            parent,
            name: name.into(),
            kind: meta.kind,
            content: match &e.node.kind {
                NodeKind::Stream { content } => content.clone(),
                _ => Vec::new(),
            },
            meta,
            link_to: None,
            depth: e.depth,
        });
        if is_dir {
            self.parents.push((Some(idx), matched));
        }
        Ok(true)
    }

    /// Keeps `dir` and every directory above it (each is kept once:
    /// marking stops at the first already kept).
    fn keep_above(&mut self, mut dir: Option<usize>) {
        while let Some(d) = dir {
            match self.keep.get_mut(d) {
                Some(k) if !*k => *k = true,
                _ => break,
            }
            dir = self.plan.items.get(d).and_then(|i| i.parent);
        }
    }

    /// The directory just planned has a tree that cannot be read: it is
    /// restored (empty, and kept so the loss is reported), nothing in the
    /// target below it is deleted, and the loss is listed.
    fn lose(&mut self, why: &str) {
        let Some(dir) = self.plan.items.len().checked_sub(1) else {
            return;
        };
        if self.include.is_some() {
            self.keep_above(Some(dir));
        }
        self.plan.lost_dirs.push((dir, why.to_string()));
    }

    /// Drops the directories kept only for what they might hold (with
    /// `include`, those that hold nothing included), then groups hard
    /// links.
    fn finish(mut self) -> Plan {
        if self.include.is_some() {
            self.compact();
        }
        let lost: HashSet<usize> = self.plan.lost_dirs.iter().map(|(d, _)| *d).collect();
        self.plan
            .covered
            .retain(|d| d.is_none_or(|d| !lost.contains(&d)));
        link_groups(&mut self.plan.items);
        self.plan
    }

    /// Removes the items not kept, renumbering the rest (a kept item's
    /// parent is kept).
    fn compact(&mut self) {
        let plan = &mut self.plan;
        let keep = &self.keep;
        let mut new_index: Vec<Option<usize>> = vec![None; plan.items.len()];
        let mut next = 0;
        for (i, item) in plan.items.iter().enumerate() {
            if item.kind != FileKind::Dir || keep.get(i).copied().unwrap_or(false) {
                new_index[i] = Some(next);
                next += 1;
            }
        }
        let renumber = |d: Option<usize>| d.and_then(|d| new_index.get(d).copied().flatten());
        let old = std::mem::take(&mut plan.items);
        plan.items = old
            .into_iter()
            .enumerate()
            .filter(|(i, _)| new_index[*i].is_some())
            .map(|(_, mut item)| {
                item.parent = renumber(item.parent);
                item
            })
            .collect();
        plan.covered = plan
            .covered
            .iter()
            .filter_map(|d| match d {
                None => Some(None),
                Some(_) => renumber(*d).map(Some),
            })
            .collect();
        plan.in_snapshot = std::mem::take(&mut plan.in_snapshot)
            .into_iter()
            .filter_map(|(d, names)| match d {
                None => Some((None, names)),
                Some(_) => renumber(d).map(|n| (Some(n), names)),
            })
            .collect();
        plan.lost_dirs = std::mem::take(&mut plan.lost_dirs)
            .into_iter()
            .filter_map(|(d, why)| renumber(Some(d)).map(|n| (n, why)))
            .collect();
    }
}

/// Hard links: later members of a group link to the first. Only between
/// regular files: a hard link to a directory cannot exist, and other
/// kinds are simply created again.
fn link_groups(items: &mut [Item]) {
    let mut groups: HashMap<(u64, u64), usize> = HashMap::new();
    for (i, item) in items.iter_mut().enumerate() {
        if let Some((dev, ino, _)) = item.meta.hardlink.filter(|_| item.kind == FileKind::File) {
            match groups.get(&(dev, ino)) {
                Some(first) => item.link_to = Some(*first),
                None => {
                    groups.insert((dev, ino), i);
                }
            }
        }
    }
}
