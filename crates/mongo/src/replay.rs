//! Replaying oplog entries onto a server: what a restore does after the
//! data, up to its consistent point (and, with an oplog archive, up to a
//! chosen time).
//!
//! Every entry kind a replica set writes is handled: inserts, updates in
//! both formats (`$set`/`$unset` operators and the `$v: 2` diff of
//! MongoDB 5.0+, which is applied to the document here), replacements,
//! deletes, the commands `create`, `drop`, `renameCollection`,
//! `createIndexes`, `dropIndexes`, `collMod`, `dropDatabase`, and
//! transactions (`applyOps`, whole or in parts linked by `prevOpTime`,
//! prepared ones committed by `commitTransaction`). Replay is idempotent:
//! inserts are upserts, a diff applies to what is there, commands that
//! already took effect are passed over, so entries a restore applies twice
//! (the dump saw a write that the oplog replays) give the same result.

use std::collections::HashMap;

use mongodb::Client;
use mongodb::bson::{Bson, Document, RawDocument, doc};
use mongodb::error::ErrorKind;
use mongodb::options::ReplaceOptions;

use crate::meta::OpTime;
use crate::names::split_namespace;
use crate::{Error, Result};

/// One oplog entry, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `n`: nothing to apply.
    Noop,
    /// `i`.
    Insert {
        /// Namespace.
        ns: String,
        /// The document.
        doc: Document,
    },
    /// `u`.
    Update {
        /// Namespace.
        ns: String,
        /// The document's `_id` (and shard key), `o2`.
        filter: Document,
        /// What changed.
        change: Change,
    },
    /// `d`.
    Delete {
        /// Namespace.
        ns: String,
        /// The document's `_id`.
        filter: Document,
    },
    /// `c` on `db.$cmd`, other than a transaction.
    Command {
        /// The database.
        db: String,
        /// The command (`o`).
        command: Document,
    },
    /// A transaction's operations (`applyOps`).
    ApplyOps {
        /// The operations.
        ops: Vec<Op>,
        /// More parts follow (`partialTxn`), or it waits for its
        /// `commitTransaction` (`prepare`).
        pending: bool,
        /// The previous part of the same transaction.
        prev: Option<OpTime>,
    },
    /// `commitTransaction` of a prepared transaction.
    Commit {
        /// Its last part.
        prev: Option<OpTime>,
    },
    /// `abortTransaction`.
    Abort {
        /// Its last part.
        prev: Option<OpTime>,
    },
}

/// The change of an update entry.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// `{$v: 2, diff: {...}}`.
    Diff(Document),
    /// Update operators (`$set`, `$unset`; `$v: 1` entries).
    Operators(Document),
    /// A whole new document.
    Replace(Document),
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("oplog entry: {what}"))
}

