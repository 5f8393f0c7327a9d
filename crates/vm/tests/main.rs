//! Integration tests of the VM adapter against real QEMU tools
//! (`qemu-img`, `qemu-io`, `qemu-nbd`, `qemu-storage-daemon`) and nbdkit
//! for fault injection. Without a tool a test says so and passes, except
//! in CI (`CI=true`), where it fails: `scripts/test.sh` installs them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;
mod daemon;

mod backup;
mod bitmaps;
mod faults;
mod live;
mod serve;
