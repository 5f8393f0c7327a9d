//! The tar stream of `pg_basebackup` as a base backup reads it: any bytes
//! give balanced entries and an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tessera_postgres::fuzzing::tar_stream(data);
});
