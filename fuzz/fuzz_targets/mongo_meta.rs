//! A collection's stored definition (`<coll>.metadata.bson`), a backup's
//! and an oplog slice's `source_meta`: decoding never panics, and what decodes encodes back to
//! something that decodes the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_mongo::fuzzing::{BackupMeta, CollectionMeta, SliceMeta};

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = CollectionMeta::decode(data, "fuzz") {
        let again = meta.encode().expect("a decoded definition encodes");
        assert_eq!(CollectionMeta::decode(&again, "fuzz").unwrap(), meta);
    }
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = BackupMeta::from_value(&value, "fuzz");
        if let Ok(slice) = SliceMeta::from_value(&value, "fuzz") {
            assert!(slice.covers_from() <= slice.last);
        }
    }
});
