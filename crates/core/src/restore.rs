//! The read path: stream content back out of packs.
//!
//! Consecutive blobs stored next to each other in one pack are fetched with
//! one range request (up to 8 MiB); a few requests run ahead of the writer
//! and blobs are opened on rayon, so reading, decrypting and writing overlap.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use rayon::prelude::*;

use crate::blob::{self, BlobHeader};
use crate::error::{Error, Result};
use crate::format::ObjectKind;
use crate::id::BlobId;
use crate::index::BlobLocation;
use crate::keyring::DataKey;
use crate::repo::{Inner, Repository, on_rayon, poisoned};
use crate::snapshot::Snapshot;
use crate::span::{MAX_GAP, ReadSpan, interleave_halves, locate, spans};
use crate::tree::{Node, NodeKind, Tree};

/// Range requests in flight ahead of the writer.
const READ_AHEAD: usize = 4;
/// Fewest blobs of a span opened by one thread before another takes over:
/// a span of one large file's chunks (8 MiB read, up to ~50 compressed
/// chunks) stays on one thread, as two threads writing one file queue on
/// its inode lock (spinning: 4 % of a restore's CPU at 8); a span of small
/// files (hundreds of blobs) is still shared.
const MIN_PIECE: usize = 64;
impl Repository {
    /// Names and sizes of the streams in a snapshot.
    ///
    /// # Errors
    /// When the root tree cannot be read.
    pub async fn streams(&self, snapshot: &Snapshot) -> Result<Vec<(String, u64)>> {
        let tree = self.read_tree(snapshot.tree, "snapshot root").await?;
        Ok(tree.nodes.into_iter().map(|n| (n.name, n.size)).collect())
    }

    /// Writes stream `name` of `snapshot` to `out`; returns the bytes written.
    ///
    /// Writes to `out` happen on the calling task: give a fast writer (a
    /// file, a buffer, a pipe) or call this from a blocking context.
    ///
    /// # Errors
    /// [`Error::StreamNotFound`], missing or corrupt blobs (named), write errors.
    pub async fn restore_stream<W: Write + Send>(
        &self,
        snapshot: &Snapshot,
        name: &str,
        out: &mut W,
    ) -> Result<u64> {
        let tree = self.read_tree(snapshot.tree, "snapshot root").await?;
        let node = tree
            .get(name.as_bytes())
            .ok_or_else(|| Error::StreamNotFound {
                tree: snapshot.tree.short(),
                available: tree
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                name: name.to_string(),
            })?;
        self.restore_node(node, out).await
    }

    /// Writes the content of a stream node to `out`.
    ///
    /// # Errors
    /// As [`Repository::restore_stream`].
    pub async fn restore_node<W: Write + Send>(&self, node: &Node, out: &mut W) -> Result<u64> {
        let mut written = 0u64;
        let mut chunks = self.node_chunks(node).await?;
        while let Some(plains) = chunks.try_next().await? {
            for p in plains {
                out.write_all(&p).map_err(|e| {
                    Error::io(format!("writing restored stream {:?}", node.name), e)
                })?;
                written += p.len() as u64;
            }
        }
        out.flush()
            .map_err(|e| Error::io(format!("writing restored stream {:?}", node.name), e))?;
        if written != node.size {
            return Err(Error::corrupt(
                format!("tree entry {:?}", node.name),
                format!("records {} bytes but its chunks hold {written}", node.size),
            ));
        }
        Ok(written)
    }

