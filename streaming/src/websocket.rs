//! The WebSocket transports: remotecommand with channel-prefixed messages, binary
//! (`v5`/`v4.channel.k8s.io`, and the older `channel.k8s.io`) or base64 text
//! (`v4.base64.channel.k8s.io`, `base64.channel.k8s.io`), as the kubelet's own streaming
//! server speaks them; port-forward over the same channels (`?port=` in the query, a data
//! and an error channel per port); and a byte-stream tunnel for SPDY-over-WebSocket
//! port-forward (`SPDY/3.1+portforward.k8s.io`).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::remotecommand::{Command, Protocol, RESIZE_BUFFER, decode_resizes, final_status};
use crate::runtime::Streams;
use crate::server::DynRuntime;

pub const CHANNEL_STDIN: u8 = 0;
pub const CHANNEL_STDOUT: u8 = 1;
pub const CHANNEL_STDERR: u8 = 2;
pub const CHANNEL_ERROR: u8 = 3;
pub const CHANNEL_RESIZE: u8 = 4;
/// v5: `[255, channel]` closes that channel.
pub const CHANNEL_CLOSE: u8 = 255;

/// The port-forward tunnel's sub-protocol.
pub const SPDY_TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Largest WebSocket message accepted.
pub const MAX_MESSAGE: usize = 1 << 20;
const PIPE: usize = 64 << 10;
/// How long output may take to drain once the command has ended.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// A normal close: client-go reports any other close (even one without a code) as an
/// error on every stream.
fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// A remotecommand sub-protocol over WebSocket: its version (v4 and later end with a JSON
/// status, older ones with a plain message) and its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsProtocol {
    pub version: Protocol,
    /// Text messages: the channel as an ASCII digit, then the payload in base64.
    pub base64: bool,
}

impl WsProtocol {
    const fn new(version: Protocol, base64: bool) -> Self {
        Self { version, base64 }
    }

    /// One message of `data` on `channel`.
    fn frame(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
            text.push(char::from(b'0' + channel));
            BASE64.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut bytes = Vec::with_capacity(1 + data.len());
            bytes.push(channel);
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        }
    }

    /// A client message as (channel, payload); `None` for what this framing does not carry.
    fn unframe(self, msg: Message) -> Option<(u8, Vec<u8>)> {
        match msg {
            Message::Binary(b) if !self.base64 => {
                let (&channel, body) = b.split_first()?;
                Some((channel, body.to_vec()))
            }
            Message::Text(t) if self.base64 => {
                let (digit, body) = t.as_bytes().split_first()?;
                let channel = digit.checked_sub(b'0').filter(|c| *c <= 9)?;
                Some((channel, BASE64.decode(body).ok()?))
            }
            _ => None,
        }
    }
}

/// remotecommand sub-protocols spoken over WebSocket, preferred first.
pub const REMOTECOMMAND_PROTOCOLS: [(&str, WsProtocol); 5] = [
    ("v5.channel.k8s.io", WsProtocol::new(Protocol::V5, false)),
    ("v4.channel.k8s.io", WsProtocol::new(Protocol::V4, false)),
    (
        "v4.base64.channel.k8s.io",
        WsProtocol::new(Protocol::V4, true),
    ),
    ("channel.k8s.io", WsProtocol::new(Protocol::V1, false)),
    ("base64.channel.k8s.io", WsProtocol::new(Protocol::V1, true)),
];

/// The task that owns the socket's sending half: it sends what `tx` gets, then a normal
/// close once every sender is gone.
fn spawn_writer<S>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
) -> (mpsc::Sender<Message>, tokio::task::JoinHandle<()>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(normal_close()).await;
    });
    (tx, writer)
}

/// Copies a pipe into channel-tagged messages until EOF.
async fn pump_channel(
    mut rd: DuplexStream,
    channel: u8,
    protocol: WsProtocol,
    tx: mpsc::Sender<Message>,
) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if tx.send(protocol.frame(channel, &buf[..n])).await.is_err() {
            return;
        }
    }
}

/// Serves exec or attach on an accepted WebSocket. Every version is served alike but for
/// the final status (JSON from v4 on, a plain message before, nothing for a success) and
/// the framing; v5's close signal is simply never sent by an older client.
pub async fn serve_remotecommand<S>(
    ws: WebSocketStream<S>,
    protocol: WsProtocol,
    runtime: &dyn DynRuntime,
    cmd: Command,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let w = cmd.wanted();
    let (sink, mut source) = ws.split();
    let (tx, writer) = spawn_writer(sink);

    let mut pumps = Vec::new();
    let mut output = |wanted: bool, channel: u8| {
        wanted.then(|| {
            let (ours, theirs) = tokio::io::duplex(PIPE);
            pumps.push(tokio::spawn(pump_channel(
                ours,
                channel,
                protocol,
                tx.clone(),
            )));
            Box::new(theirs) as crate::runtime::BoxedWriter
        })
    };
    let stdout = output(w.stdout, CHANNEL_STDOUT);
    let stderr = output(w.stderr, CHANNEL_STDERR);
    let (stdin_ours, stdin) = if w.stdin {
        let (ours, theirs) = tokio::io::duplex(PIPE);
        (
            Some(ours),
            Some(Box::new(theirs) as crate::runtime::BoxedReader),
        )
    } else {
        (None, None)
    };
    let (resize_tx, resize) = if w.tty {
        let (t, r) = mpsc::channel(RESIZE_BUFFER);
        (Some(t), Some(r))
    } else {
        (None, None)
    };

    // The client's messages: stdin bytes, stdin close, resizes.
    let reader = tokio::spawn(async move {
        let mut stdin = stdin_ours;
        while let Some(Ok(msg)) = source.next().await {
            if let Message::Close(_) = msg {
                break;
            }
            let Some((channel, body)) = protocol.unframe(msg) else {
                continue;
            };
            let body = body.as_slice();
            match channel {
                CHANNEL_STDIN => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(body).await.is_err()
                    {
                        stdin = None;
                    }
                }
                CHANNEL_RESIZE => {
                    let mut sizes = Vec::new();
                    if decode_resizes(body, &mut sizes).is_ok()
                        && let Some(t) = &resize_tx
                    {
                        for s in sizes {
                            let _ = t.send(s).await;
                        }
                    }
                }
                CHANNEL_CLOSE if body.first() == Some(&CHANNEL_STDIN) => {
                    if let Some(mut s) = stdin.take() {
                        let _ = s.shutdown().await;
                    }
                }
                _ => {}
            }
        }
        // Dropping stdin here is its EOF.
    });

    let streams = Streams {
        stdin,
        stdout,
        stderr,
        resize,
    };
    let outcome = cmd.run(runtime, streams).await;
    // The streams are dropped: the pumps send what is left and end.
    let drained = async {
        for p in pumps {
            let _ = p.await;
        }
    };
    let _ = tokio::time::timeout(DRAIN_GRACE, drained).await;
    let status = final_status(protocol.version, &outcome);
    if !status.is_empty() {
        let _ = tx.send(protocol.frame(CHANNEL_ERROR, &status)).await;
    }
    drop(tx);
    let _ = tokio::time::timeout(DRAIN_GRACE, writer).await;
    reader.abort();
}

