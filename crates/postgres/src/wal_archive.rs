//! The WAL archive: WAL files stored as snapshots of kind [`KIND_WAL`],
//! one stream per file, several files per snapshot (a *batch*: whatever
//! was ready when the archiver called).
//!
//! The snapshot's `source_meta` ([`WalBatchMeta`]) lists each file's name,
//! size and BLAKE3 hash, so the catalog of what is archived is built from
//! the snapshot list alone (no tree reads), and "already archived with the
//! same content" is decided without reading the archived copy back.
//!
//! PostgreSQL's contract (`archive_command`): success only once the file is
//! durable, which here means once its snapshot is committed (the engine
//! writes a snapshot after everything it references is stored); the same
//! name with the same content is success; with different content a failure,
//! and nothing already archived is ever replaced.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tessera_core::tree::Meta;
use tessera_core::{BackupOptions, Content, Entry, Repository, SnapshotId};

use crate::wal::WalName;
use crate::{Error, KIND_WAL, Result, cluster_path};

/// One archived file, as its batch's metadata records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalFileMeta {
    /// File name (`000000010000000000000003`, `00000002.history`, ...).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// BLAKE3 hash of the content, hex.
    pub blake3: String,
}

/// `source_meta` of a [`KIND_WAL`] snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalBatchMeta {
    /// The cluster's system identifier (decimal string in JSON).
    #[serde(with = "crate::system_id_string")]
    pub system_id: u64,
    /// The files of the batch.
    pub files: Vec<WalFileMeta>,
}

/// Where an archived file is.
#[derive(Clone, Debug)]
pub struct Archived {
    /// The batch snapshot holding it.
    pub snapshot: SnapshotId,
    /// Its record.
    pub file: WalFileMeta,
}

/// What happened to one file handed to [`WalArchive::push`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored now.
    Stored,
    /// Already archived with the same content.
    AlreadyArchived,
    /// Already archived with different content: refused.
    Conflict,
    /// Could not be read (the message says why).
    Failed(String),
}

/// The catalog of archived WAL files of a repository, by system and name.
#[derive(Clone, Debug, Default)]
pub struct WalArchive {
    files: BTreeMap<(u64, String), Archived>,
}

/// Largest batch [`WalArchive::push`] stores in one snapshot.
pub const MAX_BATCH: usize = 32;

impl WalArchive {
    /// Builds the catalog from the repository's snapshot list.
    ///
    /// # Errors
    /// Listing or reading snapshots; a WAL snapshot whose metadata does not
    /// decode.
    pub async fn load(repo: &Repository) -> Result<Self> {
        let mut archive = WalArchive::default();
        for entry in repo.snapshots().await? {
            if entry.snapshot.source_kind != KIND_WAL {
                continue;
            }
            let meta = batch_meta(&entry.snapshot.source_meta, entry.id)?;
            for file in meta.files {
                // Two batches may hold one name (two archivers raced): the
                // content is the same (a conflict is never stored), keep one.
                archive
                    .files
                    .entry((meta.system_id, file.name.clone()))
                    .or_insert(Archived {
                        snapshot: entry.id,
                        file,
                    });
            }
        }
        Ok(archive)
    }

    /// The archived file `name` of `system`.
    pub fn get(&self, system: u64, name: &str) -> Option<&Archived> {
        self.files.get(&(system, name.to_string()))
    }

    /// Every archived file of `system`, in name order.
    pub fn files(&self, system: u64) -> impl Iterator<Item = &Archived> {
        self.files
            .range((system, String::new())..)
            .take_while(move |((s, _), _)| *s == system)
            .map(|(_, a)| a)
    }

    /// The names after `name` of the same timeline's segments, in order (what
    /// a recovery will ask for next).
    pub fn following(&self, system: u64, name: &str, n: usize) -> Vec<String> {
        let timeline = &name[..name.len().min(8)];
        self.files
            .range((system, name.to_string())..)
            .skip(1)
            .take_while(|((s, _), _)| *s == system)
            .map(|((_, f), _)| f)
            .filter(|f| f.len() == 24 && f.starts_with(timeline))
            .take(n)
            .cloned()
            .collect()
    }

