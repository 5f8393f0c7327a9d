//! A collection's stored documents (`<coll>.bson`, `oplog.bson`): the
//! splitter must refuse bad lengths and truncation by an error, never a
//! panic, and give back exactly the bytes it was handed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_mongo::fuzzing::{Op, bson, bson_stream};

fuzz_target!(|data: &[u8]| {
    if let Ok(docs) = bson_stream(data, "fuzz") {
        let joined: Vec<u8> = docs.iter().flat_map(|d| d.as_bytes().to_vec()).collect();
        assert_eq!(joined, data);
        for d in docs {
            // Replay reads each oplog entry as a document, then as an op.
            if let Ok(doc) = bson::Document::try_from(d.as_ref()) {
                let _ = Op::parse(&doc);
            }
        }
    }
});
