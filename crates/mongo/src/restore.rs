//! Restores: collections with their options (created first), their
//! documents, their indexes (built after the data), views, users and
//! roles, then the oplog stored with the backup replayed to its consistent
//! point, and for a point-in-time restore ([`restore_to`]) the archived
//! oplog slices after it up to the target. A target that already holds a
//! collection to restore is refused unless the caller asks to drop it.

use futures::TryStreamExt;
use mongodb::bson::{Bson, Document, RawDocumentBuf, doc};
use mongodb::{Client, Collection};
use tessera_core::{Node, NodeKind, Repository, SnapshotEntry, Tree};
use tokio::sync::mpsc;

use crate::bson_stream::DocSplitter;
use crate::catalog::{PitrPlan, Slice};
use crate::meta::{BackupMeta, CollectionMeta, OpTime};
use crate::names::{split_namespace, unescape};
use crate::replay::Replayer;
use crate::{Connection, DATA_SUFFIX, DATABASES, Error, KIND_BACKUP, META_SUFFIX, OPLOG, Result};

/// Bytes of documents per insert.
const INSERT_BATCH: usize = 8 << 20;

/// Temporary collections of `admin` that users and roles pass through
/// (the server merges them with `_mergeAuthzCollections`, as
/// `mongorestore` does).
const TEMP_USERS: &str = "tessera_restore_users";
const TEMP_ROLES: &str = "tessera_restore_roles";

/// Options of a restore.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Drop each target collection that exists before restoring it.
    pub drop: bool,
    /// Only these namespaces: `db`, `db.*`, `db.collection`, `*`
    /// (default: everything).
    pub include: Vec<String>,
    /// Renames, applied to documents and replayed entries alike:
    /// `(db.c, db2.c2)` or `(db.*, db2.*)`.
    pub renames: Vec<(String, String)>,
    /// Leave users and roles out.
    pub no_users: bool,
    /// Do not replay the oplog stored with the backup (the data is then
    /// consistent per collection only).
    pub no_oplog_replay: bool,
}

/// What a restore did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestoreReport {
    /// Collections restored.
    pub collections: u64,
    /// Views created.
    pub views: u64,
    /// Documents inserted.
    pub documents: u64,
    /// Indexes built.
    pub indexes: u64,
    /// Users and roles merged.
    pub users: u64,
    /// Oplog entries applied (and left out, outside the selection).
    pub oplog_applied: u64,
    /// Oplog operations on namespaces outside the selection.
    pub oplog_skipped: u64,
    /// The point reached (replica set backups).
    pub consistent: Option<String>,
    /// Oplog slices replayed after the backup (point-in-time restores).
    pub slices: u64,
    /// What was not replayed, and why.
    pub warnings: Vec<String>,
}

/// Which namespaces are restored, and where to.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    include: Vec<String>,
    renames: Vec<(String, String)>,
}

impl Selection {
    /// From the options.
    ///
    /// # Errors
    /// A pattern or rename that is not `db`, `db.*`, `db.collection`.
    pub fn new(include: &[String], renames: &[(String, String)]) -> Result<Self> {
        for p in include {
            if p != "*" && p.is_empty() {
                return Err(Error::InvalidArgument("an empty --ns-include".into()));
            }
        }
        for (from, to) in renames {
            let wild = |s: &str| s.ends_with(".*");
            if split_namespace(from).is_none()
                || split_namespace(to).is_none()
                || wild(from) != wild(to)
            {
                return Err(Error::InvalidArgument(format!(
                    "--ns-from {from:?} --ns-to {to:?}: both DB.COLLECTION, or both DB.*"
                )));
            }
        }
        Ok(Selection {
            include: include.to_vec(),
            renames: renames.to_vec(),
        })
    }

