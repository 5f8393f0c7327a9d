//! An NBD client: fixed-newstyle handshake with `NBD_OPT_GO`, structured
//! replies, metadata contexts, block status, and pipelined reads.

use std::collections::{HashMap, VecDeque};
use std::io::{BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::{Error, Result};

/// One extent of a block status answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Start on the disk.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Status flags of the context ([`STATE_HOLE`], [`STATE_ZERO`],
    /// [`STATE_DIRTY`]).
    pub flags: u32,
}

/// A connected client, in the transmission phase.
pub struct NbdClient<S> {
    stream: S,
    size: u64,
    flags: u16,
    structured: bool,
    contexts: Vec<(u32, String)>,
    next_cookie: u64,
    out_of_step: bool,
    /// Read requests sent.
    pub reads: u64,
    /// Bytes those requests asked for.
    pub bytes_requested: u64,
}

/// A Unix socket with a buffered reading side.
pub struct Duplex {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Read for Duplex {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

impl Write for Duplex {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer.flush()
    }
}

impl NbdClient<Duplex> {
    /// Connects to the export `name` served on the Unix socket `socket`,
    /// asking for the metadata `contexts` (e.g. `base:allocation`); a
    /// server silent for `timeout` fails the request that waits.
    ///
    /// # Errors
    /// [`Error::Nbd`] naming the socket and what failed.
    pub fn connect(
        socket: &Path,
        name: &str,
        contexts: &[&str],
        timeout: Duration,
    ) -> Result<Self> {
        let at = |e: Error| Error::Nbd(format!("NBD export {name:?} on {}: {e}", socket.display()));
        let stream =
            UnixStream::connect(socket).map_err(|e| at(Error::Nbd(format!("connecting: {e}"))))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| at(Error::Nbd(format!("setting the timeout: {e}"))))?;
        let writer = stream
            .try_clone()
            .map_err(|e| at(Error::Nbd(format!("cloning the socket: {e}"))))?;
        let duplex = Duplex {
            reader: BufReader::with_capacity(256 * 1024, stream),
            writer,
        };
        NbdClient::handshake(duplex, name, contexts).map_err(at)
    }
}

