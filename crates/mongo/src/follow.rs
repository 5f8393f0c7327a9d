//! The oplog archive: a long-running follower that tails a replica set's
//! `local.oplog.rs` and commits what it read as a slice snapshot
//! ([`crate::KIND_OPLOG`]) every interval and when told to stop.
//!
//! - **Resumes exactly**: it starts after the newest entry archived for
//!   the set (else after the newest backup's consistent point, else at the
//!   server's majority point), and checks that the oplog still holds that
//!   entry. If the oplog rolled over past it, the entries between are lost:
//!   that is a *gap*, reported at once ([`FollowEvent::Gap`]) and recorded
//!   in the next slice, and point-in-time restores refuse to cross it.
//! - **Only majority-committed entries** are archived (the `hello` reply's
//!   `lastWrite.majorityOpTime` at each commit): nothing stored can be
//!   rolled back. Newer entries wait for the next slice.
//! - **A lost cursor** (a failover, a network error, a killed cursor) drops
//!   what was read but not committed and reads again from the last
//!   committed entry, waiting longer after each failure in a row.

use std::future::Future;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::{Bson, Document, RawDocumentBuf, doc};
use mongodb::options::CursorType;
use tessera_core::{Content, Entry, Meta, Repository};
use tokio::sync::mpsc;

use crate::catalog::Catalog;
use crate::meta::{Gap, MONGO_META_VERSION, OpTime, SliceMeta};
use crate::{Connection, Error, KIND_OPLOG, OPLOG, Result};

/// Told what the follower does.
pub type OnEvent = Arc<dyn Fn(&FollowEvent) + Send + Sync>;

/// Options of the follower.
#[derive(Clone)]
pub struct FollowOptions {
    /// How often a slice is committed (the RPO).
    pub slice: Duration,
    /// Tags of each slice snapshot.
    pub tags: Vec<String>,
    /// Host name recorded (default: this machine's).
    pub hostname: Option<String>,
    /// How long the server may hold an empty tailing read.
    pub max_await: Duration,
    /// Told each event.
    pub on_event: Option<OnEvent>,
}

impl Default for FollowOptions {
    fn default() -> Self {
        FollowOptions {
            slice: Duration::from_secs(60),
            tags: Vec::new(),
            hostname: None,
            max_await: Duration::from_secs(1),
            on_event: None,
        }
    }
}

/// What the follower did or met.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FollowEvent {
    /// Reading from `after` on (the entry archived last, a backup's
    /// consistent point, or the server's majority point: `from` says).
    Started {
        /// The replica set.
        set_name: String,
        /// The entry the next slice follows.
        after: OpTime,
        /// Where that position came from.
        from: &'static str,
    },
    /// A slice was committed.
    Slice {
        /// Its snapshot id (hex).
        snapshot: String,
        /// What it holds.
        meta: Box<SliceMeta>,
    },
    /// The oplog no longer holds the resume point: entries were lost.
    Gap(Gap),
    /// The cursor failed; the follower reads again from the last entry
    /// committed.
    CursorLost {
        /// Why.
        error: String,
        /// Seconds before the next try.
        retry_in: u64,
    },
}

/// What a follower did until it was stopped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowReport {
    /// Slices committed.
    pub slices: u64,
    /// Entries archived.
    pub entries: u64,
    /// Gaps met.
    pub gaps: u64,
    /// The newest entry archived.
    pub last: Option<OpTime>,
    /// Entries read but not yet majority-committed when it stopped (read
    /// again by the next run).
    pub left_unconfirmed: u64,
}

/// Entries read and not yet committed, in order.
#[derive(Default)]
struct Pending {
    entries: Vec<(OpTime, RawDocumentBuf)>,
    bytes: usize,
    started: Option<jiff::Timestamp>,
}

/// Bytes read ahead of a commit before one is made early.
const MAX_PENDING: usize = 64 << 20;

/// The follower's state between slices.
struct Follower<'a> {
    repo: &'a Repository,
    conn: &'a Connection,
    options: FollowOptions,
    set_name: String,
    /// The newest entry archived (or the position the archive starts at).
    committed: OpTime,
    /// Whether the next slice follows `committed` without a hole.
    chained: bool,
    gap: Option<Gap>,
    report: FollowReport,
}

