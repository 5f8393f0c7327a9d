//! Filesystem node metadata (the `meta` JSON of an fs tree node).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::Meta;
use tessera_fs::FsMeta;

fuzz_target!(|data: &[u8]| {
    let Ok(meta) = serde_json::from_slice::<Meta>(data) else {
        return;
    };
    if let Ok(m) = FsMeta::from_meta(&meta) {
        assert_eq!(FsMeta::from_meta(&m.to_meta()).expect("re-decodes"), m);
        let _ = m.mode_string();
    }
});
