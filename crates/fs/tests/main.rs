//! Integration tests of the filesystem adapter, against real directories.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod behaviour;
mod common;
mod fidelity;
mod hostile;
