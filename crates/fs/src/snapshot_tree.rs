//! Reading a filesystem snapshot's trees: walk, look up a path, diff.

use std::collections::{HashMap, HashSet};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};
use std::sync::Arc;

use tessera_core::{BlobId, Node, NodeKind, Repository, Snapshot};

use crate::Error;
use crate::meta::FsMeta;
use crate::paths::join;

/// One entry met while walking a snapshot (borrowed from the walk: copy
/// what you keep).
#[derive(Clone, Copy, Debug)]
pub struct TreeEntry<'a> {
    /// Absolute path in the snapshot (raw bytes).
    pub path: &'a [u8],
    /// The tree node.
    pub node: &'a Node,
    /// Its filesystem metadata, when it parses.
    pub meta: Option<&'a FsMeta>,
    /// Depth below the walk's start (0 for its direct entries).
    pub depth: usize,
}

/// The node at `path` in `snapshot` (`/` gives `None`: the root tree).
///
/// # Errors
/// [`Error::Invalid`] when the path does not exist; storage errors.
pub async fn find_node(
    repo: &Repository,
    snapshot: &Snapshot,
    path: &Path,
) -> Result<Option<Node>, Error> {
    let mut tree = snapshot.tree;
    let mut found = None;
    let comps: Vec<&[u8]> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.as_bytes()),
            _ => None,
        })
        .collect();
    for (i, name) in comps.iter().enumerate() {
        let t = repo.read_tree(tree, "snapshot tree").await?;
        let node = t.get(name).cloned().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: not in the snapshot",
                String::from_utf8_lossy(&comps[..=i].join(&b'/'))
            ))
        })?;
        match &node.kind {
            NodeKind::Dir { subtree } => tree = *subtree,
            _ if i + 1 < comps.len() => {
                return Err(Error::Invalid(format!(
                    "{}: not a directory in the snapshot",
                    String::from_utf8_lossy(name)
                )));
            }
            _ => {}
        }
        found = Some(node);
    }
    Ok(found)
}

/// A tree's nodes with their parsed metadata.
type Listing = Arc<Vec<(Node, Option<FsMeta>)>>;

/// Trees fetched per batch, at most.
const TREE_BATCH: usize = 4096;

/// Open directories the look-ahead goes through, at most, from the
/// deepest up: so a fetch costs the same however deep the walk is (a
/// chain of directories 20,000 deep would otherwise rescan the whole
/// chain once per level). Trees missed this way are fetched when the walk
/// comes back up to them.
const LOOK_AHEAD_DIRS: usize = 64;

/// How a walk treats what it cannot read, and how far it may multiply.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct WalkRules {
    /// A directory whose tree is damaged or missing is reported to the
    /// walk's `lost` and left unvisited; the walk goes on (its start tree
    /// must read).
    pub past_damage: bool,
    /// Refuse to meet more than [`EXPANSION`] times as many entries as
    /// the distinct trees hold (beyond [`EXPANSION_FLOOR`] entries).
    pub bounded: bool,
}

/// Entries a bounded walk may always meet.
pub(crate) const EXPANSION_FLOOR: u64 = 1 << 16;

/// How many times over the entries of the distinct trees a bounded walk
/// may meet: a tree is stored once however many directories share it (the
/// same empty directory, copies of one directory with the same times), so
/// a few small forged trees that each name the next a thousand times would
/// otherwise expand to billions of entries, and a restore would plan them
/// all. A real filesystem reaches this only with more than a thousand
/// identical copies of one large directory.
pub(crate) const EXPANSION: u64 = 1000;

