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
mod pg;
mod prune;
mod roundtrip;
mod safety;
mod storage;
mod trees;
mod vm;
