//! Reading one file of a snapshot back as a whole file.

use std::io::{Read as _, Write};
use std::path::Path;

use tessera_core::{NodeKind, Repository, Snapshot};

use crate::{Error, FsMeta, find_node};

/// Writes one file of a filesystem snapshot to `out` as the whole file:
/// a sparse file's holes become zeros, without the file being held in
/// memory (`tessera dump`; a VM disk stored as a sparse file reads back
/// as a raw image). Returns the bytes written.
///
/// # Errors
/// [`Error::Invalid`] for a path that is not a regular file; content that
/// does not match the file's data extents ([`Error::Core`], corrupt);
/// reading the repository; writing `out`.
pub async fn dump_file(
    repo: &Repository,
    snapshot: &Snapshot,
    path: &Path,
    out: &mut (impl Write + Send),
) -> Result<u64, Error> {
    let shown = path.display();
    let node = find_node(repo, snapshot, path)
        .await?
        .ok_or_else(|| Error::Invalid(format!("{shown}: a directory, not a file")))?;
    let meta = FsMeta::from_meta(&node.meta).map_err(Error::Invalid)?;
    if !matches!(node.kind, NodeKind::Stream { .. }) {
        return Err(Error::Invalid(format!("{shown}: not a regular file")));
    }
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        operation: "writing the dumped file",
        source,
    };
    match &meta.extents {
        None => Ok(repo.restore_node(&node, out).await?),
        Some(extents) => {
            let mut file = Holes {
                out,
                extents: extents.iter(),
                left: 0,
                pos: 0,
            };
            repo.restore_node(&node, &mut file).await?;
            if file.left > 0 || file.extents.next().is_some() {
                return Err(tessera_core::Error::corrupt(
                    format!("file {shown}"),
                    "content shorter than its data extents",
                )
                .into());
            }
            let rest = meta.size.saturating_sub(file.pos);
            std::io::copy(&mut std::io::repeat(0).take(rest), file.out).map_err(io)?;
            Ok(meta.size.max(file.pos))
        }
    }
}

/// Writes a sparse file's content (its data extents concatenated) as the
/// whole file, zeros where the holes are, without holding it in memory.
struct Holes<'a, W: Write> {
    out: &'a mut W,
    extents: std::slice::Iter<'a, (u64, u64)>,
    /// Bytes left in the current extent.
    left: u64,
    /// File offset written up to.
    pos: u64,
}

impl<W: Write> Write for Holes<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut done = 0usize;
        while done < buf.len() {
            if self.left == 0 {
                let (off, len) = self
                    .extents
                    .next()
                    .ok_or_else(|| std::io::Error::other("content longer than its data extents"))?;
                let gap = off.checked_sub(self.pos).ok_or_else(|| {
                    std::io::Error::other("data extents overlap or are out of order")
                })?;
                std::io::copy(&mut std::io::repeat(0).take(gap), self.out)?;
                (self.pos, self.left) = (*off, *len);
                continue;
            }
            let n = (self.left as usize).min(buf.len() - done);
            self.out
                .write_all(buf.get(done..done + n).unwrap_or_default())?;
            (self.pos, self.left, done) = (self.pos + n as u64, self.left - n as u64, done + n);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}
