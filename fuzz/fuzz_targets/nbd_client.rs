//! The NBD client's decoders (handshake, option replies, structured and
//! simple replies, block status) against a server that sends anything.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    tessera_vm::fuzzing::client_session(data);
});
