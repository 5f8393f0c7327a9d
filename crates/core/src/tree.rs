//! Trees: content-addressed listings (JSON) stored as tree blobs, forming a
//! Merkle tree under each snapshot.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::id::BlobId;

/// Fails on the first name that occurs twice.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the duplicate.
pub fn ensure_unique_names<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    match names.into_iter().find(|n| !seen.insert(*n)) {
        Some(name) => Err(Error::InvalidArgument(format!(
            "name {:?} given twice in one directory",
            String::from_utf8_lossy(name)
        ))),
        None => Ok(()),
    }
}

/// Why `name` cannot be a tree entry's name, or `None` when it can: a
/// name is one path component, so it is never empty, `.` or `..`, and
/// holds no `/` and no NUL. Restores build paths from names; these rules
/// are what keeps every such path beneath its target (FORMAT.md §7).
pub fn name_problem(name: &[u8]) -> Option<&'static str> {
    match name {
        b"" => Some("is empty"),
        b"." | b".." => Some("is `.` or `..`"),
        _ if name.contains(&b'/') => Some("contains `/`"),
        _ if name.contains(&0) => Some("contains NUL"),
        _ => None,
    }
}

/// Fails on the first name that cannot be a tree entry's name.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the entry and the rule it breaks.
pub fn ensure_valid_names<'a>(names: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
    for name in names {
        if let Some(problem) = name_problem(name) {
            return Err(Error::InvalidArgument(format!(
                "entry name {:?} {problem}: a name must be one path component",
                String::from_utf8_lossy(name)
            )));
        }
    }
    Ok(())
}

/// Current tree encoding version.
pub const TREE_VERSION: u32 = 1;

/// What a tree entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum NodeKind {
    /// An entry without content (a symlink, a device node, ...): the
    /// adapter's `meta` says what it is.
    Leaf,
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

/// Adapter metadata on a tree node: one JSON value, kept as its text.
///
/// The engine never looks inside; keeping the text (rather than a parsed
/// `serde_json::Value`) makes writing a tree a copy and reading one cheap,
/// and re-encoding a decoded tree reproduces its bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Meta(Box<serde_json::value::RawValue>);

impl Meta {
    /// No metadata (JSON `null`, left out of the encoded node).
    pub fn null() -> Self {
        #[allow(clippy::expect_used)]
        Meta(serde_json::value::RawValue::from_string("null".into()).expect("null is JSON"))
    }

    /// The metadata `value` serializes to.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when `value` does not serialize to JSON
    /// (a map with non-string keys, say).
    pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        serde_json::value::to_raw_value(value)
            .map(Meta)
            .map_err(|e| Error::InvalidArgument(format!("metadata does not serialize: {e}")))
    }

    /// Parses the metadata as a `T`.
    ///
    /// # Errors
    /// The parse error, as text.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> std::result::Result<T, String> {
        serde_json::from_str(self.0.get()).map_err(|e| e.to_string())
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Whether this is JSON `null`.
    pub fn is_null(&self) -> bool {
        self.0.get() == "null"
    }
}

impl Default for Meta {
    fn default() -> Self {
        Meta::null()
    }
}

/// Compares the JSON text.
impl PartialEq for Meta {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Meta {}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Name within the tree (for display when `raw_name` is set).
    pub name: String,
    /// The exact name when it is not valid UTF-8 (`name` then holds a lossy
    /// rendering). Names are compared and sorted as these bytes.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "hex_opt")]
    pub raw_name: Option<Vec<u8>>,
    /// Bytes of content (for streams; 0 otherwise).
    pub size: u64,
    /// Kind and content.
    #[serde(flatten)]
    pub kind: NodeKind,
    /// Adapter metadata (file mode, owner, times, ...), opaque to the engine.
    #[serde(default, skip_serializing_if = "Meta::is_null")]
    pub meta: Meta,
}

impl Node {
    /// A node named by raw bytes: `name` is the UTF-8 form, and `raw_name`
    /// keeps the bytes when they are not valid UTF-8.
    pub fn new(name: &[u8], size: u64, kind: NodeKind, meta: Meta) -> Self {
        let (name, raw_name) = match std::str::from_utf8(name) {
            Ok(s) => (s.to_string(), None),
            Err(_) => (
                String::from_utf8_lossy(name).into_owned(),
                Some(name.to_vec()),
            ),
        };
        Node {
            name,
            raw_name,
            size,
            kind,
            meta,
        }
    }

    /// The exact name as bytes.
    pub fn name_bytes(&self) -> &[u8] {
        self.raw_name.as_deref().unwrap_or(self.name.as_bytes())
    }
}

