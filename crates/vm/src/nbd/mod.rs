//! The NBD protocol (<https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>),
//! as much of it as reading disks needs: the fixed-newstyle handshake with
//! `NBD_OPT_GO`, structured replies, block status for `base:allocation`
//! and `qemu:dirty-bitmap:NAME`, several requests in flight ([`client`]);
//! and a read-only server with block status ([`server`]).
//!
//! There is no maintained NBD crate with structured replies and block
//! status, so the protocol is spoken here; every decoder takes untrusted
//! bytes and fails with [`crate::Error::Nbd`], never panics (fuzz target
//! `nbd`).

pub mod client;
pub mod server;

pub use client::{Extent, NbdClient, ReadChunk, ReadPipeline};
pub use server::{Export, serve_unix};

use std::io::{Read, Write};

use crate::{Error, Result};

/// `NBDMAGIC`.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of an option reply.
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of a request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of a simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of a structured reply chunk.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flag: fixed newstyle.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no zeroes after `NBD_OPT_EXPORT_NAME`.
pub const FLAG_NO_ZEROES: u16 = 2;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// `NBD_OPT_ABORT`.
pub const OPT_ABORT: u32 = 2;
/// `NBD_OPT_LIST`.
pub const OPT_LIST: u32 = 3;
/// `NBD_OPT_INFO`.
pub const OPT_INFO: u32 = 6;
/// `NBD_OPT_GO`.
pub const OPT_GO: u32 = 7;
/// `NBD_OPT_STRUCTURED_REPLY`.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// `NBD_OPT_LIST_META_CONTEXT`.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// `NBD_OPT_SET_META_CONTEXT`.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply: done.
pub const REP_ACK: u32 = 1;
/// Option reply: an export's name (`NBD_OPT_LIST`).
pub const REP_SERVER: u32 = 2;
/// Option reply: information about the export.
pub const REP_INFO: u32 = 3;
/// Option reply: a metadata context and its id.
pub const REP_META_CONTEXT: u32 = 4;
/// Option reply: the option is not supported.
pub const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
/// Option reply: the option is invalid.
pub const REP_ERR_INVALID: u32 = (1 << 31) | 3;
/// Option reply: no such export.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) | 6;

/// `NBD_INFO_EXPORT`.
pub const INFO_EXPORT: u16 = 0;
/// `NBD_INFO_BLOCK_SIZE`.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: the flags field is valid.
pub const TFLAG_HAS_FLAGS: u16 = 1;
/// Transmission flag: read-only export.
pub const TFLAG_READ_ONLY: u16 = 2;
/// Transmission flag: flush is supported.
pub const TFLAG_SEND_FLUSH: u16 = 4;
/// Transmission flag: several connections see the same data.
pub const TFLAG_CAN_MULTI_CONN: u16 = 256;

/// Commands.
pub const CMD_READ: u16 = 0;
/// `NBD_CMD_WRITE`.
pub const CMD_WRITE: u16 = 1;
/// `NBD_CMD_DISC`.
pub const CMD_DISC: u16 = 2;
/// `NBD_CMD_FLUSH`.
pub const CMD_FLUSH: u16 = 3;
/// `NBD_CMD_TRIM`.
pub const CMD_TRIM: u16 = 4;
/// `NBD_CMD_CACHE`.
pub const CMD_CACHE: u16 = 5;
/// `NBD_CMD_WRITE_ZEROES`.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// `NBD_CMD_BLOCK_STATUS`.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// Command flag: one extent per context is enough.
pub const CMD_FLAG_REQ_ONE: u16 = 8;

/// Structured reply flag: the last chunk of the reply.
pub const REPLY_FLAG_DONE: u16 = 1;
/// Structured reply chunk: nothing (the end).
pub const REPLY_TYPE_NONE: u16 = 0;
/// Structured reply chunk: data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured reply chunk: a hole (zeros) at an offset.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Structured reply chunk: block status descriptors of one context.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Structured reply chunk: an error.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) | 1;
/// Structured reply chunk: an error at an offset.
pub const REPLY_TYPE_ERROR_OFFSET: u16 = (1 << 15) | 2;

/// `base:allocation` status: unallocated.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation` status: reads as zeros.
pub const STATE_ZERO: u32 = 2;
/// `qemu:dirty-bitmap:NAME` status: dirty.
pub const STATE_DIRTY: u32 = 1;

/// The allocation context.
pub const CONTEXT_ALLOCATION: &str = "base:allocation";

/// Errors on the wire (errno values the protocol names).
pub const EPERM: u32 = 1;
/// `EIO`.
pub const EIO: u32 = 5;
/// `EINVAL`.
pub const EINVAL: u32 = 22;
/// `ENOSPC`.
pub const ENOSPC: u32 = 28;
/// `EOVERFLOW`.
pub const EOVERFLOW: u32 = 75;
/// `ENOTSUP`.
pub const ENOTSUP: u32 = 95;

