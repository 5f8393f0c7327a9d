//! Logical backups: every database and collection the user may read (or
//! the ones named), streamed as BSON into one snapshot. On a replica set
//! the oplog position is taken before the first read and the oplog from
//! there to the majority point at the end of the dump is stored with it,
//! so a restore can reach that one consistent point.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::TryStreamExt;
use mongodb::bson::{Document, RawDocumentBuf, doc};
use mongodb::options::{CollectionOptions, ReadConcern};
use mongodb::{Client, Collection};
use tessera_core::{BackupSummary, Content, Entry, Meta, Repository};
use tokio::runtime::Handle;
use tokio::sync::mpsc;

use crate::meta::{
    BackupMeta, CollectionMeta, CollectionSummary, DatabaseSummary, MONGO_META_VERSION, OpTime,
};
use crate::names::{escape, split_namespace};
use crate::{Connection, DATA_SUFFIX, DATABASES, Error, KIND_BACKUP, META_SUFFIX, OPLOG, Result};

/// Bytes of documents handed to the engine at a time.
const BATCH: usize = 1 << 20;
/// Batches read ahead of the engine per collection.
const READ_AHEAD: usize = 4;
/// Average chunk of a collection's stream: small, because documents are
/// updated in place one by one: a chunk of n documents is stored again
/// when any of them changed, so 1 % of documents changed at random costs
/// 1 - 0.99^n of the collection (n = 16 of 256-byte documents: 15 %).
pub const DEFAULT_CHUNK: usize = 4 << 10;

/// Told a collection's namespace and figures once it has been read.
pub type OnCollection = Arc<dyn Fn(&str, &CollectionSummary) + Send + Sync>;

/// Options of a backup.
#[derive(Clone, Default)]
pub struct BackupOptions {
    /// Only these databases (default: every one but `local` and `config`).
    pub databases: Vec<String>,
    /// Only these namespaces (`db.collection`), besides `databases`.
    pub collections: Vec<String>,
    /// Tags of the snapshot.
    pub tags: Vec<String>,
    /// Host name recorded (default: this machine's).
    pub hostname: Option<String>,
    /// Told each collection once it has been read.
    pub on_collection: Option<OnCollection>,
    /// Average bytes per chunk of a collection's stream (default
    /// [`DEFAULT_CHUNK`]), cut at document boundaries.
    pub chunk_size: Option<usize>,
}

impl std::fmt::Debug for BackupOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupOptions")
            .field("databases", &self.databases)
            .field("collections", &self.collections)
            .field("tags", &self.tags)
            .finish_non_exhaustive()
    }
}

/// The outcome of a backup.
#[derive(Clone, Debug)]
pub struct MongoBackup {
    /// The snapshot.
    pub summary: BackupSummary,
    /// What it holds.
    pub meta: BackupMeta,
}

/// One collection or view to read.
struct Planned {
    db: String,
    meta: CollectionMeta,
}

