//! remotecommand (exec and attach), independent of the transport: the sub-protocols, the
//! run itself, the final status; and its SPDY front-end. The WebSocket front-end is in
//! `websocket.rs`; both hand the runtime the same [`Streams`].

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::runtime::{AttachRequest, ExecRequest, Streams, TermSize};
use crate::server::DynRuntime;
use crate::spdy::{SpdyConnection, SpdyStream, rst};
use crate::{Error, RuntimeError};

/// Resize events buffered towards the runtime.
pub const RESIZE_BUFFER: usize = 16;
/// A resize stream that sends more than this without a complete message is broken.
const MAX_RESIZE_MESSAGE: usize = 4 << 10;

/// The remotecommand sub-protocol versions, newest first: the order a server prefers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    V1,
    V2,
    V3,
    V4,
    /// Over SPDY, v5 behaves exactly like v4; over WebSocket it adds the close signal.
    V5,
}

impl Protocol {
    pub const SPDY: [Protocol; 5] = [
        Protocol::V5,
        Protocol::V4,
        Protocol::V3,
        Protocol::V2,
        Protocol::V1,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Protocol::V5 => "v5.channel.k8s.io",
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V3 => "v3.channel.k8s.io",
            Protocol::V2 => "v2.channel.k8s.io",
            Protocol::V1 => "channel.k8s.io",
        }
    }

    /// v4 and later end with a JSON status; older versions with a plain error message.
    fn json_status(self) -> bool {
        self >= Protocol::V4
    }

    /// v3 added the resize stream.
    fn has_resize(self) -> bool {
        self >= Protocol::V3
    }
}

/// The first protocol the client offers that we speak. `Ok(None)` when the client offers
/// none at all; `Err` with our list when it offers only ones we do not speak.
pub fn negotiate<'a, T: Copy>(
    offered: &[&str],
    supported: &'a [(&'a str, T)],
) -> Result<Option<T>, String> {
    if offered.is_empty() {
        return Ok(None);
    }
    for o in offered {
        if let Some((_, p)) = supported.iter().find(|(name, _)| name == o) {
            return Ok(Some(*p));
        }
    }
    Err(supported
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(","))
}

/// Exec or attach.
#[derive(Debug, Clone)]
pub enum Command {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

/// Which streams a session has.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Command {
    pub fn wanted(&self) -> Wanted {
        let (stdin, stdout, stderr, tty) = match self {
            Command::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Command::Attach(r) => (r.stdin, r.stdout, r.stderr, r.tty),
        };
        Wanted {
            stdin,
            stdout,
            // A terminal has one output; the CRI refuses tty with stderr before this.
            stderr: stderr && !tty,
            tty,
        }
    }

    /// Runs it; an attach that ends cleanly counts as exit code 0.
    pub async fn run(
        self,
        runtime: &dyn DynRuntime,
        streams: Streams,
    ) -> Result<i32, RuntimeError> {
        match self {
            Command::Exec(r) => runtime.exec(r, streams).await,
            Command::Attach(r) => runtime.attach(r, streams).await.map(|()| 0),
        }
    }
}

/// The v4 status message for an outcome: `Success`, `NonZeroExitCode` with the code, or
/// `InternalError`.
pub fn status_json(outcome: &Result<i32, RuntimeError>) -> Vec<u8> {
    let status = match outcome {
        Ok(0) => json!({"metadata": {}, "status": "Success"}),
        Ok(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(e) => json!({
            "metadata": {},
            "status": "Failure",
            "message": e.to_string(),
            "reason": "InternalError",
            "code": 500,
        }),
    };
    status.to_string().into_bytes()
}

/// What goes on the error stream at the end, for `protocol`.
pub fn final_status(protocol: Protocol, outcome: &Result<i32, RuntimeError>) -> Vec<u8> {
    if protocol.json_status() {
        return status_json(outcome);
    }
    match outcome {
        Ok(0) => Vec::new(),
        Ok(code) => {
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes()
        }
        Err(e) => e.to_string().into_bytes(),
    }
}

/// Splits a byte stream of concatenated JSON resize messages into sizes; returns the
/// bytes of an incomplete trailing message, or an error for garbage.
pub fn decode_resizes(buf: &[u8], out: &mut Vec<TermSize>) -> Result<usize, serde_json::Error> {
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<TermSize>();
    loop {
        let at = it.byte_offset();
        match it.next() {
            None => return Ok(buf.len()),
            Some(Ok(size)) => out.push(size),
            Some(Err(e)) if e.is_eof() => return Ok(at),
            Some(Err(e)) => return Err(e),
        }
    }
}

/// Feeds a resize stream's messages to `tx` until EOF, garbage, or the receiver leaves.
async fn pump_resizes<R: tokio::io::AsyncRead + Unpin>(mut rd: R, tx: mpsc::Sender<TermSize>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match rd.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut sizes = Vec::new();
        match decode_resizes(&buf, &mut sizes) {
            Ok(used) => {
                buf.drain(..used);
            }
            Err(e) => {
                tracing::debug!(error = %e, "bad resize message; ignoring the resize stream");
                return;
            }
        }
        if buf.len() > MAX_RESIZE_MESSAGE {
            return;
        }
        for s in sizes {
            if tx.send(s).await.is_err() {
                return;
            }
        }
    }
}