impl Op {
    /// Decodes an oplog entry (or an operation inside `applyOps`).
    ///
    /// # Errors
    /// [`Error::Corrupt`] for an entry missing what its kind needs.
    pub fn parse(entry: &Document) -> Result<Op> {
        let op = entry.get_str("op").map_err(|e| bad(format!("op: {e}")))?;
        let ns = || -> Result<String> {
            Ok(entry
                .get_str("ns")
                .map_err(|e| bad(format!("ns: {e}")))?
                .to_owned())
        };
        let o = || -> Result<Document> {
            Ok(entry
                .get_document("o")
                .map_err(|e| bad(format!("o: {e}")))?
                .clone())
        };
        let prev = || -> Option<OpTime> {
            let ts: OpTime = entry
                .get_document("prevOpTime")
                .ok()?
                .get_timestamp("ts")
                .ok()?
                .into();
            (ts != OpTime { t: 0, i: 0 }).then_some(ts)
        };
        Ok(match op {
            "n" => Op::Noop,
            "i" => Op::Insert {
                ns: ns()?,
                doc: o()?,
            },
            "d" => Op::Delete {
                ns: ns()?,
                filter: o()?,
            },
            "u" => {
                let o = o()?;
                let filter = entry
                    .get_document("o2")
                    .map_err(|e| bad(format!("update o2: {e}")))?
                    .clone();
                let change = if o.contains_key("diff")
                    && matches!(o.get("$v"), Some(v) if as_i64(v) == Some(2))
                {
                    Change::Diff(
                        o.get_document("diff")
                            .map_err(|e| bad(format!("diff: {e}")))?
                            .clone(),
                    )
                } else if o.keys().any(|k| k.starts_with('$')) {
                    let mut ops = o;
                    ops.remove("$v");
                    Change::Operators(ops)
                } else {
                    Change::Replace(o)
                };
                Op::Update {
                    ns: ns()?,
                    filter,
                    change,
                }
            }
            "c" => {
                let ns = ns()?;
                let db = ns
                    .strip_suffix(".$cmd")
                    .ok_or_else(|| bad(format!("command on {ns:?}")))?;
                let o = o()?;
                match o.keys().next().map(String::as_str) {
                    Some("applyOps") => {
                        let ops = o
                            .get_array("applyOps")
                            .map_err(|e| bad(format!("applyOps: {e}")))?
                            .iter()
                            .map(|op| match op {
                                Bson::Document(d) => Op::parse(d),
                                _ => Err(bad("applyOps holds a non-document")),
                            })
                            .collect::<Result<Vec<_>>>()?;
                        let flag = |k| {
                            o.get_bool(k).unwrap_or(false) || entry.get_bool(k).unwrap_or(false)
                        };
                        Op::ApplyOps {
                            ops,
                            pending: flag("partialTxn") || flag("prepare"),
                            prev: prev(),
                        }
                    }
                    Some("commitTransaction") => Op::Commit { prev: prev() },
                    Some("abortTransaction") => Op::Abort { prev: prev() },
                    Some(_) => Op::Command {
                        db: db.to_owned(),
                        command: o,
                    },
                    None => return Err(bad("an empty command")),
                }
            }
            other => return Err(bad(format!("unknown op {other:?}"))),
        })
    }
}

fn as_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

/// Applies a `$v: 2` update diff to a document: `d` deletes fields, `u`
/// replaces them in place, `i` appends them, `s<field>` descends into a
/// sub-document or (with `a: true`) an array, whose diff may resize it
/// (`l`) and set (`u<index>`) or descend into (`s<index>`) elements.
///
/// # Errors
/// [`Error::Corrupt`]: a diff that does not fit the document.
pub fn apply_diff(doc: &mut Document, diff: &Document) -> Result<()> {
    let mut budget = MAX_ARRAY_GROWTH;
    apply_diff_within(doc, diff, &mut budget)
}

/// Array elements one diff may add, in all: a null element at index 2^20
/// or more takes at least 9 bytes of BSON, so more than 2^21 of them cannot
/// fit in a 16 MiB document. A diff asking for more is corrupt (and would
/// otherwise make replay allocate without bound).
const MAX_ARRAY_GROWTH: usize = 1 << 21;

fn grow(a: &mut Vec<Bson>, len: usize, budget: &mut usize) -> Result<()> {
    let more = len.saturating_sub(a.len());
    if more > *budget {
        return Err(bad(format!(
            "array diff grows an array to {len} elements, more than a document can hold"
        )));
    }
    *budget -= more;
    a.resize(len, Bson::Null);
    Ok(())
}

fn apply_diff_within(doc: &mut Document, diff: &Document, budget: &mut usize) -> Result<()> {
    for (k, v) in diff {
        match k.as_str() {
            "d" => {
                for f in fields(v, k)?.keys() {
                    doc.remove(f);
                }
            }
            "u" | "i" => {
                for (f, val) in fields(v, k)? {
                    doc.insert(f.clone(), val.clone());
                }
            }
            s if s.starts_with('s') => {
                let field = &s[1..];
                let sub = fields(v, k)?;
                match doc.get_mut(field) {
                    Some(Bson::Array(a)) if is_array_diff(sub) => {
                        apply_array_diff(a, sub, budget)?;
                    }
                    Some(Bson::Document(d)) if !is_array_diff(sub) => {
                        apply_diff_within(d, sub, budget)?;
                    }
                    _ => {
                        return Err(bad(format!(
                            "diff for field {field:?} does not match the document"
                        )));
                    }
                }
            }
            other => return Err(bad(format!("unknown diff key {other:?}"))),
        }
    }
    Ok(())
}