/// Backs up a server (or the databases and collections named) into one
/// snapshot of kind [`KIND_BACKUP`].
///
/// # Errors
/// A database or collection named that does not exist; a read that fails
/// or a connection that drops (naming the namespace); on a replica set, an
/// oplog that rolled over during the dump ([`Error::Gap`]). Nothing is
/// committed then.
pub async fn backup(
    repo: &Repository,
    conn: &Connection,
    options: BackupOptions,
) -> Result<MongoBackup> {
    let started = jiff::Timestamp::now();
    let client = &conn.client;
    let hello = client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .map_err(Error::mongo(format!("asking {} what it is", conn.name())))?;
    let set_name = hello.get_str("setName").ok().map(str::to_owned);
    let start = match &set_name {
        Some(set) => Some(last_write(&hello, "opTime").ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} is a member of replica set {set} but reports no lastWrite.opTime",
                conn.name()
            ))
        })?),
        None => None,
    };
    let planned = plan(client, &options).await?;
    let handle = Handle::current();
    let failed: Arc<Mutex<Option<Error>>> = Arc::new(Mutex::new(None));
    let counters: Vec<Arc<Counters>> = planned.iter().map(|_| Arc::default()).collect();
    let mut entries = collection_entries(
        client,
        &planned,
        &counters,
        set_name.is_some(),
        &failed,
        options.on_collection.clone(),
        DocCutter::new(options.chunk_size.unwrap_or(DEFAULT_CHUNK)),
    )?;
    let oplog = Arc::new(Counters::default());
    let consistent: Arc<Mutex<Option<OpTime>>> = Arc::new(Mutex::new(start));
    if let Some(start) = start {
        entries.push(Entry::File {
            name: OPLOG.into(),
            meta: Meta::null(),
            content: Content::Read(Box::new(Prefetch::new(
                handle.clone(),
                "the oplog".into(),
                Source::Oplog {
                    client: client.clone(),
                    server: conn.name(),
                    start,
                    counters: oplog.clone(),
                    consistent: consistent.clone(),
                },
                failed.clone(),
            ))),
            on_stored: None,
        });
    }
    let tree = repo.store_tree(entries.into_iter(), None).await?;
    if let Some(e) = failed.lock().ok().and_then(|mut f| f.take()) {
        repo.abandon_tree(tree).await;
        return Err(e);
    }
    if let Some(w) = tree.warnings.first() {
        // A stream left out: never commit a backup missing a collection.
        let w = w.clone();
        repo.abandon_tree(tree).await;
        return Err(Error::InvalidArgument(format!("backup incomplete: {w}")));
    }
    let meta = summarize(
        conn,
        set_name,
        start,
        *consistent.lock().map_err(|_| poisoned())?,
        &oplog,
        &planned,
        &counters,
        started,
    );
    let commit = tessera_core::BackupOptions {
        time: Some(started),
        hostname: options.hostname.clone(),
        tags: options.tags.clone(),
        paths: vec![format!("mongodb://{}", conn.name())],
        source_kind: Some(KIND_BACKUP.into()),
        source_meta: serde_json::to_value(&meta)
            .map_err(|e| Error::InvalidArgument(format!("MongoDB metadata: {e}")))?,
        ..Default::default()
    };
    let summary = repo.commit_snapshot(tree, commit).await?;
    Ok(MongoBackup { summary, meta })
}

/// The `databases/` directory of a backup: per collection its definition
/// and a stream its documents are read into as the engine asks.
fn collection_entries(
    client: &Client,
    planned: &[Planned],
    counters: &[Arc<Counters>],
    majority: bool,
    failed: &Arc<Mutex<Option<Error>>>,
    on_collection: Option<OnCollection>,
    cutter: DocCutter,
) -> Result<Vec<Entry>> {
    let handle = Handle::current();
    let mut entries = vec![Entry::Dir {
        name: DATABASES.into(),
        meta: Meta::null(),
    }];
    let mut open_db: Option<&str> = None;
    for (p, counter) in planned.iter().zip(counters) {
        if open_db != Some(p.db.as_str()) {
            if open_db.is_some() {
                entries.push(Entry::EndDir);
            }
            entries.push(Entry::Dir {
                name: escape(&p.db).into_bytes(),
                meta: Meta::null(),
            });
            open_db = Some(&p.db);
        }
        let file = escape(&p.meta.name);
        entries.push(Entry::File {
            name: format!("{file}{META_SUFFIX}").into_bytes(),
            meta: Meta::null(),
            content: Content::Read(Box::new(std::io::Cursor::new(p.meta.encode()?))),
            on_stored: None,
        });
        if p.meta.kind != "view" {
            let mut coll_options = CollectionOptions::default();
            if majority {
                // Nothing a rollback could take back.
                coll_options.read_concern = Some(ReadConcern::majority());
            }
            let coll = client
                .database(&p.db)
                .collection_with_options::<RawDocumentBuf>(&p.meta.name, coll_options);
            let source = Source::Collection {
                coll,
                counters: counter.clone(),
                kind: p.meta.kind.clone(),
                on_done: on_collection.clone(),
                cutter,
            };
            entries.push(Entry::File {
                name: format!("{file}{DATA_SUFFIX}").into_bytes(),
                meta: Meta::null(),
                content: Content::Chunks(Box::new(Prefetch::new(
                    handle.clone(),
                    format!("{}.{}", p.db, p.meta.name),
                    source,
                    Arc::clone(failed),
                ))),
                on_stored: None,
            });
        }
    }
    if open_db.is_some() {
        entries.push(Entry::EndDir);
    }
    entries.push(Entry::EndDir);
    Ok(entries)
}

