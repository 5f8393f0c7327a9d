//! `check`: verify structure and, optionally, every byte of data.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use rayon::prelude::*;
use serde::Serialize;

use crate::blob::{self, BlobHeader};
use crate::check_record::VerifiedLog;
use crate::error::{Error, Result};
use crate::format::{ObjectKind, PREAMBLE_LEN};
use crate::id::{BlobId, DataKeyId, IndexId, PackId};
use crate::index::Index;
use crate::key::KeySlot;
use crate::pack::{self, PackEntry};
use crate::repo::{Repository, on_rayon};
use crate::tree::NodeKind;

/// Packs verified at once.
const CHECK_CONCURRENCY: usize = 4;

/// Which packs `check` reads in full (every pack's header is checked
/// against the index whatever this says).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum ReadData {
    /// None: structure only.
    #[default]
    None,
    /// Every pack.
    All,
    /// Part `n` of `m` (1-based): the packs whose id, as a big-endian
    /// number, is `n - 1` modulo `m`. Parts 1 to `m` cover every pack once.
    Subset {
        /// Which part.
        n: u32,
        /// Of how many.
        m: u32,
    },
    /// A random selection of this fraction of the packs (0 to 1).
    Fraction(f64),
    /// These packs, in this order (the stalest first, say), as many as
    /// the deadline allows.
    Packs(Vec<PackId>),
}

impl std::str::FromStr for ReadData {
    type Err = Error;

    /// `N/M` or `P%` (restic's `--read-data-subset` notation).
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::InvalidArgument(format!(
                "read-data subset {s:?}: give N/M (1 <= N <= M) or P% (0 < P <= 100)"
            ))
        };
        if let Some(p) = s.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 100.0) {
                return Err(bad());
            }
            return Ok(ReadData::Fraction(p / 100.0));
        }
        let (n, m) = s.split_once('/').ok_or_else(bad)?;
        let (n, m): (u32, u32) = (
            n.trim().parse().map_err(|_| bad())?,
            m.trim().parse().map_err(|_| bad())?,
        );
        if n == 0 || n > m {
            return Err(bad());
        }
        Ok(ReadData::Subset { n, m })
    }
}

impl ReadData {
    /// The packs of `all` to read, in the order to read them.
    pub fn select(&self, all: &[PackId]) -> Vec<PackId> {
        match self {
            ReadData::None => Vec::new(),
            ReadData::All => all.to_vec(),
            ReadData::Subset { n, m } => all
                .iter()
                .filter(|id| {
                    let rem =
                        id.0.iter()
                            .fold(0u64, |r, b| (r * 256 + u64::from(*b)) % u64::from(*m));
                    rem == u64::from(n - 1)
                })
                .copied()
                .collect(),
            ReadData::Fraction(f) => {
                let mut v = all.to_vec();
                let want = ((v.len() as f64) * f.clamp(0.0, 1.0)).ceil() as usize;
                // A random order: sort by a keyed hash with a fresh key.
                let key: [u8; 32] = crate::id::random_bytes();
                v.sort_by_cached_key(|id| *blake3::keyed_hash(&key, &id.0).as_bytes());
                v.truncate(want);
                v
            }
            ReadData::Packs(order) => order.clone(),
        }
    }
}

/// How `check` runs.
#[derive(Clone, Debug, Default)]
pub struct CheckOptions {
    /// Which packs to read in full.
    pub read_data: ReadData,
    /// Start no pack read after this instant (those already started
    /// finish): a time-boxed check.
    pub deadline: Option<std::time::Instant>,
}

/// What `check` found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CheckReport {
    /// Problems: each names the object (and the snapshots it affects).
    pub errors: Vec<String>,
    /// Harmless findings (e.g. unindexed packs left by an interrupted backup).
    pub warnings: Vec<String>,
    /// Snapshots checked.
    pub snapshots: usize,
    /// Packs checked.
    pub packs: usize,
    /// Blobs in the index.
    pub blobs: usize,
    /// Blobs whose data was read and verified.
    pub blobs_verified: usize,
    /// Pack bytes read.
    pub bytes_read: u64,
    /// Packs read in full and found intact.
    pub packs_verified: Vec<PackId>,
    /// Packs selected for reading that the deadline left unread.
    pub packs_not_reached: usize,
    /// With a [`VerifiedLog`]: packs stored now that no check recorded in
    /// it has ever read in full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packs_never_verified: Option<usize>,
}

