//! The files cache: remembers, per path, the stat signature and chunk ids of
//! each regular file backed up, so an unchanged file (same size, mtime,
//! ctime, inode and device) is not read again.
//!
//! It is a SQLite database in the local cache directory, one per
//! repository. It is disposable: a missing or unreadable cache only costs
//! reading the files again; every cached id is checked against the
//! repository's index before it is used.
//!
//! Writes go to their own connection on a writer thread, inside one
//! transaction committed after the snapshot is stored: a failed backup
//! leaves the cache as it was.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use tessera_core::BlobId;

use crate::Error;
use crate::meta::{Time, Xattr};

/// What the cache knows of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachedFile {
    /// Size in bytes.
    pub size: u64,
    /// Modification time.
    pub mtime: Time,
    /// Status change time.
    pub ctime: Time,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
    /// Chunk ids of the content.
    pub content: Vec<BlobId>,
    /// Data extents of a file with holes.
    pub extents: Option<Vec<(u64, u64)>>,
    /// Extended attributes, when they were read without error. Changing
    /// one changes the file's ctime, so a matching signature means these
    /// are current and need not be listed again.
    pub xattrs: Option<Vec<Xattr>>,
}

impl CachedFile {
    /// True if `st` shows the same file, unchanged.
    pub fn matches(&self, st: &rustix::fs::Stat) -> bool {
        self.size == st.st_size as u64
            && self.mtime == Time(st.st_mtime, st.st_mtime_nsec as u32)
            && self.ctime == Time(st.st_ctime, st.st_ctime_nsec as u32)
            && self.ino == st.st_ino
            && self.dev == st.st_dev
    }
}

/// The schema's version (SQLite's `user_version`). A cache of another
/// version is emptied and rebuilt.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS files (
    dir BLOB NOT NULL,
    name BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_s INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    ctime_s INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL, dev INTEGER NOT NULL,
    content BLOB NOT NULL,
    extents BLOB,
    xattrs BLOB,
    PRIMARY KEY (dir, name)
) WITHOUT ROWID;
";

/// The files cache of one repository.
pub struct FilesCache {
    path: PathBuf,
    conn: Connection,
}