/// `Option<Vec<u8>>` as an optional hex string, for `#[serde(with)]`
/// (also used by adapters' metadata).
pub mod hex_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `Some(bytes)` as a hex string, `None` as null.
    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }

    /// Parses an optional hex string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|h| hex::decode(h).map_err(serde::de::Error::custom))
            .transpose()
    }
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
    /// [`Error::InvalidArgument`] for duplicate names and names that are
    /// not one path component ([`name_problem`]).
    pub fn new(mut nodes: Vec<Node>) -> Result<Self> {
        ensure_valid_names(nodes.iter().map(Node::name_bytes))?;
        nodes.sort_by(|a, b| a.name_bytes().cmp(b.name_bytes()));
        ensure_unique_names(nodes.iter().map(Node::name_bytes))?;
        Ok(Tree {
            version: TREE_VERSION,
            nodes,
        })
    }

    /// A tree of `nodes` exactly as given: no sorting and no name rules,
    /// as a compromised writer holding the key could store one. Only for
    /// tests of the readers, which reject such trees (feature `forge`).
    #[cfg(feature = "forge")]
    pub fn forged(nodes: Vec<Node>) -> Self {
        Tree {
            version: TREE_VERSION,
            nodes,
        }
    }

    /// Serializes the tree (the tree blob's plaintext).
    pub fn encode(&self) -> Vec<u8> {
        #[allow(clippy::expect_used)]
        serde_json::to_vec(self).expect("tree serializes")
    }

    /// Parses a tree blob's plaintext and checks its names: each one path
    /// component ([`name_problem`]), strictly ascending as bytes (so
    /// unique). A tree that breaks them can only come from a damaged or
    /// hostile writer, and nothing of it is used.
    ///
    /// # Errors
    /// [`Error::Corrupt`] naming `object` (and the entry),
    /// [`Error::UnsupportedVersion`].
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
        let mut previous: Option<&[u8]> = None;
        for node in &tree.nodes {
            let name = node.name_bytes();
            let shown = String::from_utf8_lossy(name);
            if let Some(problem) = name_problem(name) {
                return Err(Error::corrupt(
                    object,
                    format!("entry {shown:?}: its name {problem}"),
                ));
            }
            if previous.is_some_and(|p| p >= name) {
                return Err(Error::corrupt(
                    object,
                    format!("entry {shown:?}: names out of order or given twice"),
                ));
            }
            previous = Some(name);
        }
        Ok(tree)
    }

    /// The entry named `name` (exact bytes).
    pub fn get(&self, name: &[u8]) -> Option<&Node> {
        self.nodes
            .binary_search_by(|n| n.name_bytes().cmp(name))
            .ok()
            .and_then(|i| self.nodes.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_sorted() {
        let names = |v: &[&'static str]| v.iter().map(|s| s.as_bytes()).collect::<Vec<_>>();
        assert!(ensure_unique_names(names(&["a", "b", "c"])).is_ok());
        let err = ensure_unique_names(names(&["a", "b", "a"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"a\" given twice"), "{err}");
        let stream = |n: &str| {
            Node::new(
                n.as_bytes(),
                0,
                NodeKind::Stream { content: vec![] },
                Meta::null(),
            )
        };
        let t = Tree::new(vec![stream("b"), stream("a")]).unwrap();
        assert_eq!(
            t.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(t.get(b"b").is_some() && t.get(b"c").is_none());
        assert!(Tree::new(vec![stream("x"), stream("x")]).is_err());
        assert_eq!(Tree::decode(&t.encode(), "t").unwrap(), t);
    }

    #[test]
    fn names_that_are_not_utf8_round_trip_and_sort_as_bytes() {
        let meta = Meta::to_json(&serde_json::json!({"m": 1})).unwrap();
        let leaf = |n: &[u8]| Node::new(n, 0, NodeKind::Leaf, meta.clone());
        let t = Tree::new(vec![leaf(b"\xff\xfe"), leaf(b"\xff\xfd"), leaf(b"a\nb")]).unwrap();
        let names: Vec<&[u8]> = t.nodes.iter().map(Node::name_bytes).collect();
        assert_eq!(names, [&b"a\nb"[..], b"\xff\xfd", b"\xff\xfe"]);
        let back = Tree::decode(&t.encode(), "t").unwrap();
        assert_eq!(back, t);
        assert_eq!(
            back.get(b"\xff\xfd").unwrap().raw_name.as_deref(),
            Some(&b"\xff\xfd"[..])
        );
        assert_eq!(back.get(b"a\nb").unwrap().raw_name, None);
    }

    #[test]
    fn names_that_are_not_one_path_component_are_refused_on_both_sides() {
        let leaf = |n: &[u8]| Node::new(n, 0, NodeKind::Leaf, Meta::null());
        for bad in [&b""[..], b".", b"..", b"a/b", b"../x", b"/abs", b"a\0b"] {
            let err = Tree::new(vec![leaf(b"ok"), leaf(bad)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("one path component"), "{bad:?}: {err}");
            // Written anyway (as a hostile writer would): the reader refuses it.
            let forged = Tree {
                version: TREE_VERSION,
                nodes: vec![leaf(bad)],
            };
            let err = Tree::decode(&forged.encode(), "tree 1234")
                .unwrap_err()
                .to_string();
            let shown = format!("{:?}", String::from_utf8_lossy(bad));
            assert!(err.contains("tree 1234") && err.contains(&shown), "{err}");
        }
        // A raw name is what counts, whatever the display name says.
        let mut sneaky = leaf(b"fine");
        sneaky.raw_name = Some(b"..".to_vec());
        let forged = Tree {
            version: TREE_VERSION,
            nodes: vec![sneaky],
        };
        assert!(Tree::decode(&forged.encode(), "t").is_err());
        // Duplicates and disorder.
        for names in [[&b"d"[..], b"d"], [b"b", b"a"]] {
            let forged = Tree {
                version: TREE_VERSION,
                nodes: names.iter().map(|n| leaf(n)).collect(),
            };
            let err = Tree::decode(&forged.encode(), "t").unwrap_err().to_string();
            assert!(err.contains("out of order or given twice"), "{err}");
        }
    }
}
