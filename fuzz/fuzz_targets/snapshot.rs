//! Snapshot plaintext (JSON) and snapshot reference resolution.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::{Snapshot, SnapshotEntry, SnapshotId, snapshot};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Snapshot::decode(data, "fuzz") {
        let again = Snapshot::decode(&s.encode(), "fuzz").expect("re-decodes");
        assert_eq!(again.tree, s.tree);
        let entries = [SnapshotEntry { id: SnapshotId([1; 32]), snapshot: s }];
        let _ = snapshot::resolve(&entries, &String::from_utf8_lossy(data));
    }
});
