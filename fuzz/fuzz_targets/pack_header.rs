//! Pack header plaintext, trailer length and whole-pack header parsing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::keyring::Keyring;
use tessera_core::{PackId, pack};

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = pack::decode_header(data, data.len() as u64 * 64, "fuzz") {
        // What decodes must re-encode to the same bytes.
        assert_eq!(pack::encode_header(&entries), data);
    }
    let ring = Keyring::generate();
    let _ = pack::open_header_of(&ring, PackId([0; 32]), data);
});