    /// The content of a stream node as its chunks in order, a few reads
    /// ahead (each item holds the chunks of one read): for a caller that
    /// consumes a stream asynchronously (parsing it, sending it on). Check
    /// the total against `node.size` at the end, as
    /// [`Repository::restore_node`] does.
    ///
    /// # Errors
    /// A node that is not a stream, chunks the index lacks (named); each
    /// item, a missing or corrupt blob.
    pub async fn node_chunks<'a>(
        &'a self,
        node: &Node,
    ) -> Result<impl futures::Stream<Item = Result<Vec<Vec<u8>>>> + Send + 'a> {
        let NodeKind::Stream { content } = &node.kind else {
            return Err(Error::InvalidArgument(format!(
                "{:?} is a directory, not a stream",
                node.name
            )));
        };
        let referrer = format!("stream {:?}", node.name);
        let spans = {
            let index = self.index().await?.read().map_err(|_| poisoned())?;
            spans(locate(&index, content, &referrer)?, 0)
        };
        Ok(futures::stream::iter(spans)
            .map(|span| self.fetch_span(span))
            .buffered(READ_AHEAD))
    }

    /// Plaintext lengths of blobs, from the index (`None` for a blob the
    /// index lacks).
    ///
    /// # Errors
    /// Loading the index.
    pub async fn blob_sizes(&self, ids: &[BlobId]) -> Result<Vec<Option<u32>>> {
        let index = self.index().await?.read().map_err(|_| poisoned())?;
        Ok(ids
            .par_iter()
            .map(|id| index.lookup(id).map(|l| l.raw_len))
            .collect())
    }

    /// The id a blob with this plaintext has in this repository (to check
    /// whether bytes on disk already hold a blob).
    pub fn blob_id_of(&self, plaintext: &[u8]) -> BlobId {
        self.inner.keyring.blob_id(plaintext)
    }

    /// Reads every blob in `ids` once, in pack order: neighbouring blobs of
    /// a pack share one range request, `READ_AHEAD` requests run at once,
    /// and blobs are opened and handed to `deliver` on rayon, in parallel.
    /// This is the read path of a restore that writes many files in place.
    /// `deliver` borrows the plaintext from buffers its thread reuses.
    ///
    /// # Errors
    /// [`Error::BlobNotIndexed`] (naming `referrer`), missing or corrupt
    /// packs, and the first error `deliver` returns (which stops the reads).
    pub async fn fetch_blobs<F, E>(
        &self,
        ids: Vec<BlobId>,
        referrer: &str,
        deliver: F,
    ) -> std::result::Result<(), E>
    where
        F: Fn(BlobId, &[u8]) -> std::result::Result<(), E> + Send + Sync + 'static,
        E: From<Error> + Send + 'static,
    {
        let located = {
            let index = self.index().await?.read().map_err(|_| poisoned())?;
            locate(&index, &ids, referrer)?
        };
        self.fetch_located(located, deliver, None).await
    }

    /// [`Repository::fetch_blobs`] that goes on past damage: a blob the
    /// repository lost (not in the index, its pack missing or truncated,
    /// its bytes failing authentication) is handed to `lost` with the
    /// error, and every other blob is still delivered. Errors of `deliver`
    /// (a write that failed: a full disk) and storage errors that are not
    /// damage (network, an archived object to thaw) stop it.
    ///
    /// # Errors
    /// The first error `deliver` returns; the index cannot be loaded.
    pub async fn fetch_blobs_past_damage<F, L, E>(
        &self,
        ids: Vec<BlobId>,
        referrer: &str,
        deliver: F,
        lost: L,
    ) -> std::result::Result<(), E>
    where
        F: Fn(BlobId, &[u8]) -> std::result::Result<(), E> + Send + Sync + 'static,
        L: Fn(BlobId, &Error) + Send + Sync + 'static,
        E: From<Error> + Send + 'static,
    {
        let mut located = Vec::with_capacity(ids.len());
        {
            let index = self.index().await?.read().map_err(|_| poisoned())?;
            for id in ids {
                match index.lookup(&id) {
                    Some(loc) => located.push((id, loc)),
                    None => lost(
                        id,
                        &Error::BlobNotIndexed {
                            blob: id.to_hex(),
                            referrer: referrer.to_string(),
                        },
                    ),
                }
            }
        }
        self.fetch_located(located, deliver, Some(Arc::new(lost)))
            .await
    }

    /// [`Repository::fetch_blobs`] for blobs already located (in an index
    /// of the caller's).
    pub(crate) async fn fetch_located<F, E>(
        &self,
        mut located: Vec<(BlobId, BlobLocation)>,
        deliver: F,
        lost: Option<Lost>,
    ) -> std::result::Result<(), E>
    where
        F: Fn(BlobId, &[u8]) -> std::result::Result<(), E> + Send + Sync + 'static,
        E: From<Error> + Send + 'static,
    {
        located.par_sort_unstable_by_key(|(_, l)| (l.pack, l.offset));
        located.dedup_by_key(|(id, _)| *id);
        let spans = interleave_halves(spans(located, MAX_GAP));
        let deliver = std::sync::Arc::new(deliver);
        let mut reads = futures::stream::iter(spans)
            .map(|span| {
                let deliver = deliver.clone();
                let lost = lost.clone();
                async move {
                    match self.read_span(&span).await {
                        Ok(bytes) => deliver_span(&self.inner, span, bytes, deliver, lost).await,
                        // A prune deleted the pack after moving (or finding
                        // another copy of) its used blobs: look them up anew.
                        Err(Error::Missing { .. }) => self.fetch_moved(span, deliver, lost).await,
                        Err(e) => lose_span(&span, e, lost.as_ref()),
                    }
                }
            })
            .buffer_unordered(READ_AHEAD);
        while reads.try_next().await?.is_some() {}
        Ok(())
    }

    /// The blobs of a span whose pack is gone, read from where a freshly
    /// loaded index says they are now.
    async fn fetch_moved<F, E>(
        &self,
        span: ReadSpan,
        deliver: Arc<F>,
        lost: Option<Lost>,
    ) -> std::result::Result<(), E>
    where
        F: Fn(BlobId, &[u8]) -> std::result::Result<(), E> + Send + Sync + 'static,
        E: From<Error> + Send + 'static,
    {
        let gone = ObjectKind::Pack.object_name(&span.pack.to_hex());
        self.reload_index().await?;
        let ids: Vec<BlobId> = span.blobs.iter().map(|(id, _)| *id).collect();
        let located = {
            let index = self.index().await?.read().map_err(|_| poisoned())?;
            locate(&index, &ids, &gone)
        };
        let mut located = match located {
            Ok(l) if l.iter().all(|(_, l)| l.pack != span.pack) => l,
            Ok(_) => return lose_span(&span, Error::Missing { object: gone }, lost.as_ref()),
            Err(e) => return lose_span(&span, e, lost.as_ref()),
        };
        located.sort_unstable_by_key(|(_, l)| (l.pack, l.offset));
        for moved in spans(located, MAX_GAP) {
            match self.read_span(&moved).await {
                Ok(bytes) => {
                    deliver_span(&self.inner, moved, bytes, deliver.clone(), lost.clone()).await?
                }
                Err(e) => lose_span(&moved, e, lost.as_ref())?,
            }
        }
        Ok(())
    }

    /// Reads many trees at once, in pack order (see
    /// [`Repository::fetch_blobs`]), decoding each and passing it through
    /// `prepare` on rayon, in parallel. One call for a whole level of a
    /// snapshot costs a few range reads instead of one round trip (and
    /// two thread hand-offs) per tree.
    ///
    /// # Errors
    /// As [`Repository::fetch_blobs`]; trees that do not decode;
    /// `prepare`'s errors.
    pub async fn read_trees<T, F>(
        &self,
        ids: &[BlobId],
        referrer: &str,
        prepare: F,
    ) -> Result<HashMap<BlobId, T>>
    where
        T: Send + 'static,
        F: Fn(Tree) -> Result<T> + Send + Sync + 'static,
    {
        let located = {
            let index = self.index().await?.read().map_err(|_| poisoned())?;
            locate(&index, ids, referrer)?
        };
        self.read_located_trees(located, referrer, prepare).await
    }

    /// [`Repository::read_trees`] going on past damage: a tree that is in
    /// no index, cannot be read or does not decode is returned in the
    /// second map with why (as [`Repository::fetch_blobs_past_damage`]
    /// does for data), and the others are read.
    ///
    /// # Errors
    /// Storage errors that are not damage (see
    /// [`Repository::fetch_blobs_past_damage`]); `prepare`'s errors.
    pub async fn read_trees_past_damage<T, F>(
        &self,
        ids: &[BlobId],
        referrer: &str,
        prepare: F,
    ) -> Result<(HashMap<BlobId, T>, HashMap<BlobId, String>)>
    where
        T: Send + 'static,
        F: Fn(Tree) -> Result<T> + Send + Sync + 'static,
    {
        let mut lost = HashMap::new();
        let mut located = Vec::with_capacity(ids.len());
        {
            let index = self.index().await?.read().map_err(|_| poisoned())?;
            for id in ids {
                match index.lookup(id) {
                    Some(loc) => located.push((*id, loc)),
                    None => {
                        let e = Error::BlobNotIndexed {
                            blob: id.to_hex(),
                            referrer: referrer.to_string(),
                        };
                        lost.insert(*id, e.to_string());
                    }
                }
            }
        }
        let lost = Arc::new(Mutex::new(lost));
        let trees = self
            .fetch_trees(located, referrer, prepare, Some(lost.clone()))
            .await?;
        let lost = Arc::try_unwrap(lost).map_err(|_| poisoned())?;
        Ok((trees, lost.into_inner().map_err(|_| poisoned())?))
    }

    /// [`Repository::read_trees`] for trees already located (in an index
    /// of the caller's).
    pub(crate) async fn read_located_trees<T, F>(
        &self,
        located: Vec<(BlobId, BlobLocation)>,
        referrer: &str,
        prepare: F,
    ) -> Result<HashMap<BlobId, T>>
    where
        T: Send + 'static,
        F: Fn(Tree) -> Result<T> + Send + Sync + 'static,
    {
        self.fetch_trees(located, referrer, prepare, None).await
    }

    /// Reads, decodes and prepares located trees; with `lost`, a tree
    /// that is damaged goes there with why instead of stopping the rest.
    async fn fetch_trees<T, F>(
        &self,
        mut located: Vec<(BlobId, BlobLocation)>,
        referrer: &str,
        prepare: F,
        lost: Option<Arc<Mutex<HashMap<BlobId, String>>>>,
    ) -> Result<HashMap<BlobId, T>>
    where
        T: Send + 'static,
        F: Fn(Tree) -> Result<T> + Send + Sync + 'static,
    {
        located.sort_unstable_by_key(|(id, _)| *id);
        located.dedup_by_key(|(id, _)| *id);
        let out = Arc::new(Mutex::new(HashMap::with_capacity(located.len())));
        let sink = out.clone();
        let of = referrer.to_string();
        let undecodable = lost.clone();
        let lose: Option<Lost> = lost.map(|lost| -> Lost {
            Arc::new(move |id, e: &Error| {
                if let Ok(mut l) = lost.lock() {
                    l.insert(id, e.to_string());
                }
            })
        });
        self.fetch_located(
            located,
            move |id, plain| -> Result<()> {
                let tree = match Tree::decode(plain, &format!("tree {id} (of {of})")) {
                    Ok(t) => t,
                    Err(e) => match &undecodable {
                        Some(lost) => {
                            lost.lock()
                                .map_err(|_| poisoned())?
                                .insert(id, e.to_string());
                            return Ok(());
                        }
                        None => return Err(e),
                    },
                };
                let prepared = prepare(tree)?;
                sink.lock().map_err(|_| poisoned())?.insert(id, prepared);
                Ok(())
            },
            lose,
        )
        .await?;
        let out = Arc::try_unwrap(out).map_err(|_| poisoned())?;
        out.into_inner().map_err(|_| poisoned())
    }

    /// The bytes of a span, checked for length.
    pub(crate) async fn read_span(&self, span: &ReadSpan) -> Result<bytes::Bytes> {
        let bytes = self
            .inner
            .backend
            .get_pack_range(&span.pack.to_hex(), span.start..span.end, span.class())
            .await?;
        if bytes.len() as u64 != span.end - span.start {
            let object = ObjectKind::Pack.object_name(&span.pack.to_hex());
            return Err(Error::corrupt(&object, "truncated: short range read"));
        }
        Ok(bytes)
    }

    /// Reads a span and opens its blobs (in parallel), in span order. A
    /// pack a prune deleted since this handle loaded its index is looked
    /// up anew, as [`Repository::fetch_blobs`] does.
    pub(crate) async fn fetch_span(&self, span: ReadSpan) -> Result<Vec<Vec<u8>>> {
        match self.read_span(&span).await {
            Ok(bytes) => self.open_span(span, bytes).await,
            Err(Error::Missing { object }) => self.fetch_span_moved(span, object).await,
            Err(e) => Err(e),
        }
    }

    /// The blobs of a span whose pack is gone, in span order, from where a
    /// freshly loaded index says they are now (one read each: a prune
    /// that races a read is rare).
    async fn fetch_span_moved(&self, span: ReadSpan, gone: String) -> Result<Vec<Vec<u8>>> {
        self.reload_index().await?;
        let ids: Vec<BlobId> = span.blobs.iter().map(|(id, _)| *id).collect();
        let located = {
            let index = self.index().await?.read().map_err(|_| poisoned())?;
            locate(&index, &ids, &gone)?
        };
        if located.iter().any(|(_, l)| l.pack == span.pack) {
            return Err(Error::Missing { object: gone });
        }
        let mut out = Vec::with_capacity(located.len());
        for (id, loc) in located {
            let one = ReadSpan::one(id, loc);
            let bytes = self.read_span(&one).await?;
            out.extend(self.open_span(one, bytes).await?);
        }
        Ok(out)
    }

    /// Opens the blobs of a span read (in parallel), in span order.
    async fn open_span(&self, span: ReadSpan, bytes: bytes::Bytes) -> Result<Vec<Vec<u8>>> {
        let inner = self.inner.clone();
        on_rayon(move || {
            let blobs = SpanBlobs::new(&inner, &span, &bytes)?;
            span.blobs
                .par_iter()
                .map(|(id, loc)| blobs.open(id, loc))
                .collect()
        })
        .await
    }
}