fn poisoned() -> Error {
    Error::InvalidArgument("a backup thread panicked".into())
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    conn: &Connection,
    set_name: Option<String>,
    start: Option<OpTime>,
    consistent: Option<OpTime>,
    oplog: &Counters,
    planned: &[Planned],
    counters: &[Arc<Counters>],
    started: jiff::Timestamp,
) -> BackupMeta {
    let mut databases: Vec<DatabaseSummary> = Vec::new();
    let (mut documents, mut bytes, mut users, mut roles) = (0, 0, 0, 0);
    for (p, c) in planned.iter().zip(counters) {
        let summary = CollectionSummary {
            name: p.meta.name.clone(),
            kind: p.meta.kind.clone(),
            documents: c.documents.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        };
        documents += summary.documents;
        bytes += summary.bytes;
        if p.db == "admin" && p.meta.name == "system.users" {
            users = summary.documents;
        }
        if p.db == "admin" && p.meta.name == "system.roles" {
            roles = summary.documents;
        }
        match databases.last_mut() {
            Some(d) if d.name == p.db => d.collections.push(summary),
            _ => databases.push(DatabaseSummary {
                name: p.db.clone(),
                collections: vec![summary],
            }),
        }
    }
    BackupMeta {
        version: MONGO_META_VERSION,
        hosts: conn.hosts.clone(),
        set_name,
        start,
        consistent,
        oplog_entries: oplog.documents.load(Ordering::Relaxed),
        databases,
        documents,
        bytes,
        users,
        roles,
        started,
        finished: jiff::Timestamp::now(),
    }
}

/// "collection A renamed to B" when an oplog entry is a
/// `renameCollection` command.
fn renamed(entry: &mongodb::bson::RawDocument) -> Option<String> {
    if entry.get_str("op").ok()? != "c" {
        return None;
    }
    let o = entry.get_document("o").ok()?;
    let from = o.get_str("renameCollection").ok()?;
    let to = o.get_str("to").unwrap_or("?");
    Some(format!("collection {from} was renamed to {to}"))
}

/// `lastWrite.<field>.ts` of a `hello` reply.
fn last_write(hello: &Document, field: &str) -> Option<OpTime> {
    let ts = hello
        .get_document("lastWrite")
        .ok()?
        .get_document(field)
        .ok()?
        .get_timestamp("ts")
        .ok()?;
    Some(ts.into())
}

/// The collections to read, database by database, in name order.
async fn plan(client: &Client, options: &BackupOptions) -> Result<Vec<Planned>> {
    let listed = client
        .database("admin")
        .run_command(doc! {"listDatabases": 1, "nameOnly": true, "authorizedDatabases": true})
        .await
        .map_err(Error::mongo("listing databases"))?;
    let mut existing: Vec<String> = listed
        .get_array("databases")
        .map_err(|e| Error::InvalidArgument(format!("listDatabases: {e}")))?
        .iter()
        .filter_map(|d| d.as_document()?.get_str("name").ok().map(str::to_owned))
        .collect();
    existing.sort();
    let mut wanted: Vec<(String, Option<String>)> = Vec::new();
    for db in &options.databases {
        wanted.push((db.clone(), None));
    }
    for ns in &options.collections {
        let (db, c) = split_namespace(ns).ok_or_else(|| {
            Error::InvalidArgument(format!("--collection {ns:?}: expected DATABASE.COLLECTION"))
        })?;
        wanted.push((db.into(), Some(c.into())));
    }
    for (db, _) in &wanted {
        if !existing.contains(db) {
            return Err(Error::InvalidArgument(format!(
                "database {db:?} does not exist (or this user may not read it); there are: {}",
                existing.join(", ")
            )));
        }
    }
    let dbs: Vec<String> = if wanted.is_empty() {
        existing
            .into_iter()
            .filter(|d| d != "local" && d != "config")
            .collect()
    } else {
        let mut d: Vec<String> = wanted.iter().map(|(d, _)| d.clone()).collect();
        d.sort();
        d.dedup();
        d
    };
    let mut out = Vec::new();
    for db in dbs {
        let whole = wanted.is_empty() || wanted.iter().any(|(d, c)| *d == db && c.is_none());
        let names: Vec<&str> = wanted
            .iter()
            .filter(|(d, _)| *d == db)
            .filter_map(|(_, c)| c.as_deref())
            .collect();
        let mut colls = list_collections(client, &db).await?;
        for n in &names {
            if !colls.iter().any(|c| c.name == *n) {
                return Err(Error::InvalidArgument(format!(
                    "collection {db}.{n} does not exist"
                )));
            }
        }
        colls.retain(|c| whole || names.contains(&c.name.as_str()));
        for meta in colls {
            out.push(Planned {
                db: db.clone(),
                meta,
            });
        }
    }
    Ok(out)
}

