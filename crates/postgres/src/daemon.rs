//! The WAL daemon: one long-running process per repository that keeps the
//! repository open (key unwrapped, index loaded) and serves
//! `archive-wal`/`restore-wal` calls over a Unix socket.
//!
//! PostgreSQL runs `archive_command` once per WAL file and waits for it;
//! opening an encrypted repository per call (Argon2id, index load) would
//! cap archiving at a few files per second. The daemon pays that once. It
//! also looks ahead, as pgBackRest's asynchronous mode does: asked to
//! archive one file, it stores every file PostgreSQL has marked ready
//! (`archive_status/*.ready`) in the same snapshot, so the following calls
//! find their file archived already and return at once. Asked to restore a
//! segment, it reads the next few segments of the timeline into memory, as
//! recovery will ask for them next.
//!
//! Durability is unchanged: a call succeeds only once its file is in a
//! committed snapshot. The socket lives in a directory only its user can
//! enter (mode 0700); whoever can connect can archive and read WAL, which
//! is what that user's password file allows anyway. The daemon exits after
//! an idle period; a caller that finds no daemon starts one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_core::Repository;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;

use crate::wal_archive::{MAX_BATCH, PushOutcome, WalArchive, read_archived, write_whole};
use crate::{Error, Result};

/// Segments a restore reads ahead.
const PREFETCH: usize = 4;

/// A call to the daemon.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    /// Archive the WAL file at `path` (absolute).
    Push {
        /// System identifier of the cluster.
        #[serde(with = "crate::system_id_string")]
        system: u64,
        /// The file.
        path: PathBuf,
    },
    /// Restore WAL file `name` to `dest` (absolute).
    Get {
        /// System identifier of the cluster.
        #[serde(with = "crate::system_id_string")]
        system: u64,
        /// WAL file name.
        name: String,
        /// Where to write it.
        dest: PathBuf,
    },
}

/// The daemon's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Reply {
    /// Done.
    Ok {
        /// What was done.
        message: String,
    },
    /// Restore: no such file in the archive (recovery treats it as the end
    /// of the archive).
    NotFound {
        /// What was asked.
        message: String,
    },
    /// A failure of this file (conflict, unreadable): PostgreSQL retries.
    Failed {
        /// Why.
        message: String,
    },
    /// The repository failed (storage, corruption): recovery must stop.
    RepositoryError {
        /// Why.
        message: String,
    },
}

/// WAL files read ahead, by system and name.
type Prefetched = HashMap<(u64, String), Arc<Vec<u8>>>;

struct State {
    repo: Repository,
    archive: Mutex<WalArchive>,
    prefetched: Mutex<Prefetched>,
}

/// Serves requests on `socket` until no request came for `idle`.
///
/// # Errors
/// Binding the socket; loading the WAL catalog.
pub async fn serve(repo: Repository, socket: &Path, idle: Duration) -> Result<()> {
    let listener = bind(socket)?;
    let archive = WalArchive::load(&repo).await?;
    let state = Arc::new(State {
        repo,
        archive: Mutex::new(archive),
        prefetched: Mutex::new(HashMap::new()),
    });
    loop {
        let accepted = tokio::time::timeout(idle, listener.accept()).await;
        let Ok(accepted) = accepted else {
            break;
        };
        let (stream, _) =
            accepted.map_err(|e| Error::io(format!("accepting on {}", socket.display()), e))?;
        let state = state.clone();
        tokio::spawn(async move {
            let _ = handle(state, stream).await;
        });
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

/// Binds the socket, replacing a stale one (no daemon answering on it).
fn bind(socket: &Path) -> Result<UnixListener> {
    match UnixListener::bind(socket) {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(Error::InvalidArgument(format!(
                    "a WAL daemon already serves {}",
                    socket.display()
                )));
            }
            std::fs::remove_file(socket)
                .map_err(|e| Error::io(format!("removing stale socket {}", socket.display()), e))?;
            UnixListener::bind(socket)
                .map_err(|e| Error::io(format!("binding {}", socket.display()), e))
        }
        Err(e) => Err(Error::io(format!("binding {}", socket.display()), e)),
    }
}

async fn handle(state: Arc<State>, stream: UnixStream) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Push { system, path }) => push(&state, system, path).await,
            Ok(Request::Get { system, name, dest }) => get(&state, system, name, dest).await,
            Err(e) => Reply::Failed {
                message: format!("bad request: {e}"),
            },
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

