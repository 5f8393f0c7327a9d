//! QMP, QEMU's JSON machine protocol, over a Unix socket: commands with
//! ids, asynchronous events skipped. The same line protocol without a
//! greeting is the guest agent's ([`Qmp::guest_agent`]).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Error, Result};

/// One message from QEMU.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// The greeting (`{"QMP": {...}}`).
    Greeting,
    /// An asynchronous event (`{"event": NAME, ...}`).
    Event(String),
    /// A command's result.
    Return {
        /// The id the command was sent with.
        id: Option<Value>,
        /// Its value.
        value: Value,
    },
    /// A command's failure.
    Error {
        /// The id the command was sent with.
        id: Option<Value>,
        /// `class` and `desc`.
        message: String,
    },
}

/// Decodes one line from QMP (untrusted: errors, never panics).
///
/// # Errors
/// [`Error::Tool`] for a line that is not a QMP message.
pub fn parse_message(line: &[u8]) -> Result<Message> {
    let bad = |why: String| Error::Tool {
        program: "QMP".into(),
        detail: why,
    };
    let v: Value = serde_json::from_slice(line).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(map) = v else {
        return Err(bad("a message that is not an object".into()));
    };
    let id = map.get("id").cloned();
    if let Some(value) = map.get("return") {
        return Ok(Message::Return {
            id,
            value: value.clone(),
        });
    }
    if let Some(e) = map.get("error") {
        let class = e.get("class").and_then(Value::as_str).unwrap_or("Error");
        let desc = e
            .get("desc")
            .and_then(Value::as_str)
            .unwrap_or("(no description)");
        return Ok(Message::Error {
            id,
            message: format!("{class}: {desc}"),
        });
    }
    if let Some(name) = map.get("event").and_then(Value::as_str) {
        return Ok(Message::Event(name.to_string()));
    }
    if map.contains_key("QMP") {
        return Ok(Message::Greeting);
    }
    Err(bad("a message with neither return, error nor event".into()))
}

/// A QMP (or guest agent) connection.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    what: String,
}

impl Qmp {
    fn open(socket: &Path, timeout: Duration, what: &str) -> Result<Self> {
        let fail = |e: std::io::Error| Error::Tool {
            program: what.into(),
            detail: format!("{}: {e}", socket.display()),
        };
        let stream = UnixStream::connect(socket).map_err(fail)?;
        stream.set_read_timeout(Some(timeout)).map_err(fail)?;
        let writer = stream.try_clone().map_err(fail)?;
        Ok(Qmp {
            reader: BufReader::new(stream),
            writer,
            next_id: 1,
            what: format!("{what} {}", socket.display()),
        })
    }

    /// Connects to a QMP monitor and leaves capabilities negotiation.
    ///
    /// # Errors
    /// [`Error::Tool`]: not a QMP socket, no answer within `timeout`.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self> {
        let mut q = Qmp::open(socket, timeout, "QMP")?;
        match parse_message(&q.line()?)? {
            Message::Greeting => {}
            other => return Err(q.fail(format!("expected the greeting, got {other:?}"))),
        }
        q.execute("qmp_capabilities", json!({}))?;
        Ok(q)
    }

    /// Connects to a guest agent and synchronises (`guest-sync`).
    ///
    /// # Errors
    /// [`Error::Tool`]: no agent answers within `timeout`.
    pub fn guest_agent(socket: &Path, timeout: Duration) -> Result<Self> {
        let mut q = Qmp::open(socket, timeout, "guest agent")?;
        let token = std::process::id() as u64 * 1000 + crate::image::unique();
        let got = q.execute("guest-sync", json!({ "id": token }))?;
        if got != json!(token) {
            return Err(q.fail(format!("guest-sync answered {got}")));
        }
        Ok(q)
    }

    fn fail(&self, detail: String) -> Error {
        Error::Tool {
            program: self.what.clone(),
            detail,
        }
    }

    fn line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        match self.reader.read_until(b'\n', &mut line) {
            Ok(0) => Err(self.fail("the connection closed".into())),
            Ok(_) => Ok(line),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(self.fail("no answer in time".into()))
            }
            Err(e) => Err(self.fail(e.to_string())),
        }
    }

    /// Runs `command` with `arguments`; its `return` value.
    ///
    /// # Errors
    /// [`Error::Tool`] with QEMU's error class and description.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "execute": command, "arguments": arguments, "id": id });
        let mut text = msg.to_string();
        text.push('\n');
        self.writer
            .write_all(text.as_bytes())
            .map_err(|e| self.fail(format!("sending {command}: {e}")))?;
        loop {
            let line = self.line()?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match parse_message(&line)? {
                Message::Return {
                    id: Some(got),
                    value,
                } if got == json!(id) => return Ok(value),
                Message::Error {
                    id: Some(got),
                    message,
                } if got == json!(id) => {
                    return Err(self.fail(format!("{command}: {message}")));
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn messages_decode_and_garbage_is_an_error() {
        assert_eq!(
            parse_message(br#"{"QMP": {"version": {}}}"#).unwrap(),
            Message::Greeting
        );
        assert_eq!(
            parse_message(br#"{"return": {}, "id": 3}"#).unwrap(),
            Message::Return {
                id: Some(json!(3)),
                value: json!({})
            }
        );
        let e =
            parse_message(br#"{"error": {"class": "GenericError", "desc": "no node"}, "id": 4}"#)
                .unwrap();
        assert_eq!(
            e,
            Message::Error {
                id: Some(json!(4)),
                message: "GenericError: no node".into()
            }
        );
        assert_eq!(
            parse_message(br#"{"event": "JOB_STATUS_CHANGE", "data": {}}"#).unwrap(),
            Message::Event("JOB_STATUS_CHANGE".into())
        );
        for bad in [&b"[]"[..], b"{", b"{}", b"\xff", b"3"] {
            assert!(parse_message(bad).is_err());
        }
    }
}