impl CheckReport {
    /// Whether no error was found.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Where a tree was first met (every tree walked has been given one).
fn path_at<'a>(path_of: &'a HashMap<BlobId, String>, id: &BlobId) -> &'a str {
    path_of.get(id).map_or("an unknown path", String::as_str)
}

/// Trees read per batch while checking snapshots.
const CHECK_TREE_BATCH: usize = 4096;

/// One tree as `check` found it.
#[derive(Default)]
struct CheckedTree {
    /// Its subtrees.
    children: Vec<BlobId>,
    /// What is wrong with it (missing, undecodable, naming missing blobs).
    problems: Vec<String>,
}

impl CheckedTree {
    fn damaged(problem: String) -> Self {
        CheckedTree {
            children: Vec::new(),
            problems: vec![problem],
        }
    }
}

/// A pack's (errors, blobs verified, bytes read), and whether it was read.
type PackOutcome = ((Vec<String>, usize, u64), bool);

struct IndexedPack {
    key_id: DataKeyId,
    blobs: Vec<PackEntry>,
    segment: IndexId,
}

impl Repository {
    /// Checks the repository: key slots, index segments, pack headers
    /// against the index, snapshots and their trees, and with `read_data`
    /// every blob (decrypted, decompressed, hashed).
    ///
    /// # Errors
    /// Only when storage cannot be listed; damage is reported in the report.
    pub async fn check(&self, read_data: bool) -> Result<CheckReport> {
        let read_data = if read_data {
            ReadData::All
        } else {
            ReadData::None
        };
        self.check_with(CheckOptions {
            read_data,
            deadline: None,
        })
        .await
    }

    /// [`Repository::check_with`] that keeps a record of the packs it
    /// read in full (`log`, a local file): with a deadline it reads the
    /// packs verified longest ago first, so nightly time-boxed checks
    /// cover the whole repository in turn; the report counts the packs
    /// never verified.
    ///
    /// # Errors
    /// As [`Repository::check_with`], and the record's SQLite errors.
    pub async fn check_with_log(
        &self,
        mut options: CheckOptions,
        log: &mut VerifiedLog,
    ) -> Result<CheckReport> {
        let packs: Vec<PackId> = self
            .inner
            .backend
            .list(ObjectKind::Pack)
            .await?
            .iter()
            .filter_map(|o| o.name.parse().ok())
            .collect();
        if options.deadline.is_some() {
            options.read_data =
                ReadData::Packs(log.stalest_first(&options.read_data.select(&packs))?);
        }
        let mut report = self.check_with(options).await?;
        log.record(&report.packs_verified, jiff::Timestamp::now())?;
        let never = log
            .last_verified(&packs)?
            .iter()
            .filter(|t| t.is_none())
            .count();
        report.packs_never_verified = Some(never);
        Ok(report)
    }

