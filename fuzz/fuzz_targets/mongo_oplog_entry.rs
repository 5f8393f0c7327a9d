//! One oplog entry as replay reads it: any BSON document decodes to an op
//! or an error, and an update's `$v: 2` diff applies or fails, never
//! panicking, to an empty document and to the entry itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_mongo::fuzzing::{Change, Op, apply_diff, bson};

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = bson::Document::from_reader(data) else {
        return;
    };
    if let Ok(Op::Update {
        change: Change::Diff(diff),
        ..
    }) = Op::parse(&entry)
    {
        let _ = apply_diff(&mut bson::Document::new(), &diff);
        let mut doc = entry.clone();
        let _ = apply_diff(&mut doc, &diff);
    }
    // Any document read as a diff of itself.
    let mut doc = entry.clone();
    let _ = apply_diff(&mut doc, &entry);
});
