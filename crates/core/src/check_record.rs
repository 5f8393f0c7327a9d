//! The record of which packs `check` read in full and found intact, and
//! when: a time-boxed check (`check --max-duration 10m` every night) reads
//! the packs verified longest ago first, so successive runs cover the
//! whole repository. Kept in a local SQLite file beside the other caches;
//! like them it is disposable: losing it only means packs are read again.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rusqlite::{Connection, params};

use crate::error::{Error, Result};
use crate::id::PackId;

/// When each pack was last verified.
pub struct VerifiedLog {
    path: PathBuf,
    conn: Connection,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS verified (
    pack BLOB PRIMARY KEY NOT NULL,
    at INTEGER NOT NULL
) WITHOUT ROWID;";

impl VerifiedLog {
    /// Opens (or creates) the record at `path`; a damaged one is started
    /// afresh.
    ///
    /// # Errors
    /// [`Error::Io`] when it cannot be created at all.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            crate::storage::private::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        crate::storage::private::create_file(path)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let conn = match Self::connect(path) {
            Ok(c) => c,
            Err(_) => {
                let _ = std::fs::remove_file(path);
                let _ = crate::storage::private::create_file(path);
                Self::connect(path).map_err(|e| sql(path, e))?
            }
        };
        Ok(VerifiedLog {
            path: path.to_path_buf(),
            conn,
        })
    }

    fn connect(path: &Path) -> rusqlite::Result<Connection> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))?;
        conn.execute_batch(SCHEMA)?;
        Ok(conn)
    }

    /// When each of `packs` was last verified (`None`: never).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn last_verified(&self, packs: &[PackId]) -> Result<Vec<Option<Timestamp>>> {
        let mut q = self
            .conn
            .prepare_cached("SELECT at FROM verified WHERE pack = ?1")
            .map_err(|e| sql(&self.path, e))?;
        packs
            .iter()
            .map(|p| {
                let at: Option<i64> = q
                    .query_row(params![&p.0[..]], |r| r.get(0))
                    .map(Some)
                    .or_else(|e| match e {
                        rusqlite::Error::QueryReturnedNoRows => Ok(None),
                        e => Err(e),
                    })
                    .map_err(|e| sql(&self.path, e))?;
                Ok(at.and_then(|s| Timestamp::from_second(s).ok()))
            })
            .collect()
    }

    /// `packs` in the order a time-boxed check reads them: never verified
    /// first, then verified longest ago first (ties by id).
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn stalest_first(&self, packs: &[PackId]) -> Result<Vec<PackId>> {
        let mut v: Vec<(Option<Timestamp>, PackId)> = self
            .last_verified(packs)?
            .into_iter()
            .zip(packs.iter().copied())
            .collect();
        v.sort();
        Ok(v.into_iter().map(|(_, p)| p).collect())
    }

    /// Records `packs` as verified at `at`.
    ///
    /// # Errors
    /// [`Error::Io`] naming the file.
    pub fn record(&mut self, packs: &[PackId], at: Timestamp) -> Result<()> {
        let tx = self.conn.transaction().map_err(|e| sql(&self.path, e))?;
        {
            let mut q = tx
                .prepare_cached("INSERT OR REPLACE INTO verified (pack, at) VALUES (?1, ?2)")
                .map_err(|e| sql(&self.path, e))?;
            for p in packs {
                q.execute(params![&p.0[..], at.as_second()])
                    .map_err(|e| sql(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| sql(&self.path, e))
    }
}

fn sql(path: &Path, e: rusqlite::Error) -> Error {
    Error::io(
        format!("the check record {}", path.display()),
        std::io::Error::other(e),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalest_first_and_survives_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/check.db");
        let packs: Vec<PackId> = (1..=4u8).map(|b| PackId([b; 32])).collect();
        let mut log = VerifiedLog::open(&path).unwrap();
        assert_eq!(
            log.stalest_first(&packs).unwrap(),
            packs,
            "none verified: by id"
        );
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        log.record(&packs[..1], t(2_000)).unwrap();
        log.record(&packs[2..3], t(1_000)).unwrap();
        log.record(&packs[3..], t(3_000)).unwrap();
        let order = log.stalest_first(&packs).unwrap();
        assert_eq!(order, [packs[1], packs[2], packs[0], packs[3]]);
        assert_eq!(log.last_verified(&packs[..1]).unwrap(), [Some(t(2_000))]);
        drop(log);
        // Reopened, it remembers; damaged, it starts afresh.
        let log = VerifiedLog::open(&path).unwrap();
        assert_eq!(log.stalest_first(&packs).unwrap(), order);
        drop(log);
        std::fs::write(&path, b"not a database").unwrap();
        let log = VerifiedLog::open(&path).unwrap();
        assert_eq!(log.stalest_first(&packs).unwrap(), packs);
    }
}