    /// [`Repository::check`] reading the packs `options` selects, within
    /// its deadline.
    ///
    /// # Errors
    /// Only when storage cannot be listed; damage is reported in the report.
    pub async fn check_with(&self, options: CheckOptions) -> Result<CheckReport> {
        let mut report = CheckReport::default();
        let backend = &self.inner.backend;

        for info in backend.list(ObjectKind::Key).await? {
            let object = ObjectKind::Key.object_name(&info.name);
            match backend.get(ObjectKind::Key, &info.name).await {
                Ok(bytes) => {
                    if let Err(e) = KeySlot::decode(&bytes, &object) {
                        report.errors.push(e.to_string());
                    }
                }
                Err(e) => report.errors.push(Error::from(e).to_string()),
            }
        }

        let mut indexed: HashMap<PackId, IndexedPack> = HashMap::new();
        let mut index = Index::new();
        for info in backend.list(ObjectKind::Index).await? {
            match self.read_index_segment(&info.name).await {
                Ok((id, segment)) => {
                    index.add_segment(&segment)?;
                    for p in segment.packs {
                        indexed.entry(p.id).or_insert(IndexedPack {
                            key_id: p.key_id,
                            blobs: p.blobs,
                            segment: id,
                        });
                    }
                }
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        index.finish_loading();
        report.blobs = index.len();

        let stored: HashMap<String, u64> = backend
            .list(ObjectKind::Pack)
            .await?
            .into_iter()
            .map(|o| (o.name, o.size))
            .collect();
        for name in stored.keys() {
            let known = name
                .parse::<PackId>()
                .map(|id| indexed.contains_key(&id))
                .unwrap_or(false);
            if !known {
                report.warnings.push(format!(
                    "{} is in no index segment (left by an interrupted backup; unused: prune deletes it)",
                    ObjectKind::Pack.object_name(name)
                ));
            }
        }

        report.packs = indexed.len();
        let mut ids: Vec<PackId> = indexed.keys().copied().collect();
        ids.sort_unstable();
        // Packs to read first, in order, then the rest (headers only).
        let to_read = options.read_data.select(&ids);
        let reading: HashSet<PackId> = to_read.iter().copied().collect();
        let order: Vec<(PackId, bool)> = to_read
            .into_iter()
            .filter(|id| indexed.contains_key(id))
            .map(|id| (id, true))
            .chain(
                ids.iter()
                    .filter(|id| !reading.contains(id))
                    .map(|id| (*id, false)),
            )
            .collect();
        let indexed = &indexed;
        let stored = &stored;
        let deadline = options.deadline;
        let results: Vec<(PackId, bool, PackOutcome)> = futures::stream::iter(order)
            .map(|(id, full)| async move {
                let past = deadline.is_some_and(|d| std::time::Instant::now() >= d);
                let read = full && !past;
                let size = stored.get(&id.to_hex()).copied();
                let outcome = match indexed.get(&id) {
                    Some(p) => self.check_pack(id, p, size, read).await,
                    None => (Vec::new(), 0, 0),
                };
                (id, full && past, (outcome, read))
            })
            .buffer_unordered(CHECK_CONCURRENCY)
            .collect()
            .await;
        let mut damaged: HashSet<PackId> = HashSet::new();
        for (id, not_reached, ((errors, verified, read), was_read)) in results {
            if !errors.is_empty() {
                damaged.insert(id);
            }
            if not_reached {
                report.packs_not_reached += 1;
            } else if was_read && errors.is_empty() {
                report.packs_verified.push(id);
            }
            report.errors.extend(errors);
            report.blobs_verified += verified;
            report.bytes_read += read;
        }
        report.packs_verified.sort_unstable();

        self.check_snapshots(&index, &damaged, &mut report).await?;
        Ok(report)
    }

    /// Reads every snapshot and walks every tree they reach (each tree
    /// once, however many snapshots share it): each tree must be indexed
    /// and decode, each blob it names must be indexed. A problem is
    /// reported once, with the path it was first met at and every
    /// snapshot that reaches it.
    async fn check_snapshots(
        &self,
        index: &Index,
        damaged: &HashSet<PackId>,
        report: &mut CheckReport,
    ) -> Result<()> {
        let mut roots: Vec<(String, BlobId)> = Vec::new();
        for info in self.inner.backend.list(ObjectKind::Snapshot).await? {
            let snap = match info.name.parse() {
                Ok(id) => self.read_snapshot_object(id).await,
                Err(_) => Err(Error::corrupt(
                    ObjectKind::Snapshot.object_name(&info.name),
                    "name is not a hex id",
                )),
            };
            match snap {
                // A tombstone (an expired session) references nothing; a
                // snapshot gone since the listing was forgotten.
                Ok(None) | Err(Error::Missing { .. }) => continue,
                Ok(Some(s)) => {
                    roots.push((info.name.get(..8).unwrap_or(&info.name).to_string(), s.tree))
                }
                Err(e) => report.errors.push(e.to_string()),
            }
            report.snapshots += 1;
        }
        let trees = self.walk_all_trees(index, damaged, &roots).await?;
        if trees.values().all(|t| t.problems.is_empty()) {
            return Ok(());
        }
        // Which snapshots reach each damaged tree.
        let mut affected: HashMap<BlobId, Vec<String>> = HashMap::new();
        for (short, root) in &roots {
            let mut seen = HashSet::from([*root]);
            let mut stack = vec![*root];
            while let Some(id) = stack.pop() {
                let Some(t) = trees.get(&id) else { continue };
                if !t.problems.is_empty() {
                    affected.entry(id).or_default().push(short.clone());
                }
                stack.extend(t.children.iter().filter(|c| seen.insert(**c)));
            }
        }
        let mut errors: Vec<String> = trees
            .iter()
            .flat_map(|(id, t)| {
                let snaps = affected.get(id).map(|v| v.join(", ")).unwrap_or_default();
                t.problems
                    .iter()
                    .map(move |p| format!("{p} (snapshots affected: {snaps})"))
            })
            .collect();
        errors.sort();
        report.errors.extend(errors);
        Ok(())
    }

    /// Walks the trees below `roots` level by level, reading each level
    /// in batches (pack order, parallel decoding).
    async fn walk_all_trees(
        &self,
        index: &Index,
        damaged: &HashSet<PackId>,
        roots: &[(String, BlobId)],
    ) -> Result<HashMap<BlobId, CheckedTree>> {
        let mut trees: HashMap<BlobId, CheckedTree> = HashMap::new();
        let mut path_of: HashMap<BlobId, String> = HashMap::new();
        let mut level: Vec<BlobId> = Vec::new();
        for (short, root) in roots {
            if let Entry::Vacant(v) = path_of.entry(*root) {
                v.insert(format!("the root of snapshot {short}"));
                level.push(*root);
            }
        }
        while !level.is_empty() {
            let (present, absent): (Vec<BlobId>, Vec<BlobId>) =
                level.drain(..).partition(|id| index.lookup(id).is_some());
            for id in absent {
                let problem = format!(
                    "tree {id} at {} is not in the index",
                    path_at(&path_of, &id)
                );
                trees.insert(id, CheckedTree::damaged(problem));
            }
            for batch in present.chunks(CHECK_TREE_BATCH) {
                for (id, listing) in self.read_listings(batch, &path_of).await {
                    let path = path_at(&path_of, &id).to_string();
                    let mut checked = CheckedTree::default();
                    match listing {
                        Err(problem) => checked.problems.push(problem),
                        Ok(nodes) => {
                            for (name, kind) in nodes {
                                let at = if path.starts_with("the root") {
                                    format!("/{name}")
                                } else {
                                    format!("{path}/{name}")
                                };
                                match kind {
                                    NodeKind::Dir { subtree } => {
                                        checked.children.push(subtree);
                                        if let Entry::Vacant(v) = path_of.entry(subtree) {
                                            v.insert(at);
                                            level.push(subtree);
                                        }
                                    }
                                    NodeKind::Stream { content } => {
                                        let mut seen = HashSet::new();
                                        for blob in content.iter().filter(|b| seen.insert(**b)) {
                                            match index.lookup(blob) {
                                                None => checked.problems.push(format!(
                                                    "blob {blob} of {at} is not in the index"
                                                )),
                                                Some(l) if damaged.contains(&l.pack) => {
                                                    checked.problems.push(format!(
                                                        "blob {blob} of {at} is in the damaged {}",
                                                        ObjectKind::Pack
                                                            .object_name(&l.pack.to_hex())
                                                    ))
                                                }
                                                Some(_) => {}
                                            }
                                        }
                                    }
                                    NodeKind::Leaf => {}
                                }
                            }
                        }
                    }
                    trees.insert(id, checked);
                }
            }
        }
        Ok(trees)
    }

    /// The nodes (name and kind) of each tree in `ids`. A batch that
    /// fails as a whole is read again tree by tree, so each damaged tree
    /// is named (with its path) and the others still count.
    async fn read_listings(
        &self,
        ids: &[BlobId],
        path_of: &HashMap<BlobId, String>,
    ) -> Vec<(BlobId, std::result::Result<Vec<(String, NodeKind)>, String>)> {
        let nodes = |t: crate::tree::Tree| -> Vec<(String, NodeKind)> {
            t.nodes.into_iter().map(|n| (n.name, n.kind)).collect()
        };
        if let Ok(all) = self.read_trees(ids, "check", move |t| Ok(nodes(t))).await {
            return all.into_iter().map(|(id, n)| (id, Ok(n))).collect();
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let at = path_at(path_of, id);
            let listing = self
                .read_tree(*id, at)
                .await
                .map(nodes)
                .map_err(|e| format!("tree {id} at {at}: {e}"));
            out.push((*id, listing));
        }
        out
    }

    /// Returns (errors, blobs verified, bytes read).
    async fn check_pack(
        &self,
        id: PackId,
        p: &IndexedPack,
        size: Option<u64>,
        read_data: bool,
    ) -> (Vec<String>, usize, u64) {
        let object = ObjectKind::Pack.object_name(&id.to_hex());
        let Some(size) = size else {
            return (
                vec![format!(
                    "{object} is missing (listed in index segment {})",
                    p.segment.short()
                )],
                0,
                0,
            );
        };
        match self.verify_pack(id, p, size, read_data).await {
            Ok((verified, read)) => (Vec::new(), verified, read),
            Err(e) => (vec![e.to_string()], 0, 0),
        }
    }

    /// A pack's data key and blob list, from its preamble and sealed
    /// header (three range reads; `size` is the pack's stored size).
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming the pack; storage errors.
    pub(crate) async fn read_pack_header(
        &self,
        id: PackId,
        size: u64,
    ) -> Result<(DataKeyId, Vec<PackEntry>)> {
        let name = id.to_hex();
        let object = ObjectKind::Pack.object_name(&name);
        let backend = &self.inner.backend;
        if size < (PREAMBLE_LEN + 4) as u64 {
            return Err(Error::corrupt(&object, format!("truncated: {size} bytes")));
        }
        let last4 = backend
            .get_range(ObjectKind::Pack, &name, size - 4..size)
            .await?;
        let trailer_len = pack::trailer_len(&last4, size, &object)?;
        let trailer = backend
            .get_range(ObjectKind::Pack, &name, size - trailer_len..size)
            .await?;
        let pre = backend
            .get_range(ObjectKind::Pack, &name, 0..PREAMBLE_LEN as u64)
            .await?;
        pack::open_header(&self.inner.keyring, id, &pre, &trailer, size)
    }

    async fn verify_pack(
        &self,
        id: PackId,
        p: &IndexedPack,
        size: u64,
        read_data: bool,
    ) -> Result<(usize, u64)> {
        let name = id.to_hex();
        let object = ObjectKind::Pack.object_name(&name);
        let backend = &self.inner.backend;
        let (header, whole) = if read_data {
            let bytes = backend.get(ObjectKind::Pack, &name).await?;
            let inner = self.inner.clone();
            let b = bytes.clone();
            (
                on_rayon(move || pack::open_header_of(&inner.keyring, id, &b)).await?,
                Some(bytes),
            )
        } else {
            (self.read_pack_header(id, size).await?, None)
        };
        let (key_id, entries) = header;
        if key_id != p.key_id {
            return Err(Error::corrupt(
                &object,
                "sealed with another data key than the index records",
            ));
        }
        let in_header: HashSet<&PackEntry> = entries.iter().collect();
        if let Some(e) = p.blobs.iter().find(|e| !in_header.contains(e)) {
            return Err(Error::corrupt(
                &object,
                format!(
                    "index lists blob {} at offset {} but the pack header disagrees",
                    e.id, e.offset
                ),
            ));
        }
        let Some(bytes) = whole else {
            return Ok((0, 0));
        };
        let inner = self.inner.clone();
        let read = bytes.len() as u64;
        // The blobs the index names (a blob `repair index --read-data`
        // left out is garbage until a prune repacks the pack).
        let entries = p.blobs.clone();
        let verified = on_rayon(move || {
            let key = inner
                .keyring
                .data_key(key_id)
                .ok_or_else(|| Error::corrupt(&object, "unknown data key"))?;
            entries
                .par_iter()
                .map(|e| {
                    let sealed = bytes
                        .get(e.offset as usize..(e.offset + e.stored_len) as usize)
                        .ok_or_else(|| {
                            Error::corrupt(&object, format!("blob {} lies outside the pack", e.id))
                        })?;
                    let h = BlobHeader {
                        id: e.id,
                        blob_type: e.blob_type,
                        flags: e.flags,
                        raw_len: e.raw_len,
                    };
                    blob::open_with(&inner.keyring, key, &h, sealed, &object, |_| ())
                })
                .collect::<Result<Vec<()>>>()
                .map(|v| v.len())
        })
        .await?;
        Ok((verified, read))
    }
}