    /// Where namespace `ns` goes, `None` when it is not selected. The
    /// collection name NUL stands for the whole database (for
    /// `dropDatabase`): only `*`, `db` and `db.*` select it.
    pub fn map(&self, ns: &str) -> Option<String> {
        let (db, coll) = split_namespace(ns)?;
        let selected = self.include.is_empty()
            || self.include.iter().any(|p| {
                p == "*" || p == db || p.strip_suffix(".*") == Some(db) || (p == ns && coll != "\0")
            });
        if !selected {
            return None;
        }
        for (from, to) in &self.renames {
            if from == ns && coll != "\0" {
                return Some(to.clone());
            }
            if let (Some(f), Some(t)) = (from.strip_suffix(".*"), to.strip_suffix(".*"))
                && f == db
            {
                return Some(format!("{t}.{coll}"));
            }
        }
        Some(ns.to_owned())
    }
}

/// A collection of the backup and where it goes.
struct Item {
    ns: String,
    to: String,
    meta: CollectionMeta,
    data: Option<Node>,
}

/// Restores backup `snapshot` onto the server of `conn`.
///
/// # Errors
/// [`Error::NotEmpty`] when a target collection exists and `drop` is not
/// set (nothing is written then); a snapshot that is not a MongoDB backup
/// or whose stored data is damaged (named); a write the server refuses.
pub async fn restore(
    repo: &Repository,
    snapshot: &SnapshotEntry,
    conn: &Connection,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    restore_with(repo, snapshot, conn, options, &[], None).await
}

/// Restores the plan's backup, then replays the oplog slices after its
/// consistent point up to the plan's target: the data as it was then.
///
/// # Errors
/// As [`restore`]; a slice that cannot be read (named); with
/// `no_oplog_replay`, [`Error::InvalidArgument`].
pub async fn restore_to(
    repo: &Repository,
    plan: &PitrPlan,
    conn: &Connection,
    options: &RestoreOptions,
) -> Result<RestoreReport> {
    if options.no_oplog_replay && plan.target.is_some() {
        return Err(Error::InvalidArgument(
            "a point-in-time restore replays the oplog: it cannot leave it out".into(),
        ));
    }
    restore_with(
        repo,
        &plan.backup.entry,
        conn,
        options,
        &plan.slices,
        plan.target,
    )
    .await
}

async fn restore_with(
    repo: &Repository,
    snapshot: &SnapshotEntry,
    conn: &Connection,
    options: &RestoreOptions,
    slices: &[Slice],
    target: Option<OpTime>,
) -> Result<RestoreReport> {
    let sid = snapshot.id.short();
    if snapshot.snapshot.source_kind != KIND_BACKUP {
        return Err(Error::InvalidArgument(format!(
            "snapshot {sid} is a {} snapshot, not a MongoDB backup",
            snapshot.snapshot.source_kind
        )));
    }
    let meta = BackupMeta::from_value(&snapshot.snapshot.source_meta, &sid)?;
    let selection = Selection::new(&options.include, &options.renames)?;
    let root = repo
        .read_tree(snapshot.snapshot.tree, "snapshot root")
        .await?;
    let items = items(repo, &root, &selection, options).await?;
    let client = &conn.client;
    prepare_targets(client, &items, options.drop, &conn.name()).await?;

    let mut report = RestoreReport::default();
    let (users, rest): (Vec<&Item>, Vec<&Item>) = items.iter().partition(|i| is_authz(&i.ns));
    for item in rest.iter().filter(|i| i.meta.kind != "view") {
        create(client, item).await?;
        if let Some(node) = &item.data {
            report.documents +=
                insert_all(repo, node, collection(client, &item.to)?, &item.ns).await?;
        }
        report.indexes += build_indexes(client, item).await?;
        report.collections += 1;
    }
    for item in rest.iter().filter(|i| i.meta.kind == "view") {
        create(client, item).await?;
        report.views += 1;
    }
    if !users.is_empty() {
        report.users = merge_users(repo, client, &users, options.drop).await?;
    }
    let map = |ns: &str| selection.map(ns);
    let mut replayer = Replayer::new(client, &map);
    if let Some(node) = root
        .get(OPLOG.as_bytes())
        .filter(|_| !options.no_oplog_replay)
    {
        replay(repo, node, &mut replayer, None, meta.consistent, OPLOG).await?;
    }
    // Each slice from where the last one (or the backup) ended.
    let mut pos = meta.consistent;
    for s in slices {
        let what = format!("oplog slice {}", s.entry.id.short());
        let root = repo.read_tree(s.entry.snapshot.tree, &what).await?;
        let node = root
            .get(OPLOG.as_bytes())
            .ok_or_else(|| Error::Corrupt(format!("{what} has no {OPLOG}")))?;
        replay(repo, node, &mut replayer, pos, target, &what).await?;
        pos = Some(target.map_or(s.meta.last, |t| t.min(s.meta.last)));
        report.slices += 1;
    }
    let stats = replayer.stats;
    report.oplog_applied = stats.applied;
    report.oplog_skipped = stats.skipped;
    report.warnings = stats.warnings;
    report.consistent = if slices.is_empty() {
        meta.consistent.map(|c| c.to_string())
    } else {
        pos.map(|c| c.to_string())
    };
    Ok(report)
}

