//! The repository config plaintext (JSON).
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::RepoConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = RepoConfig::decode(data) {
        assert_eq!(RepoConfig::decode(&c.encode()).expect("re-decodes"), c);
    }
});