/// Reads trees in one batch, parsing metadata on rayon. Returns the
/// listings, and the trees that could not be read (with why) when going
/// on past damage.
async fn read_listings(
    repo: &Repository,
    ids: &[BlobId],
    past_damage: bool,
) -> Result<(HashMap<BlobId, Listing>, HashMap<BlobId, String>), Error> {
    let prepare = |tree: tessera_core::Tree| {
        Ok(Arc::new(
            tree.nodes
                .into_iter()
                .map(|n| {
                    let meta = FsMeta::from_meta(&n.meta).ok();
                    (n, meta)
                })
                .collect::<Vec<_>>(),
        ))
    };
    Ok(if past_damage {
        repo.read_trees_past_damage(ids, "snapshot tree", prepare)
            .await?
    } else {
        (
            repo.read_trees(ids, "snapshot tree", prepare).await?,
            HashMap::new(),
        )
    })
}

/// One directory being walked: its listing, next index, and the length of
/// its path in the walk's path buffer.
struct Open {
    listing: Listing,
    next: usize,
    path_len: usize,
}

/// Listings of trees fetched for a walk.
#[derive(Default)]
struct Fetched {
    /// Fetched, not visited yet.
    ahead: HashMap<BlobId, Listing>,
    /// Visited, kept for other directories with the same tree (identical
    /// directories share one: every empty directory with the same
    /// metadata, for one), up to [`RECENT_NODES`] nodes in all.
    recent: HashMap<BlobId, Listing>,
    recent_nodes: usize,
    /// Trees that could not be read, and why.
    lost: HashMap<BlobId, String>,
    /// Every tree fetched, and the entries of those trees in all.
    distinct: HashSet<BlobId>,
    distinct_nodes: u64,
}

/// Nodes of visited listings kept for directories with the same tree.
const RECENT_NODES: usize = 65_536;

impl Fetched {
    fn get(&self, id: &BlobId) -> Option<&Listing> {
        self.ahead.get(id).or_else(|| self.recent.get(id))
    }

    fn known(&self, id: &BlobId) -> bool {
        self.get(id).is_some() || self.lost.contains_key(id)
    }

    fn add(&mut self, (listings, lost): (HashMap<BlobId, Listing>, HashMap<BlobId, String>)) {
        for (id, listing) in listings {
            if self.distinct.insert(id) {
                self.distinct_nodes += listing.len() as u64;
            }
            self.ahead.insert(id, listing);
        }
        self.lost.extend(lost);
    }

    /// The listing of `id` for the walk to enter, when fetched.
    fn take(&mut self, id: &BlobId) -> Option<Listing> {
        if let Some(l) = self.recent.get(id) {
            return Some(l.clone());
        }
        let listing = self.ahead.remove(id)?;
        if self.recent_nodes + listing.len() > RECENT_NODES {
            self.recent.clear();
            self.recent_nodes = 0;
        }
        self.recent_nodes += listing.len();
        self.recent.insert(*id, listing.clone());
        Some(listing)
    }
}

/// The trees the walk will need next, in the order it will need them,
/// among those not fetched yet (at most [`TREE_BATCH`]): `first`, then
/// the unvisited subdirectories of the deepest [`LOOK_AHEAD_DIRS`] open
/// directories, deepest first, looking through the listings already
/// fetched to their descendants. One fetch then serves many levels of the
/// walk, not one directory.
fn trees_ahead(first: BlobId, stack: &[Open], fetched: &Fetched) -> Vec<BlobId> {
    let mut batch = vec![first];
    let mut seen = HashSet::from([first]);
    // Listings still to look through, as (listing, next index); the top
    // of this stack is what the walk reaches first.
    let nearest = stack.get(stack.len().saturating_sub(LOOK_AHEAD_DIRS)..);
    let mut todo: Vec<(&Listing, usize)> = nearest
        .unwrap_or_default()
        .iter()
        .map(|o| (&o.listing, o.next))
        .collect();
    while let Some((listing, next)) = todo.pop() {
        let Some((node, _)) = listing.get(next) else {
            continue;
        };
        todo.push((listing, next + 1));
        let NodeKind::Dir { subtree } = node.kind else {
            continue;
        };
        if !seen.insert(subtree) || fetched.lost.contains_key(&subtree) {
            continue;
        }
        match fetched.get(&subtree) {
            Some(sub) => todo.push((sub, 0)),
            None => {
                batch.push(subtree);
                if batch.len() >= TREE_BATCH {
                    break;
                }
            }
        }
    }
    batch
}