impl<S: Read + Write> NbdClient<S> {
    /// The handshake on a connected stream.
    ///
    /// # Errors
    /// [`Error::Nbd`]: not an NBD server, the export refused, a protocol
    /// violation.
    pub fn handshake(mut stream: S, name: &str, contexts: &[&str]) -> Result<Self> {
        let mut hello = [0u8; 18];
        read_exact(&mut stream, &mut hello, "its greeting")?;
        if u64_at(&hello, 0)? != NBDMAGIC || u64_at(&hello, 8)? != IHAVEOPT {
            return Err(Error::Nbd(
                "this is not an NBD server (wrong greeting)".into(),
            ));
        }
        let server_flags = u16_at(&hello, 16)?;
        if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(Error::Nbd(
                "the NBD server does not speak fixed newstyle".into(),
            ));
        }
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES));
        write_all(&mut stream, &client_flags.to_be_bytes(), "the client flags")?;

        let mut client = NbdClient {
            stream,
            size: 0,
            flags: 0,
            structured: false,
            contexts: Vec::new(),
            next_cookie: 1,
            out_of_step: false,
            reads: 0,
            bytes_requested: 0,
        };
        client.send_option(OPT_STRUCTURED_REPLY, &[])?;
        let (kind, _) = client.option_reply(OPT_STRUCTURED_REPLY)?;
        client.structured = kind == REP_ACK;
        if client.structured && !contexts.is_empty() {
            client.set_meta_contexts(name, contexts)?;
        }
        client.go(name)?;
        Ok(client)
    }

    fn send_option(&mut self, option: u32, data: &[u8]) -> Result<()> {
        let mut msg = Vec::with_capacity(16 + data.len());
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&option.to_be_bytes());
        msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
        msg.extend_from_slice(data);
        write_all(&mut self.stream, &msg, "an option")?;
        self.stream
            .flush()
            .map_err(|e| Error::Nbd(format!("sending an option: {e}")))
    }

    /// One reply to `option`: its type and data (errors of the server,
    /// types with bit 31, are returned as types for the caller to judge).
    fn option_reply(&mut self, option: u32) -> Result<(u32, Vec<u8>)> {
        let mut head = [0u8; 20];
        read_exact(&mut self.stream, &mut head, "an option reply")?;
        if u64_at(&head, 0)? != OPT_REPLY_MAGIC {
            return Err(protocol("bad option reply magic"));
        }
        if u32_at(&head, 8)? != option {
            return Err(protocol("an option reply for another option"));
        }
        let kind = u32_at(&head, 12)?;
        let len = u32_at(&head, 16)?;
        if len > MAX_OPTION_LEN {
            return Err(protocol(format!("option reply of {len} bytes")));
        }
        let mut data = vec![0u8; len as usize];
        read_exact(&mut self.stream, &mut data, "an option reply")?;
        Ok((kind, data))
    }

    fn set_meta_contexts(&mut self, name: &str, contexts: &[&str]) -> Result<()> {
        let mut data = Vec::new();
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&(contexts.len() as u32).to_be_bytes());
        for c in contexts {
            data.extend_from_slice(&(c.len() as u32).to_be_bytes());
            data.extend_from_slice(c.as_bytes());
        }
        self.send_option(OPT_SET_META_CONTEXT, &data)?;
        loop {
            let (kind, data) = self.option_reply(OPT_SET_META_CONTEXT)?;
            match kind {
                REP_ACK => return Ok(()),
                REP_META_CONTEXT => {
                    let id = u32_at(&data, 0)?;
                    let context =
                        String::from_utf8_lossy(data.get(4..).unwrap_or_default()).into_owned();
                    self.contexts.push((id, context));
                }
                k if k & (1 << 31) != 0 => return Ok(()), // no contexts: asked for later, by name
                k => {
                    return Err(protocol(format!(
                        "option reply type {k} to SET_META_CONTEXT"
                    )));
                }
            }
        }
    }

    fn go(&mut self, name: &str) -> Result<()> {
        let mut data = Vec::new();
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        self.send_option(OPT_GO, &data)?;
        let mut export = None;
        loop {
            let (kind, data) = self.option_reply(OPT_GO)?;
            match kind {
                REP_ACK => break,
                REP_INFO => {
                    if u16_at(&data, 0)? == INFO_EXPORT {
                        export = Some((u64_at(&data, 2)?, u16_at(&data, 10)?));
                    }
                }
                k if k & (1 << 31) != 0 => {
                    let why = String::from_utf8_lossy(&data);
                    let code = match k {
                        REP_ERR_UNKNOWN => "no such export",
                        REP_ERR_UNSUP => "NBD_OPT_GO not supported",
                        _ => "refused",
                    };
                    return Err(Error::Nbd(format!(
                        "the NBD server refused the export: {code}: {why}"
                    )));
                }
                k => return Err(protocol(format!("option reply type {k} to GO"))),
            }
        }
        let (size, flags) = export.ok_or_else(|| protocol("GO ended without the export's size"))?;
        self.size = size;
        self.flags = flags;
        Ok(())
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the server said the export is read-only.
    pub fn read_only(&self) -> bool {
        self.flags & TFLAG_READ_ONLY != 0
    }

    /// Whether the server offers the metadata context `name`.
    pub fn has_context(&self, name: &str) -> bool {
        self.contexts.iter().any(|(_, c)| c == name)
    }

    fn send_request(&mut self, kind: u16, flags: u16, offset: u64, len: u32) -> Result<u64> {
        self.send(kind, flags, offset, len, &[])
    }

    /// Sends one request (`len` is the request's length field; `data`
    /// follows it on the wire: a write's payload).
    fn send(&mut self, kind: u16, flags: u16, offset: u64, len: u32, data: &[u8]) -> Result<u64> {
        if self.out_of_step {
            return Err(Error::Nbd(
                "the NBD connection has replies pending from an abandoned read".into(),
            ));
        }
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut msg = [0u8; 28];
        msg[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        msg[4..6].copy_from_slice(&flags.to_be_bytes());
        msg[6..8].copy_from_slice(&kind.to_be_bytes());
        msg[8..16].copy_from_slice(&cookie.to_be_bytes());
        msg[16..24].copy_from_slice(&offset.to_be_bytes());
        msg[24..28].copy_from_slice(&len.to_be_bytes());
        write_all(&mut self.stream, &msg, "a request")?;
        write_all(&mut self.stream, data, "write data")?;
        self.stream
            .flush()
            .map_err(|e| Error::Nbd(format!("sending a request: {e}")))?;
        Ok(cookie)
    }

    /// The next reply's header.
    fn reply_header(&mut self) -> Result<Header> {
        let mut magic = [0u8; 4];
        read_exact(&mut self.stream, &mut magic, "a reply")?;
        match u32::from_be_bytes(magic) {
            SIMPLE_REPLY_MAGIC => {
                let mut rest = [0u8; 12];
                read_exact(&mut self.stream, &mut rest, "a reply")?;
                Ok(Header::Simple {
                    error: u32_at(&rest, 0)?,
                    cookie: u64_at(&rest, 4)?,
                })
            }
            STRUCTURED_REPLY_MAGIC if self.structured => {
                let mut rest = [0u8; 16];
                read_exact(&mut self.stream, &mut rest, "a reply")?;
                let len = u32_at(&rest, 12)?;
                if len > MAX_PAYLOAD + 8 {
                    return Err(protocol(format!("a reply chunk of {len} bytes")));
                }
                Ok(Header::Structured {
                    flags: u16_at(&rest, 0)?,
                    kind: u16_at(&rest, 2)?,
                    cookie: u64_at(&rest, 4)?,
                    len,
                })
            }
            m => Err(protocol(format!("bad reply magic {m:#x}"))),
        }
    }

    fn payload(&mut self, len: u32) -> Result<Vec<u8>> {
        let mut data = vec![0u8; len as usize];
        read_exact(&mut self.stream, &mut data, "a reply chunk")?;
        Ok(data)
    }

    /// Block status of `[offset, offset + length)` in `context`, as
    /// extents covering the range in order.
    ///
    /// # Errors
    /// [`Error::Nbd`]: the context was not negotiated, the server failed.
    pub fn block_status(&mut self, offset: u64, length: u64, context: &str) -> Result<Vec<Extent>> {
        let id = self
            .contexts
            .iter()
            .find(|(_, c)| c == context)
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                Error::Nbd(format!(
                    "the NBD server does not offer the metadata context {context:?}"
                ))
            })?;
        let end = offset
            .checked_add(length)
            .filter(|e| *e <= self.size)
            .ok_or_else(|| {
                Error::InvalidArgument("block status beyond the end of the export".into())
            })?;
        let mut out: Vec<Extent> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let ask = (end - pos).min(1 << 30) as u32;
            let cookie = self.send_request(CMD_BLOCK_STATUS, 0, pos, ask)?;
            let mut got = 0u64;
            loop {
                match self.reply_header()? {
                    Header::Simple { error, cookie: c } if c == cookie => {
                        return Err(Error::Nbd(format!(
                            "block status at offset {pos}: {}",
                            errno_name(error)
                        )));
                    }
                    Header::Structured {
                        flags,
                        kind,
                        cookie: c,
                        len,
                    } if c == cookie => {
                        let data = self.payload(len)?;
                        match kind {
                            REPLY_TYPE_BLOCK_STATUS => {
                                if u32_at(&data, 0)? == id {
                                    let descs = data.get(4..).unwrap_or_default();
                                    if descs.len() % 8 != 0 {
                                        return Err(protocol(
                                            "block status descriptors of odd length",
                                        ));
                                    }
                                    for d in descs.chunks_exact(8) {
                                        let len = u64::from(u32_at(d, 0)?);
                                        let flags = u32_at(d, 4)?;
                                        let at = pos + got;
                                        let len = len.min(end - at);
                                        if len == 0 {
                                            continue;
                                        }
                                        push_extent(
                                            &mut out,
                                            Extent {
                                                offset: at,
                                                length: len,
                                                flags,
                                            },
                                        );
                                        got += len;
                                    }
                                }
                            }
                            REPLY_TYPE_NONE => {}
                            REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                                return Err(Error::Nbd(format!(
                                    "block status at offset {pos}: {}",
                                    error_chunk(&data)
                                )));
                            }
                            k => {
                                return Err(protocol(format!(
                                    "reply chunk type {k} to block status"
                                )));
                            }
                        }
                        if flags & REPLY_FLAG_DONE != 0 {
                            break;
                        }
                    }
                    _ => return Err(protocol("a reply to a request never sent")),
                }
            }
            if got == 0 {
                return Err(protocol(format!(
                    "block status at offset {pos} described nothing"
                )));
            }
            pos += got;
        }
        Ok(out)
    }

    /// Writes `data` at `offset` and waits for the server to take it.
    ///
    /// # Errors
    /// [`Error::Nbd`] naming the offset.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if data.len() > MAX_PAYLOAD as usize {
            return Err(Error::InvalidArgument(format!(
                "a write of {} bytes",
                data.len()
            )));
        }
        let cookie = self.send(CMD_WRITE, 0, offset, data.len() as u32, data)?;
        self.wait_done(
            cookie,
            &format!("the NBD write of {} bytes at offset {offset}", data.len()),
        )
    }

    /// Asks the server to make every write durable.
    ///
    /// # Errors
    /// [`Error::Nbd`].
    pub fn flush(&mut self) -> Result<()> {
        let cookie = self.send_request(CMD_FLUSH, 0, 0, 0)?;
        self.wait_done(cookie, "the NBD flush")
    }

    /// Waits for the (data-less) reply to `cookie`.
    fn wait_done(&mut self, cookie: u64, what: &str) -> Result<()> {
        loop {
            match self.reply_header()? {
                Header::Simple { error, cookie: c } if c == cookie => {
                    return if error == 0 {
                        Ok(())
                    } else {
                        Err(Error::Nbd(format!("{what} failed: {}", errno_name(error))))
                    };
                }
                Header::Structured {
                    flags,
                    kind,
                    cookie: c,
                    len,
                } if c == cookie => {
                    let data = self.payload(len)?;
                    if kind == REPLY_TYPE_ERROR || kind == REPLY_TYPE_ERROR_OFFSET {
                        return Err(Error::Nbd(format!("{what} failed: {}", error_chunk(&data))));
                    }
                    if flags & REPLY_FLAG_DONE != 0 {
                        return Ok(());
                    }
                }
                _ => return Err(protocol("a reply to a request never sent")),
            }
        }
    }

    /// Ends the session politely.
    pub fn disconnect(mut self) {
        let _ = self.send_request(CMD_DISC, 0, 0, 0);
    }
}