fn is_authz(ns: &str) -> bool {
    ns == "admin.system.users" || ns == "admin.system.roles"
}

fn collection(client: &Client, ns: &str) -> Result<Collection<RawDocumentBuf>> {
    let (db, c) =
        split_namespace(ns).ok_or_else(|| Error::InvalidArgument(format!("namespace {ns:?}")))?;
    Ok(client.database(db).collection(c))
}

/// The backup's collections that are selected, with their definitions.
async fn items(
    repo: &Repository,
    root: &Tree,
    selection: &Selection,
    options: &RestoreOptions,
) -> Result<Vec<Item>> {
    let Some(NodeKind::Dir { subtree }) = root.get(DATABASES.as_bytes()).map(|n| &n.kind) else {
        return Err(Error::Corrupt(format!(
            "the snapshot has no {DATABASES}/ directory"
        )));
    };
    let databases = repo.read_tree(*subtree, DATABASES).await?;
    let mut out = Vec::new();
    for db_node in &databases.nodes {
        let db = unescape(&db_node.name).ok_or_else(|| {
            Error::Corrupt(format!("{DATABASES}/{}: not a database name", db_node.name))
        })?;
        let NodeKind::Dir { subtree } = &db_node.kind else {
            return Err(Error::Corrupt(format!(
                "{DATABASES}/{}: not a directory",
                db_node.name
            )));
        };
        let dir = repo
            .read_tree(*subtree, &format!("{DATABASES}/{}", db_node.name))
            .await?;
        for node in dir.nodes.iter().filter(|n| n.name.ends_with(META_SUFFIX)) {
            let file = &node.name[..node.name.len() - META_SUFFIX.len()];
            let what = format!("{DATABASES}/{}/{}", db_node.name, node.name);
            let name = unescape(file)
                .ok_or_else(|| Error::Corrupt(format!("{what}: not a collection name")))?;
            let ns = format!("{db}.{name}");
            if is_authz(&ns) && options.no_users {
                continue;
            }
            let to = match selection.map(&ns) {
                Some(to) => to,
                None => continue,
            };
            let mut bytes = Vec::new();
            repo.restore_node(node, &mut bytes).await?;
            let meta = CollectionMeta::decode(&bytes, &what)?;
            if meta.name != name {
                return Err(Error::Corrupt(format!(
                    "{what}: holds collection {:?}",
                    meta.name
                )));
            }
            let data = dir.get(format!("{file}{DATA_SUFFIX}").as_bytes()).cloned();
            if data.is_none() && meta.kind != "view" {
                return Err(Error::Corrupt(format!(
                    "{DATABASES}/{}/{file}{DATA_SUFFIX}: missing (the documents of {ns})",
                    db_node.name
                )));
            }
            out.push(Item { ns, to, meta, data });
        }
    }
    Ok(out)
}