/// Follows the oplog of the replica set `conn` reaches, committing a slice
/// every `options.slice`, until `stop` completes; then commits what the
/// majority has confirmed and returns.
///
/// # Errors
/// The server is not a replica set member; the repository fails. A lost
/// cursor or an unreachable server is retried, not an error; a gap is
/// reported and recorded, not an error.
pub async fn follow(
    repo: &Repository,
    conn: &Connection,
    options: FollowOptions,
    stop: impl Future<Output = ()>,
) -> Result<FollowReport> {
    let hello = hello(conn).await?;
    let set_name = hello
        .get_str("setName")
        .map_err(|_| {
            Error::InvalidArgument(format!(
                "{} is not a replica set member: a standalone server has no oplog to follow",
                conn.name()
            ))
        })?
        .to_owned();
    let catalog = Catalog::load(repo).await?;
    let newest_backup = catalog
        .backups
        .iter()
        .filter(|b| b.meta.set_name.as_deref() == Some(set_name.as_str()))
        .filter_map(|b| b.meta.consistent)
        .max();
    let (committed, from) = match (catalog.archived_to(&set_name), newest_backup) {
        (Some(a), _) => (a, "the newest archived entry"),
        (None, Some(b)) => (b, "the newest backup's consistent point"),
        (None, None) => (
            majority_point(&hello).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{} reports no lastWrite.majorityOpTime",
                    conn.name()
                ))
            })?,
            "the server's majority point (no backup or archive yet)",
        ),
    };
    let mut f = Follower {
        repo,
        conn,
        options,
        set_name,
        committed,
        chained: true,
        gap: None,
        report: FollowReport::default(),
    };
    f.event(&FollowEvent::Started {
        set_name: f.set_name.clone(),
        after: committed,
        from,
    });
    f.run(stop).await?;
    Ok(f.report)
}

