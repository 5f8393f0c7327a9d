//! Trees: content-addressed listings (JSON) stored as tree blobs, forming a
//! Merkle tree under each snapshot.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::BlobId;

/// Fails on the first name that occurs twice.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the duplicate.
pub fn ensure_unique_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    match names.into_iter().find(|n| !seen.insert(*n)) {
        Some(name) => Err(Error::InvalidArgument(format!(
            "stream name {name:?} given twice"
        ))),
        None => Ok(()),
    }
}

/// Current tree encoding version.
pub const TREE_VERSION: u32 = 1;

/// What a tree entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NodeKind {
    /// A named byte stream: its content is the concatenation of `content`.
    Stream {
        /// Chunk ids in order.
        content: Vec<BlobId>,
    },
    /// A sub-tree.
    Dir {
        /// The sub-tree's blob id.
        subtree: BlobId,
    },
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Name within the tree.
    pub name: String,
    /// Logical size in bytes (for streams).
    pub size: u64,
    /// Kind and content.
    #[serde(flatten)]
    pub kind: NodeKind,
}

/// A tree: entries sorted by name, names unique.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Encoding version.
    pub version: u32,
    /// Entries.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// A tree of `nodes`, sorted by name.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for duplicate names.
    pub fn new(mut nodes: Vec<Node>) -> Result<Self> {
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        ensure_unique_names(nodes.iter().map(|n| n.name.as_str()))?;
        Ok(Tree {
            version: TREE_VERSION,
            nodes,
        })
    }

    /// Serializes the tree (the tree blob's plaintext).
    pub fn encode(&self) -> Vec<u8> {
        #[allow(clippy::expect_used)]
        serde_json::to_vec(self).expect("tree serializes")
    }

    /// Parses a tree blob's plaintext.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `object`, [`Error::UnsupportedVersion`].
    pub fn decode(bytes: &[u8], object: &str) -> Result<Self> {
        let tree: Tree = serde_json::from_slice(bytes)
            .map_err(|e| Error::corrupt(object, format!("tree does not decode: {e}")))?;
        if tree.version != TREE_VERSION {
            return Err(Error::UnsupportedVersion {
                object: object.to_string(),
                found: tree.version,
                oldest: TREE_VERSION,
                newest: TREE_VERSION,
            });
        }
        Ok(tree)
    }

    /// The entry named `name`.
    pub fn get(&self, name: &str) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.nodes.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sorted() {
        assert!(ensure_unique_names(["a", "b", "c"]).is_ok());
        let err = ensure_unique_names(["a", "b", "a"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"a\" given twice"), "{err}");
        let stream = |n: &str| Node {
            name: n.into(),
            size: 0,
            kind: NodeKind::Stream { content: vec![] },
        };
        let t = Tree::new(vec![stream("b"), stream("a")]).unwrap();
        assert_eq!(
            t.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(t.get("b").is_some() && t.get("c").is_none());
        assert!(Tree::new(vec![stream("x"), stream("x")]).is_err());
        assert_eq!(Tree::decode(&t.encode(), "t").unwrap(), t);
    }
}