/// Whether a collection is backed up: user collections and views,
/// `system.js`, and the users and roles of `admin`. The other `system.`
/// collections are the server's (views are read from `listCollections`,
/// time series through their view).
fn wanted_collection(db: &str, name: &str) -> bool {
    !name.starts_with("system.")
        || name == "system.js"
        || (db == "admin" && (name == "system.users" || name == "system.roles"))
}

/// The collections and views of `db` with their options and indexes, in
/// name order.
async fn list_collections(client: &Client, db: &str) -> Result<Vec<CollectionMeta>> {
    let database = client.database(db);
    let what = format!("listing the collections of {db}");
    let listed: Vec<Document> = database
        .run_cursor_command(doc! {"listCollections": 1})
        .await
        .map_err(Error::mongo(what.clone()))?
        .try_collect()
        .await
        .map_err(Error::mongo(what.clone()))?;
    let mut out = Vec::new();
    for c in listed {
        let name = c
            .get_str("name")
            .map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?
            .to_owned();
        if !wanted_collection(db, &name) {
            continue;
        }
        let kind = c.get_str("type").unwrap_or("collection").to_owned();
        let options = c.get_document("options").cloned().unwrap_or_default();
        let indexes = if kind == "view" {
            Vec::new()
        } else {
            let what = format!("listing the indexes of {db}.{name}");
            database
                .run_cursor_command(doc! {"listIndexes": &name})
                .await
                .map_err(Error::mongo(what.clone()))?
                .try_collect()
                .await
                .map_err(Error::mongo(what))?
        };
        out.push(CollectionMeta {
            v: MONGO_META_VERSION as i32,
            name,
            kind,
            options,
            indexes,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Documents and bytes read.
#[derive(Debug, Default)]
struct Counters {
    documents: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    fn add(&self, doc: &[u8]) {
        self.documents.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(doc.len() as u64, Ordering::Relaxed);
    }
}

/// What a [`Prefetch`] reads.
enum Source {
    /// A collection's documents in natural order.
    Collection {
        coll: Collection<RawDocumentBuf>,
        counters: Arc<Counters>,
        kind: String,
        on_done: Option<OnCollection>,
        cutter: DocCutter,
    },
    /// The oplog after `start`, to the majority point when first read.
    Oplog {
        client: Client,
        server: String,
        start: OpTime,
        counters: Arc<Counters>,
        consistent: Arc<Mutex<Option<OpTime>>>,
    },
}

/// Groups of chunks (about [`BATCH`] bytes each); the oplog's are one
/// batch each, cut by the repository's chunker.
type Batches = mpsc::Receiver<std::io::Result<Vec<Vec<u8>>>>;
type BatchSender = mpsc::Sender<std::io::Result<Vec<Vec<u8>>>>;

/// A stream of documents read by a task on the runtime, a few batches
/// ahead of the engine's reading thread (which blocks on it: it is not a
/// runtime thread). The task starts at the first read, so collections are
/// read one after another, in the order the engine stores them.
struct Prefetch {
    handle: Handle,
    what: String,
    source: Option<Source>,
    failed: Arc<Mutex<Option<Error>>>,
    batches: Option<Batches>,
    /// The group being handed out, and where in it.
    group: std::collections::VecDeque<Vec<u8>>,
    pos: usize,
}

impl Prefetch {
    fn new(
        handle: Handle,
        what: String,
        source: Source,
        failed: Arc<Mutex<Option<Error>>>,
    ) -> Self {
        Prefetch {
            handle,
            what,
            source: Some(source),
            failed,
            batches: None,
            group: std::collections::VecDeque::new(),
            pos: 0,
        }
    }
}

impl Prefetch {
    /// The next group from the task, starting it at the first call;
    /// `false` at the end.
    fn refill(&mut self) -> std::io::Result<bool> {
        if let Some(source) = self.source.take() {
            let (tx, rx) = mpsc::channel(READ_AHEAD);
            self.batches = Some(rx);
            let failed = self.failed.clone();
            let what = self.what.clone();
            self.handle.spawn(async move {
                if let Err(e) = read_source(source, &tx).await {
                    let message = e.to_string();
                    if let Ok(mut f) = failed.lock() {
                        f.get_or_insert(e);
                    }
                    let _ = tx
                        .send(Err(std::io::Error::other(format!(
                            "reading {what}: {message}"
                        ))))
                        .await;
                }
            });
        }
        let Some(rx) = self.batches.as_mut() else {
            return Ok(false);
        };
        match rx.blocking_recv() {
            Some(Ok(group)) => {
                self.group = group.into();
                self.pos = 0;
                Ok(true)
            }
            Some(Err(e)) => Err(e),
            None => {
                self.batches = None;
                Ok(false)
            }
        }
    }
}

/// The oplog: bytes for the repository's chunker.
impl Read for Prefetch {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(front) = self.group.front() {
                if self.pos < front.len() {
                    let n = buf.len().min(front.len() - self.pos);
                    buf[..n].copy_from_slice(&front[self.pos..self.pos + n]);
                    self.pos += n;
                    return Ok(n);
                }
                self.group.pop_front();
                self.pos = 0;
                continue;
            }
            if !self.refill()? {
                return Ok(0);
            }
        }
    }
}

/// A collection: chunks already cut at document boundaries.
impl Iterator for Prefetch {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(chunk) = self.group.pop_front() {
                return Some(Ok(chunk));
            }
            match self.refill() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Where a collection's stream is cut: after a document whose `_id`
/// hashes below a threshold proportional to its size, so chunks average
/// `target` bytes, and a boundary depends only on the `_id` it follows.
/// An update leaves every boundary where it was (only its own chunk
/// changes); an insert or delete moves at most the one around it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DocCutter {
    target: u64,
    max: usize,
}

impl DocCutter {
    pub(crate) fn new(target: usize) -> Self {
        let target = target.clamp(512, 16 << 20);
        DocCutter {
            target: target as u64,
            max: target.saturating_mul(8),
        }
    }

    /// Whether the chunk ends after `doc`, `chunk_len` bytes long with it.
    pub(crate) fn cut_after(&self, doc: &mongodb::bson::RawDocument, chunk_len: usize) -> bool {
        if chunk_len >= self.max {
            return true;
        }
        let bytes = doc.as_bytes();
        let h = id_hash(doc);
        let h = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap_or_default());
        let p = (bytes.len() as u64).min(self.target);
        h < (u64::MAX / self.target).saturating_mul(p)
    }
}

/// BLAKE3 of a document's `_id`: its BSON type and value bytes, hashed
/// in place for the common types (this runs once per document dumped);
/// other types through a one-element document; a document without an
/// `_id`, all of it.
fn id_hash(doc: &mongodb::bson::RawDocument) -> blake3::Hash {
    use mongodb::bson::RawBsonRef;
    let Some(v) = doc.get("_id").ok().flatten() else {
        return blake3::hash(doc.as_bytes());
    };
    let mut h = blake3::Hasher::new();
    h.update(&[v.element_type() as u8]);
    match v {
        RawBsonRef::ObjectId(o) => h.update(&o.bytes()),
        RawBsonRef::Int32(i) => h.update(&i.to_le_bytes()),
        RawBsonRef::Int64(i) => h.update(&i.to_le_bytes()),
        RawBsonRef::String(s) => h.update(s.as_bytes()),
        other => {
            let mut one = mongodb::bson::RawDocumentBuf::new();
            one.append("", other.to_raw_bson());
            h.update(one.as_bytes())
        }
    };
    h.finalize()
}

async fn read_source(source: Source, tx: &BatchSender) -> Result<()> {
    match source {
        Source::Collection {
            coll,
            counters,
            kind,
            on_done,
            cutter,
        } => {
            let ns = coll.namespace().to_string();
            let what = || format!("reading {ns}");
            let mut cursor = coll.find(doc! {}).await.map_err(Error::mongo(what()))?;
            let (mut chunk, mut group, mut grouped) = (Vec::new(), Vec::new(), 0);
            while cursor.advance().await.map_err(Error::mongo(what()))? {
                let doc = cursor.current();
                counters.add(doc.as_bytes());
                chunk.extend_from_slice(doc.as_bytes());
                if cutter.cut_after(doc, chunk.len()) {
                    grouped += chunk.len();
                    group.push(std::mem::take(&mut chunk));
                    if grouped >= BATCH {
                        grouped = 0;
                        if tx.send(Ok(std::mem::take(&mut group))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
            if !chunk.is_empty() {
                group.push(chunk);
            }
            if !group.is_empty() && tx.send(Ok(group)).await.is_err() {
                return Ok(());
            }
            if let Some(f) = on_done {
                let summary = CollectionSummary {
                    name: ns.clone(),
                    kind,
                    documents: counters.documents.load(Ordering::Relaxed),
                    bytes: counters.bytes.load(Ordering::Relaxed),
                };
                f(&ns, &summary);
            }
            Ok(())
        }
        Source::Oplog {
            client,
            server,
            start,
            counters,
            consistent,
        } => {
            let hello = client
                .database("admin")
                .run_command(doc! {"hello": 1})
                .await
                .map_err(Error::mongo(format!(
                    "asking {server} for its majority point"
                )))?;
            let end = last_write(&hello, "majorityOpTime")
                .or_else(|| last_write(&hello, "opTime"))
                .unwrap_or(start)
                .max(start);
            let mut cursor = crate::oplog::cursor_from(&client, &server, start).await?;
            let what = || format!("reading the oplog of {server}");
            let mut batch = Vec::new();
            let mut last = start;
            let mut first = true;
            while last < end {
                if !cursor.advance().await.map_err(Error::mongo(what()))? {
                    return Err(Error::Gap(format!(
                        "the oplog of {server} ends at {last}, before the dump's end {end}"
                    )));
                }
                let entry = cursor.current();
                let ts = crate::oplog::entry_ts(entry)?;
                if std::mem::take(&mut first) && ts > start {
                    return Err(Error::Gap(format!(
                        "the oplog of {server} rolled over during the dump: its oldest entry is {ts}, newer than the dump's start {start} (make the oplog larger, or dump less at a time)"
                    )));
                }
                if ts <= start {
                    continue;
                }
                if ts > end {
                    break;
                }
                if let Some(rename) = renamed(entry) {
                    return Err(Error::InvalidArgument(format!(
                        "{rename} during the dump (oplog entry {ts} of {server}): the collections were read on both sides of it, so no replay makes them one consistent state; run the backup again (mongodump --oplog refuses this too)"
                    )));
                }
                counters.add(entry.as_bytes());
                batch.extend_from_slice(entry.as_bytes());
                last = ts;
                if batch.len() >= BATCH
                    && tx.send(Ok(vec![std::mem::take(&mut batch)])).await.is_err()
                {
                    return Ok(());
                }
            }
            if let Ok(mut c) = consistent.lock() {
                *c = Some(last);
            }
            let _ = tx.send(Ok(vec![batch])).await;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::RawDocumentBuf;

    /// The chunks `cutter` makes of these documents.
    fn chunks(cutter: DocCutter, docs: &[RawDocumentBuf]) -> Vec<Vec<u8>> {
        let (mut out, mut chunk) = (Vec::new(), Vec::new());
        for d in docs {
            chunk.extend_from_slice(d.as_bytes());
            if cutter.cut_after(d, chunk.len()) {
                out.push(std::mem::take(&mut chunk));
            }
        }
        if !chunk.is_empty() {
            out.push(chunk);
        }
        out
    }

    fn user(i: i32, name: &str) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&doc! {"_id": i, "name": name, "pad": "x".repeat(200)})
            .unwrap()
    }

    #[test]
    fn chunks_end_after_ids_so_an_update_changes_one_chunk_and_an_insert_at_most_two() {
        let cutter = DocCutter::new(4096);
        let docs: Vec<RawDocumentBuf> = (0..20_000).map(|i| user(i, "a")).collect();
        let before = chunks(cutter, &docs);
        let bytes: usize = before.iter().map(Vec::len).sum();
        let average = bytes / before.len();
        assert!((2048..8192).contains(&average), "average chunk {average}");
        assert!(before.iter().all(|c| c.len() <= 8 * 4096 + 300));
        let changed = |after: &[Vec<u8>]| {
            let old: std::collections::HashSet<&Vec<u8>> = before.iter().collect();
            after.iter().filter(|c| !old.contains(c)).count()
        };
        // Updated in place (a longer value, as a real update may be).
        let mut updated = docs.clone();
        updated[7_000] = user(7_000, "a much longer name than before");
        assert_eq!(changed(&chunks(cutter, &updated)), 1);
        // Inserted and deleted.
        let mut inserted = docs.clone();
        inserted.insert(12_000, user(1_000_000, "new"));
        assert!(changed(&chunks(cutter, &inserted)) <= 2);
        let mut deleted = docs.clone();
        deleted.remove(15_000);
        assert!(changed(&chunks(cutter, &deleted)) <= 2);
    }
}