fn fields<'a>(v: &'a Bson, k: &str) -> Result<&'a Document> {
    v.as_document()
        .ok_or_else(|| bad(format!("diff {k:?} is not a document")))
}

fn is_array_diff(d: &Document) -> bool {
    matches!(d.get("a"), Some(Bson::Boolean(true)))
}

fn apply_array_diff(a: &mut Vec<Bson>, diff: &Document, budget: &mut usize) -> Result<()> {
    if let Some(l) = diff.get("l") {
        let len = as_i64(l)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| bad("array diff l"))?;
        if len < a.len() {
            a.truncate(len);
        } else {
            grow(a, len, budget)?;
        }
    }
    for (k, v) in diff {
        if k == "a" || k == "l" {
            continue;
        }
        let (kind, index) = k.split_at(1);
        let index: usize = index
            .parse()
            .map_err(|_| bad(format!("array diff key {k:?}")))?;
        match kind {
            "u" => {
                if a.len() <= index {
                    grow(a, index.saturating_add(1), budget)?;
                }
                a[index] = v.clone();
            }
            "s" => {
                let sub = fields(v, k)?;
                match a.get_mut(index) {
                    Some(Bson::Array(inner)) if is_array_diff(sub) => {
                        apply_array_diff(inner, sub, budget)?;
                    }
                    Some(Bson::Document(d)) if !is_array_diff(sub) => {
                        apply_diff_within(d, sub, budget)?;
                    }
                    _ => return Err(bad(format!("array diff {k:?} does not match the element"))),
                }
            }
            _ => return Err(bad(format!("array diff key {k:?}"))),
        }
    }
    Ok(())
}

/// Where a namespace goes: `None` leaves it out.
pub type NamespaceMap<'a> = &'a (dyn Fn(&str) -> Option<String> + Send + Sync);

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Operations applied.
    pub applied: u64,
    /// Operations on namespaces outside the selection.
    pub skipped: u64,
    /// Commands not replayed (named), e.g. `dropDatabase` of a partly
    /// selected database.
    pub warnings: Vec<String>,
}

/// Applies oplog entries in order to a server.
pub struct Replayer<'a> {
    client: &'a Client,
    map: NamespaceMap<'a>,
    /// Parts of open transactions by their entry's `ts`.
    parts: HashMap<OpTime, (Option<OpTime>, Vec<Op>)>,
    /// What was done so far.
    pub stats: ReplayStats,
}

/// Server error codes a replayed command may meet when it already took
/// effect: NamespaceNotFound, IndexNotFound, NamespaceExists.
const ALREADY_DONE: [i32; 3] = [26, 27, 48];

impl<'a> Replayer<'a> {
    /// A replayer onto `client`, mapping namespaces with `map`.
    pub fn new(client: &'a Client, map: NamespaceMap<'a>) -> Self {
        Replayer {
            client,
            map,
            parts: HashMap::new(),
            stats: ReplayStats::default(),
        }
    }

    /// Applies one stored entry.
    ///
    /// # Errors
    /// An undecodable entry; a write the server refuses (naming the
    /// entry's `ts` and namespace).
    pub async fn apply_entry(&mut self, raw: &RawDocument) -> Result<()> {
        let ts = crate::oplog::entry_ts(raw)?;
        let entry: Document = raw.try_into().map_err(|e| bad(format!("{ts}: {e}")))?;
        let op = Op::parse(&entry).map_err(|e| Error::Corrupt(format!("{e} (ts {ts})")))?;
        match op {
            Op::ApplyOps {
                ops,
                pending: true,
                prev,
            } => {
                self.parts.insert(ts, (prev, ops));
                Ok(())
            }
            Op::ApplyOps {
                ops,
                pending: false,
                prev,
            } => {
                let mut all = self.take_chain(prev);
                all.extend(ops);
                self.apply_all(all, ts).await
            }
            Op::Commit { prev } => {
                let all = self.take_chain(prev);
                self.apply_all(all, ts).await
            }
            Op::Abort { prev } => {
                self.take_chain(prev);
                Ok(())
            }
            op => self.apply(op, ts).await,
        }
    }