fn push_extent(out: &mut Vec<Extent>, e: Extent) {
    if let Some(last) = out.last_mut() {
        if last.flags == e.flags && last.offset + last.length == e.offset {
            last.length += e.length;
            return;
        }
    }
    out.push(e);
}

/// The text of an error chunk: errno and the server's message.
fn error_chunk(data: &[u8]) -> String {
    let errno = u32_at(data, 0).unwrap_or(EIO);
    let len = usize::from(u16_at(data, 4).unwrap_or(0));
    let msg = data
        .get(6..6 + len)
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    if msg.is_empty() {
        errno_name(errno)
    } else {
        format!("{}: {msg}", errno_name(errno))
    }
}

enum Header {
    Simple {
        error: u32,
        cookie: u64,
    },
    Structured {
        flags: u16,
        kind: u16,
        cookie: u64,
        len: u32,
    },
}

/// One completed read.
pub struct ReadChunk {
    /// Where it starts.
    pub offset: u64,
    /// The bytes (zeros where the server sent holes).
    pub data: Vec<u8>,
    /// Whether the server sent the whole range as a hole.
    pub hole: bool,
}

struct Pending {
    offset: u64,
    data: Vec<u8>,
    data_bytes: u64,
    done: bool,
    error: Option<Error>,
}

