//! Turns the tar stream `pg_basebackup -Ft -D -` writes into the engine's
//! depth-first entries, without staging it anywhere: each member's content
//! is read straight from the pipe by the engine's reading thread.
//!
//! A tar stream need not be depth-first: the server sends
//! `global/pg_control` last, after leaving `global/`. Entries are therefore
//! grouped in *parts*, root directories named `0`, `1`, ...: a member whose
//! directory was already closed starts the next part. A restore lays the
//! parts over each other in order (FORMAT.md §11).

use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tessera_core::tree::Meta;
use tessera_core::{Content, Entry};

/// Metadata of a data directory entry, from its tar header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgFileMeta {
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// The pipe and how many bytes of the current member (with its padding)
/// are still unread.
struct Pipe<R> {
    reader: BufReader<R>,
    unread: u64,
}

/// Depth-first entries from a tar stream. Errors end the entries and are
/// kept in `error` for the caller.
pub(crate) struct TarEntries<R> {
    pipe: Arc<Mutex<Pipe<R>>>,
    /// Open directories below the current part's root.
    stack: Vec<Vec<u8>>,
    closed: HashSet<Vec<Vec<u8>>>,
    part: Option<usize>,
    queue: std::collections::VecDeque<Entry>,
    done: bool,
    pub(crate) error: Arc<Mutex<Option<String>>>,
    /// The content of the root's `backup_label`, copied as it is read.
    pub(crate) backup_label: Arc<Mutex<Vec<u8>>>,
}

impl<R: Read + Send + 'static> TarEntries<R> {
    pub(crate) fn new(reader: R) -> Self {
        TarEntries {
            pipe: Arc::new(Mutex::new(Pipe {
                reader: BufReader::with_capacity(1 << 20, reader),
                unread: 0,
            })),
            stack: Vec::new(),
            closed: HashSet::new(),
            part: None,
            queue: Default::default(),
            done: false,
            error: Arc::new(Mutex::new(None)),
            backup_label: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn fail(&mut self, why: String) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(why);
        }
        self.finish();
    }

    /// Closes every open directory and the part.
    fn finish(&mut self) {
        for _ in self.stack.drain(..) {
            self.queue.push_back(Entry::EndDir);
        }
        if self.part.take().is_some() {
            self.queue.push_back(Entry::EndDir);
        }
        self.done = true;
    }

    fn close_to(&mut self, depth: usize) {
        while self.stack.len() > depth {
            self.closed.insert(self.stack.clone());
            self.stack.pop();
            self.queue.push_back(Entry::EndDir);
        }
    }

    fn start_part(&mut self) {
        self.close_to(0);
        if self.part.is_some() {
            self.queue.push_back(Entry::EndDir);
        }
        let next = self.part.map_or(0, |p| p + 1);
        self.part = Some(next);
        self.queue.push_back(Entry::Dir {
            name: next.to_string().into_bytes(),
            meta: Meta::null(),
        });
    }

    /// Opens the directories of `parent` (a part root when one of them was
    /// already closed).
    fn open_parent(&mut self, parent: &[Vec<u8>], and_then: Option<&[Vec<u8>]>) {
        let common = self
            .stack
            .iter()
            .zip(parent)
            .take_while(|(a, b)| a == b)
            .count();
        self.close_to(common);
        let reopens = (common..parent.len()).any(|i| self.closed.contains(&parent[..=i]))
            || and_then.is_some_and(|p| self.closed.contains(p));
        if reopens || self.part.is_none() {
            self.start_part();
        }
        let common = self.stack.len();
        for name in &parent[common..] {
            self.stack.push(name.clone());
            self.queue.push_back(Entry::Dir {
                name: name.clone(),
                meta: Meta::null(),
            });
        }
    }

    /// Reads the next header and queues the entries it makes.
    fn next_member(&mut self) -> Result<(), String> {
        let mut header = tar::Header::new_old();
        {
            let mut pipe = self
                .pipe
                .lock()
                .map_err(|_| "tar reader poisoned".to_string())?;
            let skip = pipe.unread;
            std::io::copy(&mut (&mut pipe.reader).take(skip), &mut std::io::sink())
                .map_err(|e| format!("reading the tar stream: {e}"))?;
            pipe.unread = 0;
            if let Err(e) = pipe.reader.read_exact(header.as_mut_bytes()) {
                return Err(format!("the tar stream ended without its end marker: {e}"));
            }
        }
        if header.as_bytes().iter().all(|&b| b == 0) {
            // Read what follows the end marker (padding, a second zero
            // block) to the end: closing the pipe early would kill the
            // writer with SIGPIPE.
            let mut pipe = self
                .pipe
                .lock()
                .map_err(|_| "tar reader poisoned".to_string())?;
            std::io::copy(&mut pipe.reader, &mut std::io::sink())
                .map_err(|e| format!("reading the tar stream: {e}"))?;
            drop(pipe);
            self.finish();
            return Ok(());
        }
        let path = header.path_bytes().into_owned();
        let mut parts: Vec<Vec<u8>> = path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .map(<[u8]>::to_vec)
            .collect();
        if parts.iter().any(|c| c == b"..") {
            return Err(format!(
                "tar member {:?} leaves the data directory",
                String::from_utf8_lossy(&path)
            ));
        }
        let Some(name) = parts.pop() else {
            return Ok(()); // "./" itself
        };
        let size = header
            .entry_size()
            .map_err(|e| format!("tar header of {name:?}: {e}"))?;
        let meta = PgFileMeta {
            mode: header.mode().unwrap_or(0o600),
            uid: header
                .uid()
                .ok()
                .and_then(|u| u32::try_from(u).ok())
                .unwrap_or(0),
            gid: header
                .gid()
                .ok()
                .and_then(|g| u32::try_from(g).ok())
                .unwrap_or(0),
            mtime: header.mtime().unwrap_or(0),
            link: None,
        };
        let kind = header.entry_type();
        let mut full = parts.clone();
        full.push(name.clone());
        if kind.is_dir() {
            self.open_parent(&parts, Some(&full));
            self.stack.push(name.clone());
            self.queue.push_back(Entry::Dir {
                name,
                meta: Meta::to_json(&meta).map_err(|e| e.to_string())?,
            });
        } else if kind.is_symlink() {
            self.open_parent(&parts, None);
            let link = header
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            let meta = PgFileMeta { link, ..meta };
            self.queue.push_back(Entry::Leaf {
                name,
                meta: Meta::to_json(&meta).map_err(|e| e.to_string())?,
            });
        } else if kind.is_file() || kind == tar::EntryType::Continuous {
            let padded = size
                .checked_next_multiple_of(512)
                .ok_or_else(|| format!("tar member {name:?} claims {size} bytes"))?;
            self.open_parent(&parts, None);
            self.pipe
                .lock()
                .map_err(|_| "tar reader poisoned".to_string())?
                .unread = padded;
            let copy =
                (parts.is_empty() && name == b"backup_label").then(|| self.backup_label.clone());
            let member = Member {
                pipe: self.pipe.clone(),
                left: size,
                copy,
            };
            let content = if is_relation_file(&parts, size) {
                Content::Chunks(Box::new(PageChunks { member }))
            } else {
                Content::Read(Box::new(member))
            };
            self.queue.push_back(Entry::File {
                name,
                meta: Meta::to_json(&meta).map_err(|e| e.to_string())?,
                content,
                on_stored: None,
            });
        } else {
            return Err(format!(
                "tar member {:?} has an unsupported type {:?}",
                String::from_utf8_lossy(&path),
                kind
            ));
        }
        Ok(())
    }
}

