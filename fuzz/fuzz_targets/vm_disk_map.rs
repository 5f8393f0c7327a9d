//! A VM disk node (tree blob plaintext) checked into a chunk map: a forged
//! node is refused, never trusted into a panic or a huge allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::Tree;
use tessera_vm::DiskMap;

fuzz_target!(|data: &[u8]| {
    let Ok(tree) = Tree::decode(data, "fuzz") else {
        return;
    };
    for node in &tree.nodes {
        if let Ok(map) = DiskMap::from_node(node, "fuzz") {
            let n = map.chunks().min(10_000);
            for i in 0..n {
                let _ = map.blob_at(i);
                assert!(map.chunk_len(i) <= map.chunk_size);
            }
            assert_eq!(map.data_chunks().count(), map.content.len());
        }
    }
});
