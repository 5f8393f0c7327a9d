//! The NBD server's decoders (client flags, options, requests) against a
//! client that sends anything.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tessera_vm::fuzzing::server_session(data);
});
