//! End-to-end tests of the `tessera` binary.

mod common;
#[path = "../../vm/tests/daemon.rs"]
mod daemon;

mod concurrency;
mod copy;
mod corruption;
mod crash;
mod forget;
mod keys;
mod mongo;
// Shared with the adapter's own tests, which use all of them.
#[path = "../../mongo/tests/fake.rs"]
#[allow(dead_code)]
mod mongo_fake;
#[path = "../../mongo/tests/server.rs"]
#[allow(dead_code)]
mod mongo_server;
mod pg;
mod prune;
mod roundtrip;
mod safety;
mod storage;
mod trees;
mod vm;
