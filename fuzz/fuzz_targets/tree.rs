//! Tree blob plaintext (JSON).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::Tree;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tree::decode(data, "fuzz") {
        assert_eq!(Tree::decode(&t.encode(), "fuzz").expect("re-decodes"), t);
        for n in &t.nodes {
            assert!(t.get(n.name_bytes()).is_some());
        }
    }
});
