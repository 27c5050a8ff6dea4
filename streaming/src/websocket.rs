//! The WebSocket transports: remotecommand with channel-prefixed binary messages
//! (`v4`/`v5.channel.k8s.io`), and a byte-stream tunnel for SPDY-over-WebSocket
//! port-forward (`SPDY/3.1+portforward.k8s.io`).

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::remotecommand::{Command, Protocol, RESIZE_BUFFER, decode_resizes, status_json};
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

/// remotecommand sub-protocols spoken over WebSocket, preferred first.
pub const REMOTECOMMAND_PROTOCOLS: [(&str, Protocol); 2] = [
    ("v5.channel.k8s.io", Protocol::V5),
    ("v4.channel.k8s.io", Protocol::V4),
];

/// Copies a pipe into channel-tagged messages until EOF.
async fn pump_channel(mut rd: DuplexStream, channel: u8, tx: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = match rd.read(&mut buf[1..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf[0] = channel;
        if tx.send(Message::binary(buf[..=n].to_vec())).await.is_err() {
            return;
        }
    }
}

/// Serves exec or attach on an accepted WebSocket. v4 and v5 are served alike: both end
/// with the JSON status, and v5's close signal is simply never sent by a v4 client.
pub async fn serve_remotecommand<S>(
    ws: WebSocketStream<S>,
    _protocol: Protocol,
    runtime: &dyn DynRuntime,
    cmd: Command,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let w = cmd.wanted();
    let (mut sink, mut source) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(normal_close()).await;
    });

    let mut pumps = Vec::new();
    let mut output = |wanted: bool, channel: u8| {
        wanted.then(|| {
            let (ours, theirs) = tokio::io::duplex(PIPE);
            pumps.push(tokio::spawn(pump_channel(ours, channel, tx.clone())));
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
            let data = match msg {
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let Some((&channel, body)) = data.split_first() else {
                continue;
            };
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
    let mut status = vec![CHANNEL_ERROR];
    status.extend_from_slice(&status_json(&outcome));
    let _ = tx.send(Message::binary(status)).await;
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