/// Opens the blobs of a span on rayon and hands each to `deliver`.
async fn deliver_span<F, E>(
    inner: &Arc<Inner>,
    span: ReadSpan,
    bytes: bytes::Bytes,
    deliver: Arc<F>,
    lost: Option<Lost>,
) -> std::result::Result<(), E>
where
    F: Fn(BlobId, &[u8]) -> std::result::Result<(), E> + Send + Sync + 'static,
    E: From<Error> + Send + 'static,
{
    let inner = inner.clone();
    // Each blob is opened and delivered by one rayon task, so a span's
    // plaintext is never held all at once.
    on_rayon(move || {
        let blobs = match SpanBlobs::new(&inner, &span, &bytes) {
            Ok(b) => b,
            Err(e) => return lose_span(&span, e, lost.as_ref()),
        };
        // Pieces of at least `MIN_PIECE` blobs (see there).
        span.blobs
            .par_iter()
            .with_min_len(MIN_PIECE)
            .try_for_each(|(id, loc)| {
                match (blobs.open_with(id, loc, |plain| deliver(*id, plain)), &lost) {
                    (Ok(delivered), _) => delivered,
                    (Err(e), Some(lost)) if is_damage(&e) => {
                        lost(*id, &e);
                        Ok(())
                    }
                    (Err(e), _) => Err(e.into()),
                }
            })
    })
    .await
}