fn sql(path: &Path, e: rusqlite::Error) -> Error {
    Error::Cache {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Deletes the database at `path` with its write-ahead log and index.
fn remove_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
}

fn open_conn(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version != SCHEMA_VERSION {
        conn.execute_batch(&format!(
            "BEGIN; DROP TABLE IF EXISTS files; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))?;
    }
    Ok(conn)
}

impl FilesCache {
    /// Opens (or creates) the cache at `path`. A cache that is not a
    /// database is deleted and started afresh: it only costs time.
    ///
    /// The file is not checked whole (`PRAGMA quick_check` read and
    /// checked every page, 0.1 s of an unchanged backup's 0.8 s on the
    /// benchmark corpus, and seconds for millions of files): SQLite
    /// reports a damaged page when a query reads it, and the walk then
    /// goes on without the cache and [`FilesCache::discard`]s it. The
    /// file is read ahead instead, in the background, so the walk's
    /// queries find it in memory.
    ///
    /// # Errors
    /// [`Error::Cache`] when it cannot be created at all.
    pub fn open(path: &Path) -> Result<Self, Error> {
        if let Some(dir) = path.parent() {
            tessera_core::storage::private::create_dir_all(dir).map_err(|e| Error::Cache {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
        }
        tessera_core::storage::private::create_file(path).map_err(|e| Error::Cache {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if let Ok(file) = std::fs::File::open(path) {
            // Only a hint: a failure costs nothing but the read-ahead.
            let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::WillNeed);
        }
        let conn = match open_conn(path) {
            Ok(c) => c,
            Err(_) => {
                remove_files(path);
                let _ = tessera_core::storage::private::create_file(path);
                open_conn(path).map_err(|e| sql(path, e))?
            }
        };
        Ok(FilesCache {
            path: path.to_path_buf(),
            conn,
        })
    }

    /// Deletes the cache's files (after a query found it damaged): the
    /// next backup starts a new one. Open connections keep writing to the
    /// deleted file, harmlessly.
    pub fn discard(&self) {
        remove_files(&self.path);
    }

    /// Every cached file of directory `dir` (an absolute path), by name.
    ///
    /// # Errors
    /// [`Error::Cache`].
    pub fn dir(&self, dir: &[u8]) -> Result<HashMap<Vec<u8>, CachedFile>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, size, mtime_s, mtime_ns, ctime_s, ctime_ns, ino, dev, content, extents, xattrs
                 FROM files WHERE dir = ?1",
            )
            .map_err(|e| sql(&self.path, e))?;
        let rows = stmt
            .query_map(params![dir], |r| {
                let content: Vec<u8> = r.get(8)?;
                let extents: Option<Vec<u8>> = r.get(9)?;
                let xattrs: Option<Vec<u8>> = r.get(10)?;
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    (r.get::<_, i64>(2)?, r.get::<_, i64>(3)?),
                    (r.get::<_, i64>(4)?, r.get::<_, i64>(5)?),
                    r.get::<_, i64>(6)?,
                    r.get::<_, i64>(7)?,
                    content,
                    extents,
                    xattrs,
                ))
            })
            .map_err(|e| sql(&self.path, e))?;
        let mut out = HashMap::new();
        for row in rows {
            let (name, size, m, c, ino, dev, content, extents, xattrs) =
                row.map_err(|e| sql(&self.path, e))?;
            // A row that does not decode is ignored: the file is read again.
            let Some(content) = content
                .chunks(32)
                .map(BlobId::from_slice)
                .collect::<Option<Vec<_>>>()
            else {
                continue;
            };
            let extents = extents.map(|e| {
                e.chunks_exact(16)
                    .map(|x| {
                        let (a, b) = x.split_at(8);
                        (
                            u64::from_le_bytes(a.try_into().unwrap_or_default()),
                            u64::from_le_bytes(b.try_into().unwrap_or_default()),
                        )
                    })
                    .collect()
            });
            // Empty: none. A list that does not parse is read again.
            let xattrs = xattrs.and_then(|x| match x.as_slice() {
                [] => Some(Vec::new()),
                json => serde_json::from_slice(json).ok(),
            });
            out.insert(
                name,
                CachedFile {
                    size: size as u64,
                    mtime: Time(m.0, m.1 as u32),
                    ctime: Time(c.0, c.1 as u32),
                    ino: ino as u64,
                    dev: dev as u64,
                    content,
                    extents,
                    xattrs,
                },
            );
        }
        Ok(out)
    }

    /// Starts a writer thread with its own connection and one transaction.
    ///
    /// # Errors
    /// [`Error::Cache`].
    pub fn writer(&self) -> Result<CacheWriter, Error> {
        let path = self.path.clone();
        let conn = open_conn(&path).map_err(|e| sql(&path, e))?;
        // Bounded: a writer behind the walk slows it instead of queueing
        // a row per file in memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Op>(4096);
        let handle = std::thread::Builder::new()
            .name("tessera-cache".into())
            .spawn(move || write_loop(conn, &rx).map_err(|e| sql(&path, e)))
            .map_err(|e| Error::Cache {
                path: self.path.clone(),
                message: e.to_string(),
            })?;
        Ok(CacheWriter {
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Number of cached files.
    ///
    /// # Errors
    /// [`Error::Cache`].
    pub fn count(&self) -> Result<u64, Error> {
        self.conn
            .query_row("SELECT count(*) FROM files", [], |r| r.get::<_, i64>(0))
            .optional()
            .map(|n| n.unwrap_or(0) as u64)
            .map_err(|e| sql(&self.path, e))
    }
}

enum Op {
    Put(Vec<u8>, Vec<u8>, CachedFile),
    Delete(Vec<u8>, Vec<u8>),
    Commit,
}

fn write_loop(mut conn: Connection, rx: &std::sync::mpsc::Receiver<Op>) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut put = tx.prepare(
            "INSERT OR REPLACE INTO files
             (dir, name, size, mtime_s, mtime_ns, ctime_s, ctime_ns, ino, dev, content, extents, xattrs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        let mut del = tx.prepare("DELETE FROM files WHERE dir = ?1 AND name = ?2")?;
        for op in rx {
            match op {
                Op::Put(dir, name, f) => {
                    let content: Vec<u8> = f.content.iter().flat_map(|id| *id.as_bytes()).collect();
                    let extents: Option<Vec<u8>> = f.extents.map(|e| {
                        e.iter()
                            .flat_map(|(a, b)| a.to_le_bytes().into_iter().chain(b.to_le_bytes()))
                            .collect()
                    });
                    let xattrs: Option<Vec<u8>> = f.xattrs.map(|x| {
                        if x.is_empty() {
                            Vec::new()
                        } else {
                            serde_json::to_vec(&x).unwrap_or_default()
                        }
                    });
                    put.execute(params![
                        dir,
                        name,
                        f.size as i64,
                        f.mtime.0,
                        i64::from(f.mtime.1),
                        f.ctime.0,
                        i64::from(f.ctime.1),
                        f.ino as i64,
                        f.dev as i64,
                        content,
                        extents,
                        xattrs
                    ])?;
                }
                Op::Delete(dir, name) => {
                    del.execute(params![dir, name])?;
                }
                Op::Commit => {
                    drop((put, del));
                    return tx.commit();
                }
            }
        }
    }
    // The sender went away without a commit: roll back.
    Ok(())
}

/// Queues cache updates; [`CacheWriter::commit`] makes them durable.
pub struct CacheWriter {
    tx: Option<std::sync::mpsc::SyncSender<Op>>,
    handle: Option<std::thread::JoinHandle<Result<(), Error>>>,
}

impl CacheWriter {
    /// A handle other threads can queue updates with.
    pub fn sender(&self) -> CacheSender {
        CacheSender(self.tx.clone())
    }

    /// Commits every queued update.
    ///
    /// # Errors
    /// [`Error::Cache`].
    pub fn commit(mut self) -> Result<(), Error> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Op::Commit);
        }
        match self.handle.take().map(std::thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(Error::Internal("the cache writer panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // Without a commit, dropping the sender rolls the transaction back.
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Queues cache updates from any thread.
#[derive(Clone)]
pub struct CacheSender(Option<std::sync::mpsc::SyncSender<Op>>);

impl CacheSender {
    /// A sender that drops everything (no cache).
    pub fn none() -> Self {
        CacheSender(None)
    }

    /// Records `name` in `dir`.
    pub fn put(&self, dir: &[u8], name: &[u8], file: CachedFile) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(Op::Put(dir.to_vec(), name.to_vec(), file));
        }
    }

    /// Forgets `name` in `dir`.
    pub fn delete(&self, dir: &[u8], name: &[u8]) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(Op::Delete(dir.to_vec(), name.to_vec()));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file(n: u8) -> CachedFile {
        CachedFile {
            size: 10,
            mtime: Time(1, 2),
            ctime: Time(3, 4),
            ino: 5,
            dev: 6,
            content: vec![BlobId::from_slice(&[n; 32]).unwrap()],
            extents: Some(vec![(0, 4), (8, 2)]),
            xattrs: match n {
                1 => None,
                2 => Some(vec![]),
                _ => Some(vec![Xattr {
                    name: "user.a".into(),
                    value: vec![0, 1, 255],
                }]),
            },
        }
    }

    #[test]
    fn commit_persists_and_drop_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c/files.db");
        let cache = FilesCache::open(&path).unwrap();
        let w = cache.writer().unwrap();
        w.sender().put(b"/a", b"x", file(1));
        w.sender().put(b"/a", b"y", file(2));
        w.sender().put(b"/a", b"z", file(3));
        w.commit().unwrap();
        let w = cache.writer().unwrap();
        w.sender().delete(b"/a", b"x");
        drop(w);
        let got = cache.dir(b"/a").unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[&b"x".to_vec()], file(1));
        assert_eq!(got[&b"y".to_vec()], file(2));
        assert_eq!(got[&b"z".to_vec()], file(3));
        let w = cache.writer().unwrap();
        w.sender().delete(b"/a", b"x");
        w.commit().unwrap();
        assert_eq!(cache.dir(b"/a").unwrap().len(), 2);
        assert!(cache.dir(b"/b").unwrap().is_empty());
    }

    #[test]
    fn a_cache_of_another_schema_version_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("files.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch(
            "CREATE TABLE files (dir BLOB, name BLOB); INSERT INTO files VALUES (x'2f61', x'78');",
        )
        .unwrap();
        drop(old);
        let cache = FilesCache::open(&path).unwrap();
        assert_eq!(cache.count().unwrap(), 0);
        let w = cache.writer().unwrap();
        w.sender().put(b"/a", b"x", file(3));
        w.commit().unwrap();
        drop(cache);
        let cache = FilesCache::open(&path).unwrap();
        assert_eq!(cache.dir(b"/a").unwrap()[&b"x".to_vec()], file(3));
    }

    #[test]
    fn a_cache_damaged_inside_fails_its_queries_and_is_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("files.db");
        let cache = FilesCache::open(&path).unwrap();
        let w = cache.writer().unwrap();
        for i in 0..2000u64 {
            w.sender()
                .put(b"/a", format!("f{i}").as_bytes(), file(i as u8));
        }
        w.commit().unwrap();
        drop(cache);
        // Wreck every page but the first (the header stays valid).
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 8192, "{} bytes", bytes.len());
        for b in bytes.iter_mut().skip(4096) {
            *b = 0x5a;
        }
        std::fs::write(&path, &bytes).unwrap();
        let cache = FilesCache::open(&path).unwrap();
        let err = cache.dir(b"/a").unwrap_err().to_string();
        assert!(err.contains("files.db"), "{err}");
        cache.discard();
        assert!(!path.exists());
        drop(cache);
        let cache = FilesCache::open(&path).unwrap();
        assert_eq!(cache.count().unwrap(), 0);
    }

    #[test]
    fn a_damaged_cache_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("files.db");
        std::fs::write(&path, b"this is not a database, just garbage bytes....").unwrap();
        let cache = FilesCache::open(&path).unwrap();
        assert_eq!(cache.count().unwrap(), 0);
    }
}