/// Calls `visit` for every entry below the tree `root` (whose path is
/// `root_path`), depth first, parents before children, names in byte
/// order. `visit` returns false to skip a directory's contents.
///
/// Trees are fetched ahead in batches: when the walk needs a tree it does
/// not hold, it fetches it together with the next trees the walk will
/// need that are known by then (see `trees_ahead`; a skipped
/// directory's descendants may have been fetched for nothing). The walk
/// costs the same per entry however deep the tree: one path buffer grows
/// and shrinks with it.
///
/// # Errors
/// Storage or corruption errors; `visit`'s errors.
pub async fn walk_tree(
    repo: &Repository,
    root: BlobId,
    root_path: &[u8],
    visit: impl FnMut(&TreeEntry) -> Result<bool, Error>,
) -> Result<(), Error> {
    walk(
        repo,
        root,
        root_path,
        WalkRules::default(),
        visit,
        |_, _| {},
    )
    .await
}

/// [`walk_tree`] under `rules`: `lost` hears of each directory (just
/// visited) whose contents cannot be read, and why.
pub(crate) async fn walk(
    repo: &Repository,
    root: BlobId,
    root_path: &[u8],
    rules: WalkRules,
    mut visit: impl FnMut(&TreeEntry) -> Result<bool, Error>,
    mut lost: impl FnMut(&TreeEntry, &str),
) -> Result<(), Error> {
    let mut fetched = Fetched::default();
    fetched.add(read_listings(repo, &[root], false).await?);
    let listing = fetched
        .take(&root)
        .ok_or_else(|| Error::Internal("root tree not read".into()))?;
    let mut path = root_path.to_vec();
    let mut stack = vec![Open {
        listing,
        next: 0,
        path_len: path.len(),
    }];
    let mut met = 0u64;
    while let Some(top) = stack.last_mut() {
        let listing = top.listing.clone();
        let Some((node, meta)) = listing.get(top.next) else {
            stack.pop();
            continue;
        };
        top.next += 1;
        path.truncate(top.path_len);
        if !path.ends_with(b"/") {
            path.push(b'/');
        }
        path.extend_from_slice(node.name_bytes());
        met += 1;
        if rules.bounded
            && met > EXPANSION_FLOOR
            && met > EXPANSION.saturating_mul(fetched.distinct_nodes)
        {
            return Err(too_many(met, &fetched, &path));
        }
        let entry = TreeEntry {
            path: &path,
            meta: meta.as_ref(),
            depth: stack.len() - 1,
            node,
        };
        if !visit(&entry)? {
            continue;
        }
        let NodeKind::Dir { subtree } = node.kind else {
            continue;
        };
        if !fetched.known(&subtree) {
            let batch = trees_ahead(subtree, &stack, &fetched);
            fetched.add(read_listings(repo, &batch, rules.past_damage).await?);
        }
        let Some(listing) = fetched.take(&subtree) else {
            match fetched.lost.get(&subtree) {
                Some(why) => {
                    lost(&entry, why);
                    continue;
                }
                None => return Err(Error::Internal(format!("tree {subtree} not read"))),
            }
        };
        stack.push(Open {
            listing,
            next: 0,
            path_len: path.len(),
        });
    }
    Ok(())
}

/// The error of a bounded walk that met too many entries.
fn too_many(met: u64, fetched: &Fetched, path: &[u8]) -> Error {
    Error::Invalid(format!(
        "the snapshot's trees expand to more than {met} entries from {} distinct ones \
         (at {}): more than {EXPANSION} copies of the same directories, which only a \
         forged snapshot has; refused before planning them all",
        fetched.distinct_nodes,
        String::from_utf8_lossy(path)
    ))
}