    /// The operations of the parts ending at `last`, in order.
    fn take_chain(&mut self, mut last: Option<OpTime>) -> Vec<Op> {
        let mut chain = Vec::new();
        while let Some(ts) = last {
            let Some((prev, ops)) = self.parts.remove(&ts) else {
                break;
            };
            chain.push(ops);
            last = prev;
        }
        chain.into_iter().rev().flatten().collect()
    }

    async fn apply_all(&mut self, ops: Vec<Op>, ts: OpTime) -> Result<()> {
        for op in ops {
            Box::pin(self.apply(op, ts)).await?;
        }
        Ok(())
    }

    async fn apply(&mut self, op: Op, ts: OpTime) -> Result<()> {
        let target = |ns: &str| (self.map)(ns);
        let what = |ns: &str| format!("replaying the oplog entry {ts} on {ns}");
        match op {
            Op::Noop | Op::ApplyOps { .. } | Op::Commit { .. } | Op::Abort { .. } => Ok(()),
            Op::Insert { ns, doc } => {
                let Some(to) = target(&ns) else {
                    return self.skip();
                };
                let filter = id_filter(&doc, &ns, ts)?;
                self.coll(&to)?
                    .replace_one(filter, doc)
                    .with_options(ReplaceOptions::builder().upsert(true).build())
                    .await
                    .map_err(Error::mongo(what(&ns)))?;
                self.done()
            }
            Op::Delete { ns, filter } => {
                let Some(to) = target(&ns) else {
                    return self.skip();
                };
                self.coll(&to)?
                    .delete_one(filter)
                    .await
                    .map_err(Error::mongo(what(&ns)))?;
                self.done()
            }
            Op::Update { ns, filter, change } => {
                let Some(to) = target(&ns) else {
                    return self.skip();
                };
                let coll = self.coll(&to)?;
                match change {
                    Change::Operators(ops) => {
                        coll.update_one(filter, ops)
                            .await
                            .map_err(Error::mongo(what(&ns)))?;
                    }
                    Change::Replace(doc) => {
                        coll.replace_one(filter, doc)
                            .with_options(ReplaceOptions::builder().upsert(true).build())
                            .await
                            .map_err(Error::mongo(what(&ns)))?;
                    }
                    Change::Diff(diff) => {
                        // A document deleted later in the oplog may be gone
                        // already: nothing to change then.
                        if let Some(mut doc) = coll
                            .find_one(filter.clone())
                            .await
                            .map_err(Error::mongo(what(&ns)))?
                        {
                            apply_diff(&mut doc, &diff)
                                .map_err(|e| Error::Corrupt(format!("{e} (ts {ts}, {ns})")))?;
                            coll.replace_one(filter, doc)
                                .await
                                .map_err(Error::mongo(what(&ns)))?;
                        }
                    }
                }
                self.done()
            }
            Op::Command { db, command } => self.command(&db, command, ts).await,
        }
    }

    fn coll(&self, ns: &str) -> Result<mongodb::Collection<Document>> {
        let (db, c) = split_namespace(ns).ok_or_else(|| bad(format!("namespace {ns:?}")))?;
        Ok(self.client.database(db).collection(c))
    }

    fn skip(&mut self) -> Result<()> {
        self.stats.skipped += 1;
        Ok(())
    }

    fn done(&mut self) -> Result<()> {
        self.stats.applied += 1;
        Ok(())
    }