    /// Archives the files at `paths` (all of one cluster, `system`) in one
    /// snapshot, and returns what became of each, in order. Files already
    /// archived are compared, not stored again.
    ///
    /// # Errors
    /// A name PostgreSQL would not archive; storage errors (then nothing of
    /// this call counts as archived).
    pub async fn push(
        &mut self,
        repo: &Repository,
        system: u64,
        paths: &[PathBuf],
    ) -> Result<Vec<PushOutcome>> {
        let mut outcomes = vec![PushOutcome::Stored; paths.len()];
        let mut to_store = Vec::new();
        for (i, path) in paths.iter().enumerate() {
            let name = wal_file_name(path)?;
            if let Some(archived) = self.get(system, &name) {
                outcomes[i] = match hash_file(path) {
                    Ok(file) if file.blake3 == archived.file.blake3 => PushOutcome::AlreadyArchived,
                    Ok(_) => PushOutcome::Conflict,
                    Err(e) => PushOutcome::Failed(e.to_string()),
                };
            } else if !to_store.iter().any(|(_, n, _)| n == &name) {
                to_store.push((i, name, path.clone()));
            }
        }
        if to_store.is_empty() {
            return Ok(outcomes);
        }
        let stored = self.store(repo, system, &to_store).await?;
        for (i, name, _) in &to_store {
            outcomes[*i] = match stored.get(name) {
                Some(Ok(())) => PushOutcome::Stored,
                Some(Err(e)) => PushOutcome::Failed(e.clone()),
                None => PushOutcome::Failed("not read".into()),
            };
        }
        Ok(outcomes)
    }

    /// Stores `files` in one snapshot; returns per name whether it was read.
    async fn store(
        &mut self,
        repo: &Repository,
        system: u64,
        files: &[(usize, String, PathBuf)],
    ) -> Result<BTreeMap<String, std::result::Result<(), String>>> {
        let hashes: Vec<Arc<Mutex<Option<WalFileMeta>>>> =
            files.iter().map(|_| Arc::new(Mutex::new(None))).collect();
        let entries: Vec<Entry> = files
            .iter()
            .zip(&hashes)
            .map(|((_, name, path), slot)| Entry::File {
                name: name.clone().into_bytes(),
                meta: Meta::null(),
                content: Content::Read(Box::new(HashingFile::new(
                    path.clone(),
                    name.clone(),
                    slot.clone(),
                ))),
                on_stored: None,
            })
            .collect();
        let tree = repo.store_tree(entries.into_iter(), None).await?;
        let mut result = BTreeMap::new();
        let mut meta = WalBatchMeta {
            system_id: system,
            files: Vec::new(),
        };
        for ((_, name, path), slot) in files.iter().zip(&hashes) {
            let done = slot.lock().ok().and_then(|mut s| s.take());
            match done {
                Some(file) => {
                    meta.files.push(file);
                    result.insert(name.clone(), Ok(()));
                }
                None => {
                    let why = tree
                        .warnings
                        .iter()
                        .find(|w| w.contains(name.as_str()))
                        .cloned()
                        .unwrap_or_else(|| format!("{} could not be read", path.display()));
                    result.insert(name.clone(), Err(why));
                }
            }
        }
        if meta.files.is_empty() {
            repo.abandon_tree(tree).await;
            return Ok(result);
        }
        let options = BackupOptions {
            paths: vec![cluster_path(system)],
            source_kind: Some(KIND_WAL.into()),
            source_meta: serde_json::to_value(&meta)
                .map_err(|e| Error::InvalidArgument(format!("WAL batch metadata: {e}")))?,
            ..BackupOptions::default()
        };
        let summary = repo.commit_snapshot(tree, options).await?;
        for file in meta.files {
            self.files.insert(
                (system, file.name.clone()),
                Archived {
                    snapshot: summary.id,
                    file,
                },
            );
        }
        Ok(result)
    }

    /// Reads archived file `name` of `system` into memory (see [`read_archived`]).
    ///
    /// # Errors
    /// [`Error::NotArchived`]; as [`read_archived`].
    pub async fn read(&self, repo: &Repository, system: u64, name: &str) -> Result<Vec<u8>> {
        let archived = self.get(system, name).ok_or_else(|| Error::NotArchived {
            name: name.to_string(),
            system,
        })?;
        read_archived(repo, archived).await
    }
}