/// Whether `e` says the repository lost data (a missing or damaged
/// object), rather than that storage cannot be reached right now (a
/// network error, an archived object to thaw, a refused request): only
/// damage is gone past; anything else stops the fetch, as retrying later
/// may well succeed.
fn is_damage(e: &Error) -> bool {
    matches!(
        e,
        Error::Corrupt { .. }
            | Error::Missing { .. }
            | Error::BlobNotIndexed { .. }
            | Error::UnsupportedVersion { .. }
    )
}

/// Where blobs that cannot be read go when a fetch goes on past damage.
pub(crate) type Lost = Arc<dyn Fn(BlobId, &Error) + Send + Sync>;

/// A span that could not be read: each of its blobs is lost (going on
/// past damage), or the error stops the fetch.
fn lose_span<E: From<Error>>(
    span: &ReadSpan,
    e: Error,
    lost: Option<&Lost>,
) -> std::result::Result<(), E> {
    match lost.filter(|_| is_damage(&e)) {
        Some(lost) => {
            span.blobs.iter().for_each(|(id, _)| lost(*id, &e));
            Ok(())
        }
        None => Err(e.into()),
    }
}

/// The blobs of a span read into `bytes`: each is authenticated,
/// decompressed and checked against its id when opened.
struct SpanBlobs<'a> {
    inner: &'a Inner,
    key: &'a DataKey,
    span: &'a ReadSpan,
    bytes: &'a [u8],
    object: String,
}