    async fn command(&mut self, db: &str, mut command: Document, ts: OpTime) -> Result<()> {
        let Some((name, first)) = command.iter().next().map(|(k, v)| (k.clone(), v.clone())) else {
            return Ok(());
        };
        let (run_db, command) = match name.as_str() {
            "create" | "drop" | "collMod" | "createIndexes" | "dropIndexes" => {
                let coll = first
                    .as_str()
                    .ok_or_else(|| bad(format!("{name} without a collection (ts {ts})")))?;
                let Some(to) = (self.map)(&format!("{db}.{coll}")) else {
                    return self.skip();
                };
                let (to_db, to_coll) =
                    split_namespace(&to).ok_or_else(|| bad(format!("namespace {to:?}")))?;
                command.insert(name.clone(), to_coll);
                let command = if name == "createIndexes" {
                    // The entry is one index: {createIndexes: c, v, key, name, ...}.
                    let mut spec = command.clone();
                    spec.remove("createIndexes");
                    doc! {"createIndexes": to_coll, "indexes": [spec]}
                } else if name == "dropIndexes" {
                    let index = command
                        .get("index")
                        .cloned()
                        .unwrap_or(Bson::String("*".into()));
                    doc! {"dropIndexes": to_coll, "index": index}
                } else {
                    command
                };
                (to_db.to_owned(), command)
            }
            "renameCollection" => {
                let from = first
                    .as_str()
                    .ok_or_else(|| bad("renameCollection"))?
                    .to_owned();
                let to = command
                    .get_str("to")
                    .map_err(|e| bad(format!("renameCollection to: {e}")))?
                    .to_owned();
                let (Some(from_to), Some(to_to)) = ((self.map)(&from), (self.map)(&to)) else {
                    self.stats.warnings.push(format!(
                        "{ts}: renameCollection {from} -> {to} crosses the selection: not replayed"
                    ));
                    return self.skip();
                };
                let drop_target = command.get_bool("dropTarget").unwrap_or(false);
                (
                    "admin".to_owned(),
                    doc! {"renameCollection": from_to, "to": to_to, "dropTarget": drop_target},
                )
            }
            "dropDatabase" => {
                // Only when the whole database is selected under one name.
                let Some(to) = (self.map)(&format!("{db}.\u{0}")) else {
                    self.stats.warnings.push(format!(
                        "{ts}: dropDatabase {db} not replayed (database partly selected)"
                    ));
                    return self.skip();
                };
                let (to_db, _) =
                    split_namespace(&to).ok_or_else(|| bad(format!("namespace {to:?}")))?;
                (to_db.to_owned(), doc! {"dropDatabase": 1})
            }
            other => {
                self.stats
                    .warnings
                    .push(format!("{ts}: command {other} on {db} not replayed"));
                return self.skip();
            }
        };
        match self.client.database(&run_db).run_command(command).await {
            Ok(_) => self.done(),
            Err(e) if matches!(&*e.kind, ErrorKind::Command(c) if ALREADY_DONE.contains(&c.code)) => {
                self.done()
            }
            Err(e) => Err(Error::Mongo {
                what: format!("replaying the oplog entry {ts}: {name} on {db}"),
                source: e,
            }),
        }
    }
}