impl<R: Read + Send + 'static> Iterator for TarEntries<R> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        while self.queue.is_empty() && !self.done {
            if let Err(e) = self.next_member() {
                self.fail(e);
            }
        }
        self.queue.pop_front()
    }
}

/// Reads a whole tar stream as a base backup would (entries, contents),
/// returning how many entries it made and the stream's error, if any: the
/// decoder's entry point for fuzzing. Checks that directories balance.
pub fn scan(bytes: &[u8]) -> (usize, Option<String>) {
    let entries = TarEntries::new(std::io::Cursor::new(bytes.to_vec()));
    let error = entries.error.clone();
    let (mut count, mut depth) = (0usize, 0i64);
    for e in entries {
        match e {
            Entry::Dir { .. } => depth += 1,
            Entry::EndDir => depth -= 1,
            Entry::File {
                content: Content::Read(mut r),
                ..
            } => {
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            }
            Entry::File {
                content: Content::Chunks(chunks),
                ..
            } => {
                for chunk in chunks {
                    if chunk.is_err() {
                        break;
                    }
                }
            }
            _ => {}
        }
        assert!(depth >= 0, "a directory closed twice");
        count += 1;
    }
    assert_eq!(depth, 0, "directories left open");
    let error = error.lock().ok().and_then(|mut e| e.take());
    (count, error)
}

/// PostgreSQL's page size.
const PAGE: u64 = 8192;

/// Bytes per chunk of a relation file: 8 pages, aligned to the file.
///
/// PostgreSQL changes relation files a page at a time, in place: nothing
/// shifts, so content-defined cut points buy nothing and their 1 MiB
/// average would make one changed page cost a whole megabyte. Fixed,
/// page-aligned chunks make every untouched run of 8 pages dedup against
/// earlier backups. Smaller chunks dedup more of a scattered update load
/// but cost index memory (48 bytes per chunk: 768 MB per TB at 64 KiB).
pub const RELATION_CHUNK: usize = 64 * 1024;

