//! tessera-mongo against a MongoDB-wire server: dumps, restores, oplog
//! replay; and against a fake replica-set primary: the oplog follower and
//! point-in-time restores.

mod common;
mod dump;
mod fake;
mod follow;
mod replay;
mod server;
