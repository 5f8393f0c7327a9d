//! Read-only memory maps of local pack files: the crate's only `unsafe`.
//!
//! A restore or a check reads most of every pack it touches. Reading a
//! range into a buffer costs a fresh allocation (page faults on first
//! touch) and a copy out of the page cache; a mapping hands the page
//! cache's own pages to the decryptor.
#![allow(unsafe_code)]

use std::fs::File;
use std::ops::Range;

use bytes::Bytes;
use memmap2::MmapOptions;

/// Maps `range` of `file`, its pages faulted in at once (`MAP_POPULATE`:
/// here, on the I/O thread, not page by page on the threads that decrypt).
/// The caller has checked that the file holds the whole range.
pub(super) fn map_range(file: &File, range: Range<u64>) -> std::io::Result<Bytes> {
    let len = usize::try_from(range.end - range.start)
        .map_err(|_| std::io::Error::other("range larger than the address space"))?;
    // SAFETY: a mapped file that changes or shrinks while mapped changes
    // the bytes under the reader or faults (SIGBUS). Pack files are never
    // changed after they are written: a backend writes a pack whole under
    // a temporary name and links it into place (create-only), nothing
    // opens one for writing again, and deleting one (prune) leaves an
    // existing mapping intact. Only damage from outside (a truncation of
    // the very pack, while it is read) could fault; see HAZARDS.md H35.
    let map = unsafe {
        MmapOptions::new()
            .offset(range.start)
            .len(len)
            .populate()
            .map(file)?
    };
    Ok(Bytes::from_owner(map))
}