impl Follower<'_> {
    fn event(&self, e: &FollowEvent) {
        if let Some(f) = &self.options.on_event {
            f(e);
        }
    }

    async fn run(&mut self, stop: impl Future<Output = ()>) -> Result<()> {
        tokio::pin!(stop);
        let mut failures = 0u32;
        loop {
            let (tx, mut rx) = mpsc::channel(1024);
            let reader = tokio::spawn(read(
                self.conn.client.clone(),
                self.committed,
                self.options.max_await,
                tx,
            ));
            let _abort = AbortOnDrop(reader);
            let mut pending = Pending::default();
            let mut first = true;
            let mut tick = tokio::time::interval(self.options.slice);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            let lost = loop {
                tokio::select! {
                    () = &mut stop => {
                        self.commit(&mut pending).await?;
                        self.report.left_unconfirmed = pending.entries.len() as u64;
                        return Ok(());
                    }
                    _ = tick.tick() => self.commit(&mut pending).await?,
                    got = rx.recv() => match got {
                        Some(Ok(doc)) => {
                            let ts = crate::oplog::entry_ts(&doc)?;
                            failures = 0;
                            if std::mem::take(&mut first) {
                                if ts == self.committed {
                                    continue;
                                }
                                let gap = Gap { last_archived: self.committed, first_available: ts };
                                if self.gap != Some(gap) {
                                    self.event(&FollowEvent::Gap(gap));
                                    self.report.gaps += 1;
                                }
                                self.gap = Some(gap);
                                self.chained = false;
                            }
                            let newest = pending.entries.last().map_or(self.committed, |(t, _)| *t);
                            if ts <= newest {
                                continue;
                            }
                            pending.started.get_or_insert_with(jiff::Timestamp::now);
                            pending.bytes += doc.as_bytes().len();
                            pending.entries.push((ts, doc));
                            if pending.bytes >= MAX_PENDING {
                                self.commit(&mut pending).await?;
                            }
                        }
                        Some(Err(e)) => break e,
                        None => break "the cursor ended".to_owned(),
                    },
                }
            };
            // What the majority confirmed stands; the rest is read again.
            self.commit(&mut pending).await?;
            failures += 1;
            let wait = 1u64 << failures.min(5).saturating_sub(1);
            self.event(&FollowEvent::CursorLost {
                error: lost,
                retry_in: wait,
            });
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(wait)) => {}
            }
        }
    }

    /// Commits the entries the majority has confirmed as one slice.
    async fn commit(&mut self, pending: &mut Pending) -> Result<()> {
        if pending.entries.is_empty() {
            return Ok(());
        }
        // An unreachable server confirms nothing: keep the entries.
        let Some(majority) = hello(self.conn)
            .await
            .ok()
            .as_ref()
            .and_then(majority_point)
        else {
            return Ok(());
        };
        let n = pending.entries.partition_point(|(ts, _)| *ts <= majority);
        if n == 0 {
            return Ok(());
        }
        let taken: Vec<(OpTime, RawDocumentBuf)> = pending.entries.drain(..n).collect();
        let mut bytes = Vec::with_capacity(taken.iter().map(|(_, d)| d.as_bytes().len()).sum());
        for (_, d) in &taken {
            bytes.extend_from_slice(d.as_bytes());
        }
        pending.bytes -= bytes.len();
        let started = pending.started.take().unwrap_or_else(jiff::Timestamp::now);
        if !pending.entries.is_empty() {
            pending.started = Some(jiff::Timestamp::now());
        }
        let (first, last) = (taken[0].0, taken[taken.len() - 1].0);
        let meta = SliceMeta {
            version: MONGO_META_VERSION,
            set_name: self.set_name.clone(),
            hosts: self.conn.hosts.clone(),
            after: self.chained.then_some(self.committed),
            first,
            last,
            entries: taken.len() as u64,
            bytes: bytes.len() as u64,
            gap: self.gap,
            started,
            finished: jiff::Timestamp::now(),
        };
        let entries = vec![Entry::File {
            name: OPLOG.into(),
            meta: Meta::null(),
            content: Content::Read(Box::new(Cursor::new(bytes))),
            on_stored: None,
        }];
        let tree = self.repo.store_tree(entries.into_iter(), None).await?;
        let commit = tessera_core::BackupOptions {
            time: Some(started),
            hostname: self.options.hostname.clone(),
            tags: self.options.tags.clone(),
            paths: vec![format!("mongodb://{}", self.conn.name())],
            source_kind: Some(KIND_OPLOG.into()),
            source_meta: serde_json::to_value(&meta)
                .map_err(|e| Error::InvalidArgument(format!("oplog slice metadata: {e}")))?,
            ..Default::default()
        };
        let summary = self.repo.commit_snapshot(tree, commit).await?;
        self.committed = last;
        self.chained = true;
        self.gap = None;
        self.report.slices += 1;
        self.report.entries += meta.entries;
        self.report.last = Some(last);
        self.event(&FollowEvent::Slice {
            snapshot: summary.id.to_hex(),
            meta: Box::new(meta),
        });
        Ok(())
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Tails the oplog from `from` (that entry included) into `tx` until the
/// cursor fails or the receiver goes.
async fn read(
    client: mongodb::Client,
    from: OpTime,
    max_await: Duration,
    tx: mpsc::Sender<std::result::Result<RawDocumentBuf, String>>,
) {
    let opened = client
        .database("local")
        .collection::<RawDocumentBuf>("oplog.rs")
        .find(doc! {"ts": {"$gte": Bson::Timestamp(from.to_bson())}})
        .cursor_type(CursorType::TailableAwait)
        .max_await_time(max_await)
        .await;
    let mut cursor = match opened {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(format!("opening the oplog: {e}"))).await;
            return;
        }
    };
    loop {
        match cursor.advance().await {
            Ok(true) => {
                let doc = cursor.current().to_raw_document_buf();
                if tx.send(Ok(doc)).await.is_err() {
                    return;
                }
            }
            Ok(false) => {
                let _ = tx
                    .send(Err("the server closed the oplog cursor".into()))
                    .await;
                return;
            }
            Err(e) => {
                let _ = tx.send(Err(format!("reading the oplog: {e}"))).await;
                return;
            }
        }
    }
}

async fn hello(conn: &Connection) -> Result<Document> {
    conn.client
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .map_err(Error::mongo(format!("asking {} what it is", conn.name())))
}

/// `lastWrite.majorityOpTime.ts` of a `hello` reply.
fn majority_point(hello: &Document) -> Option<OpTime> {
    let ts = hello
        .get_document("lastWrite")
        .ok()?
        .get_document("majorityOpTime")
        .ok()?
        .get_timestamp("ts")
        .ok()?;
    Some(ts.into())
}
