//! A line from QMP or the guest agent: decoded or refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tessera_vm::fuzzing::qmp_message(data);
});
