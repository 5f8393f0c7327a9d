//! End-to-end tests of the `tessera` binary.

mod common;

mod copy;
mod corruption;
mod crash;
mod forget;
mod keys;
mod prune;
mod roundtrip;
mod trees;