/// The largest option payload either side accepts (names are at most
/// 4 KiB; a list of contexts a little more).
pub const MAX_OPTION_LEN: u32 = 64 * 1024;
/// The largest read or structured chunk accepted (32 MiB, as qemu).
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// The name of an errno value for messages.
pub fn errno_name(e: u32) -> String {
    match e {
        EPERM => "EPERM (not permitted)".into(),
        EIO => "EIO (input/output error)".into(),
        12 => "ENOMEM".into(),
        EINVAL => "EINVAL (invalid argument)".into(),
        ENOSPC => "ENOSPC (no space left)".into(),
        EOVERFLOW => "EOVERFLOW".into(),
        ENOTSUP => "ENOTSUP (not supported)".into(),
        108 => "ESHUTDOWN (server shutting down)".into(),
        other => format!("error {other}"),
    }
}

pub(crate) fn protocol(what: impl std::fmt::Display) -> Error {
    Error::Nbd(format!("NBD protocol error: {what}"))
}

pub(crate) fn read_exact<R: Read>(r: &mut R, buf: &mut [u8], what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => Error::Nbd(format!(
            "the NBD server closed the connection while sending {what}"
        )),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            Error::Nbd(format!("the NBD server did not answer in time ({what})"))
        }
        _ => Error::Nbd(format!("reading {what} from the NBD connection: {e}")),
    })
}

pub(crate) fn write_all<W: Write>(w: &mut W, buf: &[u8], what: &str) -> Result<()> {
    w.write_all(buf)
        .map_err(|e| Error::Nbd(format!("writing {what} to the NBD connection: {e}")))
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> Result<u16> {
    b.get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .map(u16::from_be_bytes)
        .ok_or_else(|| protocol("message too short"))
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| protocol("message too short"))
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> Result<u64> {
    b.get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| protocol("message too short"))
}

/// Decoders driven by arbitrary bytes, for the fuzz target.
pub mod fuzzing {
    use std::io::{Cursor, Read, Write};

    /// A stream that reads the fuzzer's bytes and discards writes.
    struct Scripted(Cursor<Vec<u8>>);

    impl Read for Scripted {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A client handshake, block status and reads against a "server" that
    /// sends `bytes`.
    pub fn client_session(bytes: &[u8]) {
        let stream = Scripted(Cursor::new(bytes.to_vec()));
        let contexts = ["base:allocation", "qemu:dirty-bitmap:b0"];
        if let Ok(mut client) = super::NbdClient::handshake(stream, "", &contexts) {
            let size = client.size().min(1 << 30);
            let _ = client.block_status(0, size, "base:allocation");
            let ranges = (0..4u64).map(|i| (i * 4096, 4096u32));
            let mut pipe = super::ReadPipeline::new(client, ranges, 3);
            while let Some(Ok(_)) = pipe.next_read() {}
        }
    }

    /// A server handshake and requests from a "client" that sends `bytes`.
    pub fn server_session(bytes: &[u8]) {
        struct Zeros;
        impl super::Export for Zeros {
            fn size(&self) -> u64 {
                1 << 20
            }
            fn read(&self, _offset: u64, buf: &mut [u8]) -> std::io::Result<bool> {
                buf.fill(0);
                Ok(false)
            }
            fn allocation(&self, offset: u64, len: u64) -> Vec<(u64, u32)> {
                vec![(
                    len.min((1 << 20) - offset.min(1 << 20)),
                    super::STATE_HOLE | super::STATE_ZERO,
                )]
            }
        }
        let stream = Scripted(Cursor::new(bytes.to_vec()));
        let _ = super::server::session(stream, "disk", &Zeros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut v = vec![0u8; len];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut v);
        v
    }

    /// What the fuzz targets run, on noise after valid prefixes: errors,
    /// never a panic or a hang.
    #[test]
    fn decoders_survive_garbage() {
        let mut greeting = NBDMAGIC.to_be_bytes().to_vec();
        greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
        greeting.extend_from_slice(&3u16.to_be_bytes());
        let mut reply = greeting.clone();
        reply.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
        reply.extend_from_slice(&OPT_STRUCTURED_REPLY.to_be_bytes());
        reply.extend_from_slice(&REP_ACK.to_be_bytes());
        reply.extend_from_slice(&0u32.to_be_bytes());
        let mut client_hello = 3u32.to_be_bytes().to_vec();
        client_hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
        for seed in 0..3000u64 {
            let tail = noise((seed % 700) as usize, seed);
            for prefix in [&[][..], &greeting, &reply, &client_hello] {
                let input = [prefix, &tail].concat();
                fuzzing::client_session(&input);
                fuzzing::server_session(&input);
            }
        }
    }
}