impl<'a> SpanBlobs<'a> {
    fn new(inner: &'a Inner, span: &'a ReadSpan, bytes: &'a [u8]) -> Result<Self> {
        let object = ObjectKind::Pack.object_name(&span.pack.to_hex());
        let key = inner.keyring.data_key(span.key_id).ok_or_else(|| {
            Error::corrupt(
                &object,
                format!("sealed with unknown data key {}", span.key_id),
            )
        })?;
        Ok(SpanBlobs {
            inner,
            key,
            span,
            bytes,
            object,
        })
    }

    /// The blob's header and sealed bytes.
    fn sealed(&self, id: &BlobId, loc: &BlobLocation) -> Result<(BlobHeader, &'a [u8])> {
        let from = (u64::from(loc.offset) - self.span.start) as usize;
        let sealed = self
            .bytes
            .get(from..from + loc.stored_len as usize)
            .ok_or_else(|| Error::corrupt(&self.object, "blob outside the range read"))?;
        let h = BlobHeader {
            id: *id,
            blob_type: loc.blob_type,
            flags: loc.flags,
            raw_len: loc.raw_len,
        };
        Ok((h, sealed))
    }

    fn open(&self, id: &BlobId, loc: &BlobLocation) -> Result<Vec<u8>> {
        let (h, sealed) = self.sealed(id, loc)?;
        blob::open(&self.inner.keyring, self.key, &h, sealed, &self.object)
    }

    /// Opens the blob and lends its plaintext to `f` (see [`blob::open_with`]).
    fn open_with<R>(
        &self,
        id: &BlobId,
        loc: &BlobLocation,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R> {
        let (h, sealed) = self.sealed(id, loc)?;
        blob::open_with(&self.inner.keyring, self.key, &h, sealed, &self.object, f)
    }
}