fn id_filter(doc: &Document, ns: &str, ts: OpTime) -> Result<Document> {
    let id = doc
        .get("_id")
        .ok_or_else(|| bad(format!("insert without _id (ts {ts}, {ns})")))?;
    Ok(doc! {"_id": id.clone()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diff_cannot_grow_arrays_past_what_a_document_holds() {
        for diff in [
            doc! {"sv": {"a": true, "l": 1_i64 << 40}},
            doc! {"sv": {"a": true, "u4000000000": 1}},
            // Many arrays, each within the bound, together past it.
            doc! {"sv": {"a": true, "l": 1_500_000}, "sw": {"a": true, "l": 1_500_000}},
        ] {
            let mut d = doc! {"v": [1], "w": [2]};
            let e = apply_diff(&mut d, &diff).unwrap_err();
            assert!(
                e.to_string().contains("more than a document can hold"),
                "{e}"
            );
        }
        let mut d = doc! {"v": [1]};
        apply_diff(&mut d, &doc! {"sv": {"a": true, "l": 1_000_000}}).unwrap();
        assert_eq!(d.get_array("v").unwrap().len(), 1_000_000);
    }

    #[test]
    fn diffs_apply_as_the_server_does() {
        let mut d = doc! {"_id": 1, "name": "a", "gone": 1, "tags": ["x", "y"], "n": {"a": 1, "b": {"c": 2}}};
        let diff = doc! {
            "d": {"gone": false},
            "u": {"name": "b"},
            "i": {"age": 3},
            "stags": {"a": true, "u1": "z", "u3": "w"},
            "sn": {"u": {"a": 5}, "sb": {"d": {"c": false}, "i": {"e": 1}}},
        };
        apply_diff(&mut d, &diff).unwrap();
        assert_eq!(
            d,
            doc! {"_id": 1, "name": "b", "tags": ["x", "z", Bson::Null, "w"], "n": {"a": 5, "b": {"e": 1}}, "age": 3}
        );
        // Applying it again changes nothing.
        let once = d.clone();
        apply_diff(&mut d, &diff).unwrap();
        assert_eq!(d, once);
        let mut a = doc! {"v": [1, 2, 3, [4, 5]]};
        apply_diff(
            &mut a,
            &doc! {"sv": {"a": true, "l": 4, "s3": {"a": true, "l": 1}}},
        )
        .unwrap();
        assert_eq!(a, doc! {"v": [1, 2, 3, [4]]});
        apply_diff(&mut a, &doc! {"sv": {"a": true, "l": 2}}).unwrap();
        assert_eq!(a, doc! {"v": [1, 2]});
        assert!(apply_diff(&mut a, &doc! {"sv": {"u": {"x": 1}}}).is_err());
        assert!(apply_diff(&mut a, &doc! {"q": 1}).is_err());
    }

    #[test]
    fn entries_decode_by_kind() {
        let ts = Bson::Timestamp(mongodb::bson::Timestamp {
            time: 5,
            increment: 1,
        });
        let upd = doc! {"op": "u", "ns": "app.users", "o": {"$v": 2, "diff": {"u": {"a": 1}}}, "o2": {"_id": 1}, "ts": ts.clone()};
        assert!(matches!(
            Op::parse(&upd).unwrap(),
            Op::Update {
                change: Change::Diff(_),
                ..
            }
        ));
        let set =
            doc! {"op": "u", "ns": "app.users", "o": {"$v": 1, "$set": {"a": 1}}, "o2": {"_id": 1}};
        assert_eq!(
            Op::parse(&set).unwrap(),
            Op::Update {
                ns: "app.users".into(),
                filter: doc! {"_id": 1},
                change: Change::Operators(doc! {"$set": {"a": 1}})
            }
        );
        let part = doc! {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [{"op": "i", "ns": "app.t", "o": {"_id": 1}}], "partialTxn": true},
        "prevOpTime": {"ts": Bson::Timestamp(mongodb::bson::Timestamp { time: 0, increment: 0 }), "t": -1_i64}};
        assert!(matches!(
            Op::parse(&part).unwrap(),
            Op::ApplyOps {
                pending: true,
                prev: None,
                ..
            }
        ));
        let cmd = doc! {"op": "c", "ns": "app.$cmd", "o": {"create": "t", "capped": true}};
        assert!(matches!(Op::parse(&cmd).unwrap(), Op::Command { .. }));
        for bad in [
            doc! {"op": "x", "ns": "a.b"},
            doc! {"op": "i", "ns": "a.b"},
            doc! {"op": "c", "ns": "a.b", "o": {"create": "t"}},
            doc! {"op": "u", "ns": "a.b", "o": {}},
        ] {
            assert!(Op::parse(&bad).is_err(), "{bad}");
        }
    }
}