/// Reads a sequence of ranges with up to `window` requests in flight,
/// handing them back in order.
pub struct ReadPipeline<S, I> {
    client: NbdClient<S>,
    ranges: I,
    window: usize,
    order: VecDeque<u64>,
    pending: HashMap<u64, Pending>,
}

impl<S: Read + Write, I: Iterator<Item = (u64, u32)>> ReadPipeline<S, I> {
    /// A pipeline over `ranges` (offset, length; each at most
    /// [`MAX_PAYLOAD`]).
    pub fn new(client: NbdClient<S>, ranges: I, window: usize) -> Self {
        ReadPipeline {
            client,
            ranges,
            window: window.max(1),
            order: VecDeque::new(),
            pending: HashMap::new(),
        }
    }

    /// The next range's bytes, or `None` after the last.
    ///
    /// # Errors
    /// [`Error::Nbd`] naming the offset: the server failed the read, broke
    /// the protocol or did not answer in time.
    pub fn next_read(&mut self) -> Option<Result<ReadChunk>> {
        while self.order.len() < self.window {
            let Some((offset, len)) = self.ranges.next() else {
                break;
            };
            if len > MAX_PAYLOAD
                || offset
                    .checked_add(u64::from(len))
                    .is_none_or(|e| e > self.client.size)
            {
                return Some(Err(Error::InvalidArgument(format!(
                    "a read of {len} bytes at offset {offset} is outside the export"
                ))));
            }
            let cookie = match self.client.send_request(CMD_READ, 0, offset, len) {
                Ok(c) => c,
                Err(e) => return Some(Err(e)),
            };
            self.client.reads += 1;
            self.client.bytes_requested += u64::from(len);
            self.order.push_back(cookie);
            self.pending.insert(
                cookie,
                Pending {
                    offset,
                    data: vec![0u8; len as usize],
                    data_bytes: 0,
                    done: false,
                    error: None,
                },
            );
        }
        let head = *self.order.front()?;
        loop {
            match self.pending.get(&head) {
                Some(p) if p.done => break,
                Some(_) => {}
                None => return Some(Err(protocol("lost track of a request"))),
            }
            if let Err(e) = self.one_reply() {
                return Some(Err(e));
            }
        }
        self.order.pop_front();
        let p = self.pending.remove(&head)?;
        if let Some(e) = p.error {
            return Some(Err(e));
        }
        let hole = self.client.structured && p.data_bytes == 0;
        Some(Ok(ReadChunk {
            offset: p.offset,
            data: p.data,
            hole,
        }))
    }

