//! Index segment plaintext.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::index::IndexSegment;

fuzz_target!(|data: &[u8]| {
    if let Ok(seg) = IndexSegment::decode(data, "fuzz") {
        assert_eq!(seg.encode(), data);
    }
});
