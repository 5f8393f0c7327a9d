//! The sealed-object envelope (preamble, nonce, tag) and blob opening.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_core::blob::{self, BlobHeader, BlobType};
use tessera_core::keyring::Keyring;
use tessera_core::{BlobId, ObjectKind, sealed};

fuzz_target!(|data: &[u8]| {
    let ring = Keyring::generate();
    for kind in ObjectKind::ALL {
        let _ = sealed::open(&ring, kind, "fuzz", data);
    }
    let h = BlobHeader { id: BlobId([0; 32]), blob_type: BlobType::Data, flags: 1, raw_len: 1 << 20 };
    let _ = blob::open(&ring, ring.write_key(), &h, data, "fuzz");
});