/// Whether a member is a relation file (table, index, free space or
/// visibility map segment): under `base/`, `global/` or `pg_tblspc/`,
/// whole pages.
fn is_relation_file(dirs: &[Vec<u8>], size: u64) -> bool {
    let top = dirs.first().map(Vec::as_slice);
    matches!(top, Some(b"base" | b"global" | b"pg_tblspc")) && size > 0 && size % PAGE == 0
}

/// A relation file cut into [`RELATION_CHUNK`]-byte chunks.
struct PageChunks<R> {
    member: Member<R>,
}

impl<R: Read> Iterator for PageChunks<R> {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.member.left == 0 {
            return None;
        }
        let len = RELATION_CHUNK.min(usize::try_from(self.member.left).unwrap_or(RELATION_CHUNK));
        let mut chunk = vec![0u8; len];
        Some(self.member.read_exact(&mut chunk).map(|()| chunk))
    }
}

/// The content of one member, read from the shared pipe.
struct Member<R> {
    pipe: Arc<Mutex<Pipe<R>>>,
    left: u64,
    copy: Option<Arc<Mutex<Vec<u8>>>>,
}

impl<R: Read> Read for Member<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let mut pipe = self
            .pipe
            .lock()
            .map_err(|_| std::io::Error::other("tar reader poisoned"))?;
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = pipe.reader.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the tar stream ended inside a file",
            ));
        }
        self.left -= n as u64;
        pipe.unread -= n as u64;
        if let Some(copy) = &self.copy
            && let Ok(mut copy) = copy.lock()
        {
            copy.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(members: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, content) in members {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o700);
            match content {
                Some(c) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    b.append_data(&mut h, path, *c).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn shape(entries: TarEntries<std::io::Cursor<Vec<u8>>>) -> Vec<String> {
        entries
            .map(|e| match e {
                Entry::Dir { name, .. } => format!("D {}", String::from_utf8_lossy(&name)),
                Entry::EndDir => "E".into(),
                Entry::Leaf { name, .. } => format!("L {}", String::from_utf8_lossy(&name)),
                Entry::File {
                    name, mut content, ..
                } => {
                    let Content::Read(r) = &mut content else {
                        panic!()
                    };
                    let mut s = String::new();
                    r.read_to_string(&mut s).unwrap();
                    format!("F {}={s}", String::from_utf8_lossy(&name))
                }
            })
            .collect()
    }

    #[test]
    fn a_late_member_starts_a_new_part() {
        let tar = tar_of(&[
            ("backup_label", Some(b"label")),
            ("./global/", None),
            ("./global/1262", Some(b"a")),
            ("./base/", None),
            ("./base/1/", None),
            ("./base/1/112", Some(b"bb")),
            ("global/pg_control", Some(b"ctl")),
        ]);
        let got = shape(TarEntries::new(std::io::Cursor::new(tar)));
        assert_eq!(
            got,
            [
                "D 0",
                "F backup_label=label",
                "D global",
                "F 1262=a",
                "E",
                "D base",
                "D 1",
                "F 112=bb",
                "E",
                "E",
                "E",
                "D 1",
                "D global",
                "F pg_control=ctl",
                "E",
                "E"
            ]
        );
    }

    #[test]
    fn relation_files_are_cut_at_page_aligned_chunks() {
        let data: Vec<u8> = (0..20 * 8192u32).map(|i| (i / 8192) as u8).collect();
        let tar = tar_of(&[
            ("base/1/16384", Some(&data)),
            ("base/1/PG_VERSION", Some(b"15\n")),
        ]);
        let mut sizes = Vec::new();
        for e in TarEntries::new(std::io::Cursor::new(tar)) {
            match e {
                Entry::File {
                    content: Content::Chunks(chunks),
                    ..
                } => {
                    let chunks: Vec<Vec<u8>> = chunks.map(Result::unwrap).collect();
                    assert_eq!(chunks.concat(), data);
                    sizes = chunks.iter().map(Vec::len).collect();
                }
                Entry::File {
                    name,
                    content: Content::Read(_),
                    ..
                } => assert_eq!(name, b"PG_VERSION"),
                _ => {}
            }
        }
        assert_eq!(sizes, [RELATION_CHUNK, RELATION_CHUNK, 32 * 1024]);
    }

    #[test]
    fn a_truncated_stream_is_an_error() {
        let mut tar = tar_of(&[("base/1/112", Some(&[7u8; 2000]))]);
        tar.truncate(1024);
        let entries = TarEntries::new(std::io::Cursor::new(tar));
        let error = entries.error.clone();
        let _ = shape_lossy(entries);
        assert!(error.lock().unwrap().is_some());
    }

    fn shape_lossy(entries: TarEntries<std::io::Cursor<Vec<u8>>>) -> usize {
        entries
            .map(|e| {
                if let Entry::File { mut content, .. } = e
                    && let Content::Read(r) = &mut content
                {
                    let _ = std::io::copy(r, &mut std::io::sink());
                }
            })
            .count()
    }
}
