//! Filesystem node metadata (the `meta` JSON of an fs tree node).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_fs::FsMeta;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(m) = FsMeta::from_value(&value) {
        assert_eq!(FsMeta::from_value(&m.to_value()).expect("re-decodes"), m);
        let _ = m.mode_string();
    }
});
