//! A stored stream of BSON documents (a collection's `.bson`, the
//! `oplog.bson` of a backup) cut back into documents as its chunks arrive.

use mongodb::bson::RawDocumentBuf;

use crate::{Error, Result};

/// The largest document accepted: MongoDB's 16 MiB plus the 16 KiB an
/// oplog entry may exceed it by.
pub const MAX_DOCUMENT: usize = (16 << 20) + (16 << 10);

/// Cuts a byte stream into BSON documents: each starts with its total
/// length (little-endian `i32`, at least 5) and ends with a NUL byte.
#[derive(Debug, Default)]
pub struct DocSplitter {
    partial: Vec<u8>,
    offset: u64,
}

impl DocSplitter {
    /// A splitter at offset 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the complete documents that `bytes` ends (with the bytes
    /// of earlier calls) to `out`, keeping an incomplete tail.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `what` and the stream offset of a
    /// document whose length or end is wrong.
    pub fn push(
        &mut self,
        mut bytes: &[u8],
        out: &mut Vec<RawDocumentBuf>,
        what: &str,
    ) -> Result<()> {
        if !self.partial.is_empty() {
            // Complete the pending document first.
            let need = match self.partial.get(..4) {
                Some(l) => self.check_len(l, what)?,
                None => {
                    let take = (4 - self.partial.len()).min(bytes.len());
                    self.partial.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    match self.partial.get(..4) {
                        Some(l) => self.check_len(l, what)?,
                        None => return Ok(()),
                    }
                }
            };
            let take = (need - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() < need {
                return Ok(());
            }
            let doc = std::mem::take(&mut self.partial);
            out.push(self.document(doc, what)?);
        }
        while bytes.len() >= 4 {
            let need = self.check_len(&bytes[..4], what)?;
            if bytes.len() < need {
                break;
            }
            out.push(self.document(bytes[..need].to_vec(), what)?);
            bytes = &bytes[need..];
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    /// Checks that the stream ended at a document boundary.
    ///
    /// # Errors
    /// [`Error::Corrupt`]: the stream ends inside a document.
    pub fn finish(&self, what: &str) -> Result<()> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            Err(Error::Corrupt(format!(
                "{what}: the stream ends inside a document at offset {} ({} bytes of it)",
                self.offset,
                self.partial.len()
            )))
        }
    }

    fn check_len(&self, len: &[u8], what: &str) -> Result<usize> {
        let n = i32::from_le_bytes([len[0], len[1], len[2], len[3]]);
        usize::try_from(n)
            .ok()
            .filter(|n| (5..=MAX_DOCUMENT).contains(n))
            .ok_or_else(|| {
                Error::Corrupt(format!(
                    "{what}: a document at offset {} claims {n} bytes",
                    self.offset
                ))
            })
    }

    fn document(&mut self, bytes: Vec<u8>, what: &str) -> Result<RawDocumentBuf> {
        let at = self.offset;
        self.offset += bytes.len() as u64;
        RawDocumentBuf::from_bytes(bytes)
            .map_err(|e| Error::Corrupt(format!("{what}: the document at offset {at}: {e}")))
    }
}

/// Every document of `bytes`, for a stream read whole (and the fuzz
/// target).
///
/// # Errors
/// As [`DocSplitter::push`] and [`DocSplitter::finish`].
pub fn split_all(bytes: &[u8], what: &str) -> Result<Vec<RawDocumentBuf>> {
    let mut s = DocSplitter::new();
    let mut out = Vec::new();
    s.push(bytes, &mut out, what)?;
    s.finish(what)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson::{doc, rawdoc};

    #[test]
    fn documents_are_cut_wherever_the_chunks_end() {
        let docs = [
            rawdoc! {"_id": 1, "s": "x".repeat(300)},
            rawdoc! {},
            rawdoc! {"_id": 3, "n": {"a": [1, 2, 3]}},
        ];
        let stream: Vec<u8> = docs.iter().flat_map(|d| d.as_bytes().to_vec()).collect();
        for step in [1, 2, 3, 4, 5, 7, 64, 1000] {
            let mut s = DocSplitter::new();
            let mut out = Vec::new();
            for piece in stream.chunks(step) {
                s.push(piece, &mut out, "t").unwrap();
            }
            s.finish("t").unwrap();
            assert_eq!(out, docs, "step {step}");
        }
    }

    #[test]
    fn damage_is_named_with_its_offset() {
        let one = mongodb::bson::to_vec(&doc! {"a": 1}).unwrap();
        let mut stream = one.clone();
        stream.extend_from_slice(&[3, 0, 0, 0]);
        let e = split_all(&stream, "app/users.bson")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("app/users.bson") && e.contains(&format!("offset {}", one.len())),
            "{e}"
        );
        let e = split_all(&one[..one.len() - 1], "x")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ends inside a document at offset 0"), "{e}");
        let mut bad_end = one.clone();
        *bad_end.last_mut().unwrap() = 1;
        assert!(split_all(&bad_end, "x").is_err());
    }
}
