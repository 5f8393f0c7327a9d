//! A read-only NBD server: fixed newstyle, `NBD_OPT_GO`/`INFO`/`EXPORT_NAME`,
//! structured replies with holes, and `base:allocation` block status, so
//! clients (`qemu-img convert`, a QEMU backing file) skip what is not there.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::{Error, Result};

/// What a server exports.
pub trait Export: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset`; true when the whole range is
    /// a hole (reads as zeros, nothing stored).
    ///
    /// # Errors
    /// The read failed (the server answers `EIO` with the message).
    fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<bool>;
    /// `base:allocation` from `offset`: (length, flags) pairs covering at
    /// least the first byte of `[offset, offset + len)`.
    fn allocation(&self, offset: u64, len: u64) -> Vec<(u64, u32)>;
}

/// When [`serve_unix`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Until {
    /// Never (until the process is stopped).
    Stopped,
    /// Once a client has connected and every client has gone (an instant
    /// restore: the VM's `block-stream` is done and it dropped the backing
    /// file).
    LastClientGone,
}

/// Serves `export` as `name` on a new Unix socket at `socket`, one thread
/// per connection. `ready` is called once the socket listens.
///
/// # Errors
/// [`Error::Io`] binding the socket.
pub fn serve_unix(
    socket: &Path,
    name: &str,
    export: Arc<dyn Export>,
    until: Until,
    ready: impl FnOnce(),
) -> Result<()> {
    let listener = UnixListener::bind(socket)
        .map_err(|e| Error::io(format!("listening on {}", socket.display()), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io(format!("listening on {}", socket.display()), e))?;
    ready();
    let active = Arc::new(AtomicUsize::new(0));
    let mut served = false;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                served = true;
                active.fetch_add(1, Ordering::SeqCst);
                let (export, active, name) = (export.clone(), active.clone(), name.to_string());
                std::thread::spawn(move || {
                    let _ = stream.set_nonblocking(false);
                    if let Err(e) = connection(stream, &name, export.as_ref()) {
                        eprintln!("tessera: NBD client: {e}");
                    }
                    active.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if until == Until::LastClientGone && served && active.load(Ordering::SeqCst) == 0 {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(Error::io(format!("accepting on {}", socket.display()), e)),
        }
    }
}

fn connection(stream: UnixStream, name: &str, export: &dyn Export) -> Result<()> {
    let reader = stream
        .try_clone()
        .map_err(|e| Error::io("cloning a socket", e))?;
    struct Duplex(BufReader<UnixStream>, BufWriter<UnixStream>);
    impl Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.1.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.1.flush()
        }
    }
    session(
        Duplex(
            BufReader::new(reader),
            BufWriter::with_capacity(1 << 20, stream),
        ),
        name,
        export,
    )
}

/// One client session on `stream`: handshake, then requests until the
/// client disconnects.
///
/// # Errors
/// [`Error::Nbd`] for a client that breaks the protocol or goes away.
pub fn session<S: Read + Write>(mut s: S, name: &str, export: &dyn Export) -> Result<()> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    write_all(&mut s, &hello, "the greeting")?;
    flush(&mut s)?;
    let mut flags = [0u8; 4];
    read_exact(&mut s, &mut flags, "the client flags")?;
    let flags = u32::from_be_bytes(flags);
    if flags & !u32::from(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES) != 0 {
        return Err(protocol("unknown client flags"));
    }
    let no_zeroes = flags & u32::from(FLAG_NO_ZEROES) != 0;
    let mut state = Negotiated::default();
    loop {
        let mut head = [0u8; 16];
        read_exact(&mut s, &mut head, "an option")?;
        if u64_at(&head, 0)? != IHAVEOPT {
            return Err(protocol("bad option magic"));
        }
        let option = u32_at(&head, 8)?;
        let len = u32_at(&head, 12)?;
        if len > MAX_OPTION_LEN {
            return Err(protocol(format!("an option of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        read_exact(&mut s, &mut data, "an option")?;
        match option {
            OPT_EXPORT_NAME => {
                if !name_matches(&data, name) {
                    return Err(Error::Nbd(format!(
                        "a client asked for export {:?}",
                        String::from_utf8_lossy(&data)
                    )));
                }
                let mut reply = Vec::new();
                reply.extend_from_slice(&export.size().to_be_bytes());
                reply.extend_from_slice(&transmission_flags().to_be_bytes());
                if !no_zeroes {
                    reply.extend_from_slice(&[0u8; 124]);
                }
                write_all(&mut s, &reply, "the export")?;
                flush(&mut s)?;
                return transmission(&mut s, export, &state);
            }
            OPT_ABORT => {
                option_reply(&mut s, option, REP_ACK, &[])?;
                return Ok(());
            }
            OPT_LIST => {
                let mut d = (name.len() as u32).to_be_bytes().to_vec();
                d.extend_from_slice(name.as_bytes());
                option_reply(&mut s, option, REP_SERVER, &d)?;
                option_reply(&mut s, option, REP_ACK, &[])?;
            }
            OPT_STRUCTURED_REPLY => {
                if len != 0 {
                    option_reply(&mut s, option, REP_ERR_INVALID, b"no data expected")?;
                } else {
                    state.structured = true;
                    option_reply(&mut s, option, REP_ACK, &[])?;
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                meta_context(&mut s, option, &data, name, &mut state)?;
            }
            OPT_INFO | OPT_GO => {
                let Some(asked) = go_name(&data) else {
                    option_reply(&mut s, option, REP_ERR_INVALID, b"malformed request")?;
                    continue;
                };
                if !name_matches(asked, name) {
                    option_reply(&mut s, option, REP_ERR_UNKNOWN, b"no such export")?;
                    continue;
                }
                let mut info = INFO_EXPORT.to_be_bytes().to_vec();
                info.extend_from_slice(&export.size().to_be_bytes());
                info.extend_from_slice(&transmission_flags().to_be_bytes());
                option_reply(&mut s, option, REP_INFO, &info)?;
                let mut block = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                for v in [1u32, 4096, MAX_PAYLOAD] {
                    block.extend_from_slice(&v.to_be_bytes());
                }
                option_reply(&mut s, option, REP_INFO, &block)?;
                option_reply(&mut s, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return transmission(&mut s, export, &state);
                }
            }
            _ => option_reply(&mut s, option, REP_ERR_UNSUP, b"not supported")?,
        }
    }
}

#[derive(Default)]
struct Negotiated {
    structured: bool,
    allocation: bool,
}

/// Context id of `base:allocation`.
const ALLOCATION_ID: u32 = 1;

fn transmission_flags() -> u16 {
    TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_SEND_FLUSH | TFLAG_CAN_MULTI_CONN
}

fn name_matches(asked: &[u8], name: &str) -> bool {
    asked.is_empty() || asked == name.as_bytes()
}

/// The export name of an `INFO`/`GO` request.
fn go_name(data: &[u8]) -> Option<&[u8]> {
    let len = u32_at(data, 0).ok()? as usize;
    let name = data.get(4..4usize.checked_add(len)?)?;
    let n = usize::from(u16_at(data, 4 + len).ok()?);
    (data.len() == 4 + len + 2 + 2 * n).then_some(name)
}

fn meta_context<S: Read + Write>(
    s: &mut S,
    option: u32,
    data: &[u8],
    name: &str,
    state: &mut Negotiated,
) -> Result<()> {
    let parsed = (|| {
        let len = u32_at(data, 0).ok()? as usize;
        let asked = data.get(4..4usize.checked_add(len)?)?;
        let n = u32_at(data, 4 + len).ok()?;
        let mut at = 8 + len;
        let mut queries = Vec::new();
        for _ in 0..n {
            let l = u32_at(data, at).ok()? as usize;
            queries.push(data.get(at + 4..(at + 4).checked_add(l)?)?);
            at += 4 + l;
        }
        (at == data.len()).then_some((asked, queries))
    })();
    let Some((asked, queries)) = parsed else {
        return option_reply(s, option, REP_ERR_INVALID, b"malformed request");
    };
    if option == OPT_SET_META_CONTEXT && !state.structured {
        return option_reply(s, option, REP_ERR_INVALID, b"structured replies first");
    }
    if !name_matches(asked, name) {
        return option_reply(s, option, REP_ERR_UNKNOWN, b"no such export");
    }
    let wanted = queries.iter().any(|q| {
        *q == CONTEXT_ALLOCATION.as_bytes() || (option == OPT_LIST_META_CONTEXT && *q == b"base:")
    }) || (option == OPT_LIST_META_CONTEXT && queries.is_empty());
    if option == OPT_SET_META_CONTEXT {
        state.allocation = wanted;
    }
    if wanted {
        let mut d = ALLOCATION_ID.to_be_bytes().to_vec();
        d.extend_from_slice(CONTEXT_ALLOCATION.as_bytes());
        option_reply(s, option, REP_META_CONTEXT, &d)?;
    }
    option_reply(s, option, REP_ACK, &[])
}

fn option_reply<S: Write>(s: &mut S, option: u32, kind: u32, data: &[u8]) -> Result<()> {
    let mut msg = Vec::with_capacity(20 + data.len());
    msg.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    msg.extend_from_slice(&option.to_be_bytes());
    msg.extend_from_slice(&kind.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    write_all(s, &msg, "an option reply")?;
    flush(s)
}

fn flush<S: Write>(s: &mut S) -> Result<()> {
    s.flush()
        .map_err(|e| Error::Nbd(format!("writing to the NBD client: {e}")))
}

fn transmission<S: Read + Write>(s: &mut S, export: &dyn Export, state: &Negotiated) -> Result<()> {
    let size = export.size();
    let mut buf = Vec::new();
    loop {
        let mut req = [0u8; 28];
        match s.read_exact(&mut req) {
            Ok(()) => {}
            // A client that just goes away has disconnected.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(Error::Nbd(format!("reading a request: {e}"))),
        }
        if u32_at(&req, 0)? != REQUEST_MAGIC {
            return Err(protocol("bad request magic"));
        }
        let flags = u16_at(&req, 4)?;
        let kind = u16_at(&req, 6)?;
        let cookie = u64_at(&req, 8)?;
        let offset = u64_at(&req, 16)?;
        let len = u32_at(&req, 24)?;
        let in_range = offset
            .checked_add(u64::from(len))
            .is_some_and(|e| e <= size);
        match kind {
            CMD_DISC => return Ok(()),
            CMD_READ if !in_range || len > MAX_PAYLOAD => {
                error_reply(s, state, cookie, EINVAL, "read outside the export")?
            }
            CMD_READ => {
                buf.resize(len as usize, 0);
                match export.read(offset, &mut buf) {
                    Ok(hole) if state.structured => {
                        if hole {
                            let mut p = offset.to_be_bytes().to_vec();
                            p.extend_from_slice(&len.to_be_bytes());
                            chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_HOLE, cookie, &p, &[])?;
                        } else {
                            chunk(
                                s,
                                REPLY_FLAG_DONE,
                                REPLY_TYPE_OFFSET_DATA,
                                cookie,
                                &offset.to_be_bytes(),
                                &buf,
                            )?;
                        }
                    }
                    Ok(_) => {
                        simple(s, 0, cookie)?;
                        write_all(s, &buf, "read data")?;
                    }
                    Err(e) => error_reply(s, state, cookie, EIO, &e.to_string())?,
                }
            }
            CMD_BLOCK_STATUS if !state.allocation => {
                error_reply(s, state, cookie, EINVAL, "no metadata context negotiated")?
            }
            CMD_BLOCK_STATUS if !in_range || len == 0 => {
                error_reply(s, state, cookie, EINVAL, "block status outside the export")?
            }
            CMD_BLOCK_STATUS => {
                let mut p = ALLOCATION_ID.to_be_bytes().to_vec();
                let mut covered = 0u64;
                for (l, f) in export.allocation(offset, u64::from(len)) {
                    let l = l.min(u64::from(len) - covered).min(u64::from(u32::MAX));
                    if l == 0 {
                        break;
                    }
                    p.extend_from_slice(&(l as u32).to_be_bytes());
                    p.extend_from_slice(&f.to_be_bytes());
                    covered += l;
                    if flags & CMD_FLAG_REQ_ONE != 0 || covered >= u64::from(len) {
                        break;
                    }
                }
                if covered == 0 {
                    error_reply(s, state, cookie, EIO, "no allocation information")?;
                } else {
                    chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, &p, &[])?;
                }
            }
            CMD_FLUSH | CMD_CACHE => simple_or_done(s, state, cookie)?,
            CMD_WRITE => {
                // The payload follows the request: skip it, then refuse.
                std::io::copy(
                    &mut Read::by_ref(s).take(u64::from(len)),
                    &mut std::io::sink(),
                )
                .map_err(|e| Error::Nbd(format!("reading write data: {e}")))?;
                error_reply(s, state, cookie, EPERM, "read-only export")?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                error_reply(s, state, cookie, EPERM, "read-only export")?
            }
            _ => error_reply(s, state, cookie, EINVAL, "unknown command")?,
        }
        flush(s)?;
    }
}

fn simple<S: Write>(s: &mut S, error: u32, cookie: u64) -> Result<()> {
    let mut msg = [0u8; 16];
    msg[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    msg[4..8].copy_from_slice(&error.to_be_bytes());
    msg[8..16].copy_from_slice(&cookie.to_be_bytes());
    write_all(s, &msg, "a reply")
}

fn simple_or_done<S: Write>(s: &mut S, state: &Negotiated, cookie: u64) -> Result<()> {
    if state.structured {
        chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_NONE, cookie, &[], &[])
    } else {
        simple(s, 0, cookie)
    }
}

fn error_reply<S: Write>(
    s: &mut S,
    state: &Negotiated,
    cookie: u64,
    errno: u32,
    msg: &str,
) -> Result<()> {
    if !state.structured {
        return simple(s, errno, cookie);
    }
    let msg = msg
        .as_bytes()
        .get(..4096.min(msg.len()))
        .unwrap_or_default();
    let mut p = errno.to_be_bytes().to_vec();
    p.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    p.extend_from_slice(msg);
    chunk(s, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, &p, &[])
}

fn chunk<S: Write>(
    s: &mut S,
    flags: u16,
    kind: u16,
    cookie: u64,
    head: &[u8],
    data: &[u8],
) -> Result<()> {
    let mut msg = Vec::with_capacity(20 + head.len());
    msg.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    msg.extend_from_slice(&flags.to_be_bytes());
    msg.extend_from_slice(&kind.to_be_bytes());
    msg.extend_from_slice(&cookie.to_be_bytes());
    msg.extend_from_slice(&((head.len() + data.len()) as u32).to_be_bytes());
    msg.extend_from_slice(head);
    write_all(s, &msg, "a reply")?;
    write_all(s, data, "read data")
}