/// A WebSocket as a plain byte stream (each binary message's payload in order), for
/// protocols tunnelled inside it. The bridge tasks end with either side.
pub fn byte_stream<S>(ws: WebSocketStream<S>) -> DuplexStream
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (mut rd, mut wr) = tokio::io::split(ours);
    let (mut sink, mut source) = ws.split();
    tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if wr.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(normal_close()).await;
    });
    theirs
}

/// Port-forward sub-protocols over channels, as the kubelet's streaming server speaks
/// them; "" is a client that offers none (binary framing).
pub const PORT_FORWARD_PROTOCOLS: [(&str, WsProtocol); 3] = [
    ("v4.channel.k8s.io", WsProtocol::new(Protocol::V4, false)),
    (
        "v4.base64.channel.k8s.io",
        WsProtocol::new(Protocol::V4, true),
    ),
    ("", WsProtocol::new(Protocol::V4, false)),
];

/// Two channels per port, numbered in one byte (a base64 channel in one digit).
pub const MAX_FORWARDED_PORTS: usize = 5;

/// Serves port-forward on channels: port `i` of `ports` is one TCP connection into the
/// pod, its bytes on channel `2i` and its errors on `2i+1`; each channel first carries
/// the port number (two bytes, little-endian), as the kubelet's server sends it. The
/// WebSocket closes once every connection has ended.
pub async fn serve_port_forward<S>(
    ws: WebSocketStream<S>,
    protocol: WsProtocol,
    runtime: std::sync::Arc<dyn DynRuntime>,
    pod_id: String,
    ports: Vec<u16>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sink, mut source) = ws.split();
    let (tx, writer) = spawn_writer(sink);
    let mut to_ports = Vec::new();
    let mut forwards = tokio::task::JoinSet::new();
    for (i, port) in ports.into_iter().enumerate() {
        let (data, error) = (2 * i as u8, 2 * i as u8 + 1);
        for channel in [data, error] {
            let _ = tx.send(protocol.frame(channel, &port.to_le_bytes())).await;
        }
        let (ours, mut from_client) = tokio::io::duplex(PIPE);
        to_ports.push(Some(ours));
        let (runtime, pod_id, tx) = (runtime.clone(), pod_id.clone(), tx.clone());
        forwards.spawn(async move {
            let fail = |e: String| {
                let msg = format!("error forwarding port {port} to pod {pod_id}: {e}");
                protocol.frame(error, msg.as_bytes())
            };
            let tcp = match runtime.port_forward(&pod_id, port).await {
                Ok(tcp) => tcp,
                Err(e) => {
                    let _ = tx.send(fail(e.to_string())).await;
                    return;
                }
            };
            let (mut from_port, mut to_port) = tcp.into_split();
            // The connection ends when the pod's side does (as in the kubelet's server);
            // the client's half-close only ends what it sends.
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_port).await;
                let _ = to_port.shutdown().await;
            });
            let down = async {
                let mut buf = vec![0u8; 32 << 10];
                loop {
                    match from_port.read(&mut buf).await {
                        Ok(0) => return Ok(()),
                        Ok(n) => {
                            if tx.send(protocol.frame(data, &buf[..n])).await.is_err() {
                                return Ok(());
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            let r = down.await;
            up.abort();
            if let Err(e) = r {
                let _ = tx.send(fail(e.to_string())).await;
            }
        });
    }
    // The client's bytes, by data channel; its leaving is every port's EOF.
    let reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            if let Message::Close(_) = msg {
                break;
            }
            let Some((channel, body)) = protocol.unframe(msg) else {
                continue;
            };
            let slot = (channel % 2 == 0)
                .then(|| to_ports.get_mut(usize::from(channel / 2)))
                .flatten();
            if let Some(slot) = slot
                && let Some(pipe) = slot.as_mut()
                && pipe.write_all(&body).await.is_err()
            {
                *slot = None;
            }
        }
    });
    while forwards.join_next().await.is_some() {}
    drop(tx);
    let _ = tokio::time::timeout(DRAIN_GRACE, writer).await;
    reader.abort();
}