/// Reads an archived file into memory, checking its hash against its record.
///
/// # Errors
/// Repository errors; a content that does not match its record
/// ([`tessera_core::Error::Corrupt`]).
pub async fn read_archived(repo: &Repository, archived: &Archived) -> Result<Vec<u8>> {
    let name = &archived.file.name;
    let snapshot = repo.read_snapshot(archived.snapshot).await?;
    let mut out = Vec::with_capacity(usize::try_from(archived.file.size).unwrap_or(0));
    match repo.restore_stream(&snapshot, name, &mut out).await {
        // Archived by another process after this handle loaded its index.
        Err(tessera_core::Error::BlobNotIndexed { .. }) => {
            repo.reload_index_now().await?;
            out.clear();
            repo.restore_stream(&snapshot, name, &mut out).await?;
        }
        other => {
            other?;
        }
    }
    if hex::encode(blake3::hash(&out).as_bytes()) != archived.file.blake3 {
        return Err(tessera_core::Error::corrupt(
            format!("WAL file {name} in snapshot {}", archived.snapshot.short()),
            "its content does not match the hash recorded when it was archived",
        )
        .into());
    }
    Ok(out)
}

/// Writes `bytes` to `dest` without ever leaving a partial file there: a
/// temporary file in the same directory, renamed over `dest` when complete.
///
/// # Errors
/// Writing or renaming, naming the file.
pub fn write_whole(dest: &Path, bytes: &[u8]) -> Result<()> {
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest
        .file_name()
        .ok_or_else(|| Error::InvalidArgument(format!("{} is not a file path", dest.display())))?;
    let tmp = dir.join(format!(".{}.tessera-tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.flush()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(format!("writing {}", tmp.display()), e));
    }
    std::fs::rename(&tmp, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(
            format!("renaming {} to {}", tmp.display(), dest.display()),
            e,
        )
    })
}

/// The WAL file name of `path`, checked.
///
/// # Errors
/// [`Error::InvalidArgument`] for a name PostgreSQL would not archive.
pub fn wal_file_name(path: &Path) -> Result<String> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    WalName::parse(name).map(|w| w.name).ok_or_else(|| {
        Error::InvalidArgument(format!(
            "{} is not a WAL file name (segment, .history, .backup or .partial)",
            path.display()
        ))
    })
}

/// The batch metadata of a WAL snapshot.
///
/// # Errors
/// [`tessera_core::Error::Corrupt`] when it does not decode.
pub fn batch_meta(value: &serde_json::Value, id: SnapshotId) -> Result<WalBatchMeta> {
    serde_json::from_value(value.clone()).map_err(|e| {
        tessera_core::Error::corrupt(
            format!("snapshot {}", id.short()),
            format!("WAL batch metadata does not decode: {e}"),
        )
        .into()
    })
}

fn hash_file(path: &Path) -> std::io::Result<WalFileMeta> {
    let mut hasher = blake3::Hasher::new();
    let size = std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(WalFileMeta {
        name: String::new(),
        size,
        blake3: hex::encode(hasher.finalize().as_bytes()),
    })
}

/// Reads a file (opened on first read, on the engine's reading thread),
/// hashing it; at end of file, records name, size and hash in `slot`.
struct HashingFile {
    path: PathBuf,
    name: String,
    file: Option<std::fs::File>,
    hasher: blake3::Hasher,
    size: u64,
    slot: Arc<Mutex<Option<WalFileMeta>>>,
}

impl HashingFile {
    fn new(path: PathBuf, name: String, slot: Arc<Mutex<Option<WalFileMeta>>>) -> Self {
        HashingFile {
            path,
            name,
            file: None,
            hasher: blake3::Hasher::new(),
            size: 0,
            slot,
        }
    }
}

impl Read for HashingFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(std::fs::File::open(&self.path)?),
        };
        let n = file.read(buf)?;
        if n == 0 {
            if let Ok(mut slot) = self.slot.lock() {
                *slot = Some(WalFileMeta {
                    name: self.name.clone(),
                    size: self.size,
                    blake3: hex::encode(self.hasher.finalize().as_bytes()),
                });
            }
        } else {
            self.hasher.update(&buf[..n]);
            self.size += n as u64;
        }
        Ok(n)
    }
}