/// How an entry differs between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    /// Only in the second snapshot.
    Added,
    /// Only in the first snapshot.
    Removed,
    /// Content differs (or the type).
    Modified,
    /// Same content, different metadata.
    Metadata,
}

/// The differences between two trees, in path order. Subtrees with the
/// same id are skipped without reading them.
///
/// # Errors
/// Storage or corruption errors.
pub async fn diff(
    repo: &Repository,
    a: BlobId,
    b: BlobId,
) -> Result<Vec<(Vec<u8>, DiffKind)>, Error> {
    let mut out = Vec::new();
    let mut stack: Vec<(Vec<u8>, Option<BlobId>, Option<BlobId>)> =
        vec![(b"/".to_vec(), Some(a), Some(b))];
    while let Some((path, a, b)) = stack.pop() {
        if a == b {
            continue;
        }
        let nodes = |id: Option<BlobId>| async move {
            match id {
                Some(id) => Ok::<_, Error>(repo.read_tree(id, "snapshot tree").await?.nodes),
                None => Ok(Vec::new()),
            }
        };
        let (left, right) = (nodes(a).await?, nodes(b).await?);
        // Both lists are sorted by name bytes: merge them.
        let (mut l, mut r) = (left.iter().peekable(), right.iter().peekable());
        let mut sub = Vec::new();
        loop {
            let (x, y) = match (l.peek(), r.peek()) {
                (None, None) => break,
                (Some(x), Some(y)) => match x.name_bytes().cmp(y.name_bytes()) {
                    std::cmp::Ordering::Less => (l.next(), None),
                    std::cmp::Ordering::Greater => (None, r.next()),
                    std::cmp::Ordering::Equal => (l.next(), r.next()),
                },
                (Some(_), None) => (l.next(), None),
                (None, Some(_)) => (None, r.next()),
            };
            let Some(name) = x.or(y).map(Node::name_bytes) else {
                break;
            };
            let p = join(&path, name);
            if let Some(k) = classify(x, y) {
                out.push((p.clone(), k));
            }
            let (sx, sy) = (subtree(x), subtree(y));
            if sx.is_some() || sy.is_some() {
                sub.push((p, sx, sy));
            }
        }
        stack.extend(sub.into_iter().rev());
    }
    out.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(out)
}

fn subtree(n: Option<&Node>) -> Option<BlobId> {
    match n.map(|n| &n.kind) {
        Some(NodeKind::Dir { subtree }) => Some(*subtree),
        _ => None,
    }
}

/// How one entry changed. A directory's own change is only its metadata:
/// its entries speak for themselves.
fn classify(a: Option<&Node>, b: Option<&Node>) -> Option<DiffKind> {
    let (a, b) = match (a, b) {
        (None, None) => return None,
        (None, Some(_)) => return Some(DiffKind::Added),
        (Some(_), None) => return Some(DiffKind::Removed),
        (Some(a), Some(b)) => (a, b),
    };
    // What a leaf is: its symlink target or device number.
    let identity = |n: &Node| {
        FsMeta::from_meta(&n.meta)
            .ok()
            .and_then(|m| m.target.or(m.rdev.map(|d| d.to_le_bytes().to_vec())))
    };
    let same_content = match (&a.kind, &b.kind) {
        (NodeKind::Stream { content: x }, NodeKind::Stream { content: y }) => x == y,
        (NodeKind::Dir { .. }, NodeKind::Dir { .. }) => true,
        (NodeKind::Leaf, NodeKind::Leaf) => identity(a) == identity(b),
        _ => false,
    };
    if !same_content {
        Some(DiffKind::Modified)
    } else if a.meta != b.meta {
        Some(DiffKind::Metadata)
    } else {
        None
    }
}
