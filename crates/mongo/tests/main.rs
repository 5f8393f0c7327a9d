//! tessera-mongo against a MongoDB-wire server: dumps, restores, oplog replay.

mod common;
mod dump;
mod replay;
mod server;