/// Refuses (or, with `drop`, drops) target collections that exist.
async fn prepare_targets(client: &Client, items: &[Item], drop: bool, server: &str) -> Result<()> {
    let mut dbs: Vec<&str> = items
        .iter()
        .filter(|i| !is_authz(&i.ns))
        .filter_map(|i| split_namespace(&i.to).map(|(d, _)| d))
        .collect();
    dbs.sort_unstable();
    dbs.dedup();
    let mut taken = Vec::new();
    for db in dbs {
        let what = format!("listing the collections of {db} on {server}");
        let existing: Vec<Document> = client
            .database(db)
            .run_cursor_command(doc! {"listCollections": 1, "nameOnly": true})
            .await
            .map_err(Error::mongo(what.clone()))?
            .try_collect()
            .await
            .map_err(Error::mongo(what))?;
        for e in existing {
            if let Ok(name) = e.get_str("name") {
                let ns = format!("{db}.{name}");
                if items.iter().any(|i| i.to == ns && !is_authz(&i.ns)) {
                    taken.push(ns);
                }
            }
        }
    }
    if taken.is_empty() {
        return Ok(());
    }
    if !drop {
        let shown: Vec<&str> = taken.iter().take(5).map(String::as_str).collect();
        return Err(Error::NotEmpty(format!(
            "{server} already holds {} of the collections to restore ({}{}): restore with --drop to replace them, or elsewhere",
            taken.len(),
            shown.join(", "),
            if taken.len() > shown.len() {
                ", ..."
            } else {
                ""
            }
        )));
    }
    for ns in taken {
        let (db, c) = split_namespace(&ns).ok_or_else(|| Error::InvalidArgument(ns.clone()))?;
        client
            .database(db)
            .run_command(doc! {"drop": c})
            .await
            .map_err(Error::mongo(format!("dropping {ns}")))?;
    }
    Ok(())
}

/// `create` with the stored options.
async fn create(client: &Client, item: &Item) -> Result<()> {
    let (db, c) =
        split_namespace(&item.to).ok_or_else(|| Error::InvalidArgument(item.to.clone()))?;
    let mut command = doc! {"create": c};
    for (k, v) in &item.meta.options {
        // Listed by the server but not accepted by `create`.
        if k != "uuid" {
            command.insert(k.clone(), v.clone());
        }
    }
    client
        .database(db)
        .run_command(command)
        .await
        .map_err(Error::mongo(format!(
            "creating {} (from {})",
            item.to, item.ns
        )))?;
    Ok(())
}