async fn push(state: &State, system: u64, path: PathBuf) -> Reply {
    let mut paths = vec![path.clone()];
    paths.extend(ready_files(&path, MAX_BATCH - 1));
    let mut archive = state.archive.lock().await;
    // Look-ahead files already archived need no second look.
    paths.retain(|p| {
        *p == path
            || p.file_name()
                .and_then(|n| n.to_str())
                .is_none_or(|n| archive.get(system, n).is_none())
    });
    match archive.push(&state.repo, system, &paths).await {
        Ok(outcomes) => push_reply(&path, outcomes.into_iter().next()),
        Err(Error::InvalidArgument(m)) => Reply::Failed { message: m },
        Err(e) => Reply::RepositoryError {
            message: format!("archiving {}: {e}", path.display()),
        },
    }
}

/// The reply for the file asked about.
pub fn push_reply(path: &Path, outcome: Option<PushOutcome>) -> Reply {
    let shown = path.display();
    match outcome {
        Some(PushOutcome::Stored) => Reply::Ok {
            message: format!("archived {shown}"),
        },
        Some(PushOutcome::AlreadyArchived) => Reply::Ok {
            message: format!("{shown} was already archived with the same content"),
        },
        Some(PushOutcome::Conflict) => Reply::Failed {
            message: format!(
                "{shown}: a WAL file of this name is already archived with different content; not replaced"
            ),
        },
        Some(PushOutcome::Failed(why)) => Reply::Failed {
            message: format!("{shown}: {why}"),
        },
        None => Reply::Failed {
            message: format!("{shown}: no outcome"),
        },
    }
}

/// The other files PostgreSQL has marked ready next to `path`, oldest first.
fn ready_files(path: &Path, max: usize) -> Vec<PathBuf> {
    let Some(dir) = path.parent() else {
        return Vec::new();
    };
    let Ok(listing) = std::fs::read_dir(dir.join("archive_status")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = listing
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ready")
                .map(str::to_string)
        })
        .filter(|n| {
            crate::wal::WalName::parse(n).is_some()
                && Some(n.as_str()) != path.file_name().and_then(|f| f.to_str())
        })
        .collect();
    names.sort();
    names.truncate(max);
    names.into_iter().map(|n| dir.join(n)).collect()
}

async fn get(state: &Arc<State>, system: u64, name: String, dest: PathBuf) -> Reply {
    let cached = state
        .prefetched
        .lock()
        .await
        .remove(&(system, name.clone()));
    let bytes = match cached {
        Some(b) => Ok(b),
        None => fetch(state, system, &name).await,
    };
    let reply = match bytes {
        Ok(b) => match write_whole(&dest, &b) {
            Ok(()) => Reply::Ok {
                message: format!("restored {name} to {}", dest.display()),
            },
            Err(e) => Reply::Failed {
                message: e.to_string(),
            },
        },
        Err(Error::NotArchived { .. }) => Reply::NotFound {
            message: format!("{name} is not in the archive of system {system}"),
        },
        Err(e) => Reply::RepositoryError {
            message: format!("restoring {name}: {e}"),
        },
    };
    if matches!(reply, Reply::Ok { .. }) {
        prefetch(state.clone(), system, &name).await;
    }
    reply
}

/// Reads `name`, reloading the catalog (and the index) once when it is not
/// known yet: another process may have archived it since.
async fn fetch(state: &State, system: u64, name: &str) -> Result<Arc<Vec<u8>>> {
    let archived = {
        let mut archive = state.archive.lock().await;
        if archive.get(system, name).is_none() {
            *archive = WalArchive::load(&state.repo).await?;
        }
        archive
            .get(system, name)
            .cloned()
            .ok_or_else(|| Error::NotArchived {
                name: name.to_string(),
                system,
            })?
    };
    read_archived(&state.repo, &archived).await.map(Arc::new)
}

/// Starts reading the segments after `name` into memory.
async fn prefetch(state: Arc<State>, system: u64, name: &str) {
    let next = state.archive.lock().await.following(system, name, PREFETCH);
    {
        let mut cache = state.prefetched.lock().await;
        // Keep only what recovery may still ask for.
        cache.retain(|(s, n), _| *s != system || next.contains(n));
    }
    tokio::spawn(async move {
        for n in next {
            if state
                .prefetched
                .lock()
                .await
                .contains_key(&(system, n.clone()))
            {
                continue;
            }
            let Ok(bytes) = fetch(&state, system, &n).await else {
                return;
            };
            state.prefetched.lock().await.insert((system, n), bytes);
        }
    });
}

/// Sends one request to the daemon on `socket`.
///
/// # Errors
/// Connecting (no daemon), or the daemon went away before answering.
pub async fn call(socket: &Path, request: &Request) -> std::io::Result<Reply> {
    let stream = UnixStream::connect(socket).await?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    let answer = lines.next_line().await?.ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the WAL daemon closed the connection",
        )
    })?;
    serde_json::from_str(&answer).map_err(std::io::Error::other)
}