/// Resizes from a byte stream, for the runtime.
pub fn resize_channel<R>(rd: R) -> (mpsc::Receiver<TermSize>, tokio::task::JoinHandle<()>)
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(RESIZE_BUFFER);
    (rx, tokio::spawn(pump_resizes(rd, tx)))
}

#[derive(Default)]
struct SpdyStreams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl SpdyStreams {
    fn complete(&self, w: Wanted, protocol: Protocol) -> bool {
        self.error.is_some()
            && (!w.stdin || self.stdin.is_some())
            && (!w.stdout || self.stdout.is_some())
            && (!w.stderr || self.stderr.is_some())
            && (!(w.tty && protocol.has_resize()) || self.resize.is_some())
    }
}

/// Serves exec or attach on an upgraded SPDY connection.
pub async fn serve_spdy(
    mut conn: SpdyConnection,
    protocol: Protocol,
    runtime: &dyn DynRuntime,
    cmd: Command,
    stream_timeout: Duration,
) -> Result<(), Error> {
    let w = cmd.wanted();
    let mut got = SpdyStreams::default();
    let collect = async {
        while !got.complete(w, protocol) {
            let Some(s) = conn.accept().await else {
                return Err(Error::Protocol(
                    "the client left before opening its streams".into(),
                ));
            };
            let slot = match s.headers.get("streamtype") {
                Some("error") => &mut got.error,
                Some("stdin") if w.stdin => &mut got.stdin,
                Some("stdout") if w.stdout => &mut got.stdout,
                Some("stderr") if w.stderr => &mut got.stderr,
                Some("resize") if w.tty => &mut got.resize,
                other => {
                    tracing::debug!(stream_type = ?other, "refusing an unexpected stream");
                    s.reset(rst::REFUSED_STREAM);
                    continue;
                }
            };
            if slot.is_some() {
                s.reset(rst::PROTOCOL_ERROR);
                continue;
            }
            *slot = Some(s);
        }
        Ok(())
    };
    match tokio::time::timeout(stream_timeout, collect).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Protocol(format!(
                "the client did not open its streams within {stream_timeout:?}"
            )));
        }
    }
    let SpdyStreams {
        error,
        stdin,
        stdout,
        stderr,
        resize,
    } = got;
    let mut error = error.expect("complete() checked the error stream");
    let (resize, resize_task) = match resize {
        Some(s) => {
            let (rx, task) = resize_channel(s.io);
            (Some(rx), Some(task))
        }
        None => (None, None),
    };
    let streams = Streams {
        stdin: stdin.map(|s| Box::new(s.io) as _),
        stdout: stdout.map(|s| Box::new(s.io) as _),
        stderr: stderr.map(|s| Box::new(s.io) as _),
        resize,
    };
    let work = cmd.run(runtime, streams);
    tokio::pin!(work);
    // Streams opened after the expected ones are refused while the command runs.
    let outcome = loop {
        tokio::select! {
            outcome = &mut work => break outcome,
            extra = conn.accept() => match extra {
                Some(s) => s.reset(rst::REFUSED_STREAM),
                None => break work.await,
            },
        }
    };
    if let Some(t) = resize_task {
        t.abort();
    }
    if let Err(e) = &outcome {
        tracing::debug!(error = %e, "exec/attach failed");
    }
    let status = final_status(protocol, &outcome);
    if !status.is_empty() {
        let _ = error.io.write_all(&status).await;
    }
    let _ = error.io.shutdown().await;
    drop(error);
    conn.close().await;
    Ok(())
}