    /// Reads one reply (chunk) and applies it to its request.
    fn one_reply(&mut self) -> Result<()> {
        let header = self.client.reply_header()?;
        let (cookie, flags, kind, len) = match header {
            Header::Simple { error, cookie } => {
                let p = self
                    .pending
                    .get_mut(&cookie)
                    .ok_or_else(|| protocol("a reply to a request never sent"))?;
                p.done = true;
                if error != 0 {
                    p.error = Some(read_failed(p.offset, p.data.len(), &errno_name(error)));
                    return Ok(());
                }
                let Pending {
                    data, data_bytes, ..
                } = p;
                read_exact(&mut self.client.stream, data, "read data")?;
                *data_bytes = data.len() as u64;
                return Ok(());
            }
            Header::Structured {
                flags,
                kind,
                cookie,
                len,
            } => (cookie, flags, kind, len),
        };
        let p = self
            .pending
            .get_mut(&cookie)
            .ok_or_else(|| protocol("a reply to a request never sent"))?;
        match kind {
            REPLY_TYPE_OFFSET_DATA => {
                let mut at = [0u8; 8];
                read_exact(&mut self.client.stream, &mut at, "read data")?;
                let at = u64::from_be_bytes(at);
                let n = u64::from(
                    len.checked_sub(8)
                        .ok_or_else(|| protocol("short data chunk"))?,
                );
                let start = at
                    .checked_sub(p.offset)
                    .filter(|s| s + n <= p.data.len() as u64)
                    .ok_or_else(|| protocol("read data outside the request"))?;
                let dest = p
                    .data
                    .get_mut(start as usize..(start + n) as usize)
                    .ok_or_else(|| protocol("read data outside the request"))?;
                read_exact(&mut self.client.stream, dest, "read data")?;
                p.data_bytes += n;
            }
            REPLY_TYPE_OFFSET_HOLE => {
                let data = self.client.payload(len)?;
                let at = u64_at(&data, 0)?;
                let n = u64::from(u32_at(&data, 8)?);
                let start = at
                    .checked_sub(p.offset)
                    .filter(|s| s + n <= p.data.len() as u64)
                    .ok_or_else(|| protocol("a hole outside the request"))?;
                if let Some(d) = p.data.get_mut(start as usize..(start + n) as usize) {
                    d.fill(0);
                }
            }
            REPLY_TYPE_NONE => {
                self.client.payload(len)?;
            }
            REPLY_TYPE_ERROR | REPLY_TYPE_ERROR_OFFSET => {
                let data = self.client.payload(len)?;
                p.error = Some(read_failed(p.offset, p.data.len(), &error_chunk(&data)));
            }
            k => {
                self.client.payload(len)?;
                return Err(protocol(format!("reply chunk type {k} to a read")));
            }
        }
        if flags & REPLY_FLAG_DONE != 0 {
            p.done = true;
        }
        Ok(())
    }
}

fn read_failed(offset: u64, len: usize, why: &str) -> Error {
    Error::Nbd(format!(
        "the NBD read of {len} bytes at offset {offset} failed: {why}"
    ))
}

impl<S, I> ReadPipeline<S, I> {
    /// The client (its counters).
    pub fn client(&self) -> &NbdClient<S> {
        &self.client
    }

    /// The client back; if requests are still in flight their replies
    /// would come next on the connection, so it refuses further requests.
    pub fn into_client(self) -> NbdClient<S> {
        let mut client = self.client;
        if !self.order.is_empty() {
            client.out_of_step = true;
        }
        client
    }
}