/// Streams a stored collection into `coll` in batches, fetching the next
/// chunks while a batch is inserted. Returns the documents inserted.
async fn insert_all(
    repo: &Repository,
    node: &Node,
    coll: Collection<RawDocumentBuf>,
    ns: &str,
) -> Result<u64> {
    let (tx, mut rx) = mpsc::channel::<Vec<RawDocumentBuf>>(2);
    let target = coll.namespace().to_string();
    let inserter = tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(batch) = rx.recv().await {
            let len = batch.len() as u64;
            coll.insert_many(batch)
                .ordered(false)
                .await
                .map_err(Error::mongo(format!("inserting into {target}")))?;
            n += len;
        }
        Ok::<u64, Error>(n)
    });
    let what = format!("the stored documents of {ns}");
    let fed = async {
        let mut chunks = repo.node_chunks(node).await?;
        let mut splitter = DocSplitter::new();
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut total = 0u64;
        while let Some(plains) = chunks.try_next().await? {
            for p in plains {
                total += p.len() as u64;
                let before = batch.len();
                splitter.push(&p, &mut batch, &what)?;
                bytes += batch[before..]
                    .iter()
                    .map(|d| d.as_bytes().len())
                    .sum::<usize>();
                if bytes >= INSERT_BATCH {
                    bytes = 0;
                    if tx.send(std::mem::take(&mut batch)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
        splitter.finish(&what)?;
        if total != node.size {
            return Err(Error::Corrupt(format!(
                "{what}: {total} bytes stored, {} recorded",
                node.size
            )));
        }
        if !batch.is_empty() {
            let _ = tx.send(batch).await;
        }
        Ok::<(), Error>(())
    }
    .await;
    drop(tx);
    let inserted = inserter
        .await
        .map_err(|e| Error::InvalidArgument(format!("the insert task of {ns} failed: {e}")))?;
    // A failed insert explains a stopped feed better than the feed.
    let n = inserted?;
    fed?;
    Ok(n)
}

/// Builds the stored indexes but `_id_` (and a clustered index, part of
/// the collection). Returns how many.
async fn build_indexes(client: &Client, item: &Item) -> Result<u64> {
    let specs: Vec<Bson> = item
        .meta
        .indexes
        .iter()
        .filter(|s| s.get_str("name") != Ok("_id_") && !s.get_bool("clustered").unwrap_or(false))
        .map(|s| {
            let mut s = s.clone();
            s.remove("ns");
            Bson::Document(s)
        })
        .collect();
    if specs.is_empty() || item.meta.kind == "view" {
        return Ok(0);
    }
    let n = specs.len() as u64;
    let (db, c) =
        split_namespace(&item.to).ok_or_else(|| Error::InvalidArgument(item.to.clone()))?;
    client
        .database(db)
        .run_command(doc! {"createIndexes": c, "indexes": specs})
        .await
        .map_err(Error::mongo(format!("building the indexes of {}", item.to)))?;
    Ok(n)
}

/// Users and roles go through temporary collections of `admin` that the
/// server merges (`_mergeAuthzCollections`). Returns how many.
async fn merge_users(
    repo: &Repository,
    client: &Client,
    items: &[&Item],
    drop: bool,
) -> Result<u64> {
    let admin = client.database("admin");
    let mut n = 0;
    let mut temp = (String::new(), String::new());
    for item in items {
        let name = if item.ns.ends_with("users") {
            TEMP_USERS
        } else {
            TEMP_ROLES
        };
        let coll = admin.collection::<RawDocumentBuf>(name);
        let _ = coll.drop().await;
        if let Some(node) = &item.data {
            n += insert_all(repo, node, coll, &item.ns).await?;
        }
        if name == TEMP_USERS {
            temp.0 = format!("admin.{TEMP_USERS}");
        } else {
            temp.1 = format!("admin.{TEMP_ROLES}");
        }
    }
    let mut command = doc! {"_mergeAuthzCollections": 1, "drop": drop, "db": ""};
    if !temp.0.is_empty() {
        command.insert("tempUsersCollection", &temp.0);
    }
    if !temp.1.is_empty() {
        command.insert("tempRolesCollection", &temp.1);
    }
    let merged = admin
        .run_command(command)
        .await
        .map_err(Error::mongo("merging the restored users and roles"));
    for name in [TEMP_USERS, TEMP_ROLES] {
        let _ = admin.collection::<Document>(name).drop().await;
    }
    merged?;
    Ok(n)
}

/// Replays the entries of a stored oplog stream after `after` up to
/// `until`.
async fn replay(
    repo: &Repository,
    node: &Node,
    replayer: &mut Replayer<'_>,
    after: Option<OpTime>,
    until: Option<OpTime>,
    what: &str,
) -> Result<()> {
    let mut chunks = repo.node_chunks(node).await?;
    let mut splitter = DocSplitter::new();
    let mut docs = Vec::new();
    while let Some(plains) = chunks.try_next().await? {
        for p in plains {
            splitter.push(&p, &mut docs, what)?;
            for d in docs.drain(..) {
                let ts = crate::oplog::entry_ts(&d)?;
                if until.is_some_and(|u| ts > u) || after.is_some_and(|a| ts <= a) {
                    continue;
                }
                replayer.apply_entry(&d).await?;
            }
        }
    }
    splitter.finish(what)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_pick_and_rename_namespaces() {
        let all = Selection::new(&[], &[]).unwrap();
        assert_eq!(all.map("app.users").as_deref(), Some("app.users"));
        let some = Selection::new(
            &["app.*".into(), "logs.jan".into()],
            &[
                ("app.*".into(), "app2.*".into()),
                ("logs.jan".into(), "archive.jan2026".into()),
            ],
        )
        .unwrap();
        assert_eq!(some.map("app.users").as_deref(), Some("app2.users"));
        assert_eq!(some.map("logs.jan").as_deref(), Some("archive.jan2026"));
        assert_eq!(some.map("logs.feb"), None);
        assert_eq!(some.map("other.x"), None);
        // The whole-database marker: only whole selections take it.
        assert_eq!(some.map("app.\0").as_deref(), Some("app2.\0"));
        assert_eq!(some.map("logs.\0"), None);
        assert!(Selection::new(&[], &[("app.*".into(), "x.y".into())]).is_err());
        assert!(Selection::new(&[], &[("app".into(), "x.y".into())]).is_err());
    }
}
