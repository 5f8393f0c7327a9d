//! Key slots (plain JSON with checksum) and the keyring inside them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::keyring::Keyring;
use tessera_core::{Credential, KeySlot};

fuzz_target!(|data: &[u8]| {
    if let Ok(slot) = KeySlot::decode(data, "keys/fuzz") {
        // Unlocking validates the KDF parameters before running Argon2.
        let _ = slot.unlock(&Credential::password("fuzz"), "keys/fuzz");
    }
    let _ = Keyring::from_json(data, "fuzz");
});
