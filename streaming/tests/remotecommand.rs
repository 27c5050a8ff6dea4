//! The streaming server end to end over real sockets, driven by a SPDY client built from
//! our codec and a WebSocket client, against a runtime that runs host processes (`sh -c`,
//! with a real pty for tty sessions): negotiation, the status message per protocol
//! version, tty resizes, the stream-creation timeout, the session cap and port-forward.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use streaming::spdy::{Frame, HeaderCompressor, HeaderDecompressor, Headers};
use streaming::{
    AttachRequest, ExecRequest, PortForwardRequest, RuntimeError, StreamingConfig,
    StreamingRuntime, StreamingServer, Streams,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Runs `req.cmd[0]` with `sh -c` on the host.
struct Host;

impl StreamingRuntime for Host {
    async fn check_container(&self, id: &str) -> Result<(), RuntimeError> {
        match id {
            "host" => Ok(()),
            _ => Err(RuntimeError::NotFound(format!("container {id} not found"))),
        }
    }

    async fn check_pod(&self, _pod_id: &str) -> Result<(), RuntimeError> {
        Ok(())
    }

    async fn exec(&self, req: ExecRequest, streams: Streams) -> Result<i32, RuntimeError> {
        if req.tty {
            pty_exec(&req.cmd[0], streams).await
        } else {
            pipe_exec(&req.cmd[0], streams).await
        }
    }

    async fn attach(&self, _req: AttachRequest, _streams: Streams) -> Result<(), RuntimeError> {
        Err(RuntimeError::Unsupported("no attach on the host".into()))
    }

    async fn port_forward(&self, _pod_id: &str, port: u16) -> Result<TcpStream, RuntimeError> {
        TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| RuntimeError::Internal(e.to_string()))
    }
}

fn internal(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Internal(e.to_string())
}

async fn pipe_exec(script: &str, streams: Streams) -> Result<i32, RuntimeError> {
    use std::process::Stdio;
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", script])
        .stdin(if streams.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(internal)?;
    let feed = match (streams.stdin, child.stdin.take()) {
        (Some(mut from), Some(mut to)) => Some(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to).await;
        })),
        _ => None,
    };
    let outputs: [(Option<streaming::BoxedReader>, _); 2] = [
        (
            child.stdout.take().map(|s| Box::new(s) as _),
            streams.stdout,
        ),
        (
            child.stderr.take().map(|s| Box::new(s) as _),
            streams.stderr,
        ),
    ];
    let mut copies = Vec::new();
    for (from, to) in outputs {
        copies.push(tokio::spawn(async move {
            if let (Some(mut from), Some(mut to)) = (from, to) {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                let _ = to.shutdown().await;
            }
        }));
    }
    let status = child.wait().await.map_err(internal)?;
    for c in copies {
        let _ = c.await;
    }
    if let Some(f) = feed {
        f.abort();
    }
    Ok(status.code().unwrap_or(128))
}

fn set_size(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer, on our own pty master.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

async fn pty_exec(script: &str, streams: Streams) -> Result<i32, RuntimeError> {
    use std::io::{Read, Write};
    let pty = nix::pty::openpty(None, None).map_err(internal)?;
    let (master, slave) = (pty.master, pty.slave);
    let mut cmd = tokio::process::Command::new("sh");
    cmd.args(["-c", script])
        .stdin(slave.try_clone().map_err(internal)?)
        .stdout(slave.try_clone().map_err(internal)?)
        .stderr(slave);
    // SAFETY: setsid and ioctl are async-signal-safe; the child makes the pty on its
    // stdin its controlling terminal before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(internal)?;
    // Our copies of the slave side go, so reads fail once the child is gone.
    drop(cmd);
    let mut reader = std::fs::File::from(master.try_clone().map_err(internal)?);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdout = streams.stdout;
    let out = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if let Some(o) = stdout.as_mut() {
                let _ = o.write_all(&b).await;
            }
        }
        if let Some(mut o) = stdout {
            let _ = o.shutdown().await;
        }
    });
    let mut writer = std::fs::File::from(master.try_clone().map_err(internal)?);
    let feed = streams.stdin.map(|mut from| {
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf).await {
                if n == 0 || writer.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
    });
    let mut resize = streams.resize;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.map_err(internal)?,
            Some(size) = async { resize.as_mut()?.recv().await } => {
                set_size(&master, size.height, size.width);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), out).await;
    if let Some(f) = feed {
        f.abort();
    }
    Ok(status.code().unwrap_or(128))
}

async fn server(config: impl FnOnce(&mut StreamingConfig)) -> StreamingServer {
    let mut c = StreamingConfig::new("127.0.0.1:0".parse().unwrap());
    config(&mut c);
    StreamingServer::start(c, Arc::new(Host)).unwrap()
}

fn exec_req(script: &str, tty: bool, stdin: bool) -> ExecRequest {
    ExecRequest {
        container_id: "host".into(),
        cmd: vec![script.into()],
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    }
}

/// A SPDY client made of our own codec.
struct Client {
    tcp: TcpStream,
    buf: Vec<u8>,
    c: HeaderCompressor,
    d: HeaderDecompressor,
    next_id: u32,
}

/// Sends the upgrade request with one `X-Stream-Protocol-Version` header per entry;
/// returns the response head (the whole response if refused) and, on 101, the client.
async fn upgrade(url: &str, protocol_headers: &[&str]) -> (String, Option<Client>) {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut tcp = TcpStream::connect(host).await.unwrap();
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocol_headers {
        req.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await.unwrap();
        assert!(
            n > 0,
            "closed in the handshake: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        let _ = tcp.read_to_end(&mut buf).await;
        return (String::from_utf8_lossy(&buf).into_owned(), None);
    }
    let client = Client {
        tcp,
        buf: buf[end..].to_vec(),
        c: HeaderCompressor::default(),
        d: HeaderDecompressor::default(),
        next_id: 1,
    };
    (head, Some(client))
}

impl Client {
    async fn send(&mut self, f: Frame) {
        let mut w = Vec::new();
        f.encode(&mut w);
        self.tcp.write_all(&w).await.unwrap();
    }

    async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let pairs = headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let header_block = self.c.compress(&Headers(pairs));
        self.send(Frame::SynStream {
            stream_id: id,
            associated_id: 0,
            priority: 0,
            flags: 0,
            header_block,
        })
        .await;
        id
    }

    async fn data(&mut self, stream_id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id,
            fin,
            data: data.to_vec(),
        })
        .await;
    }

    async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Some((f, used)) = Frame::decode(&self.buf).unwrap() {
                self.buf.drain(..used);
                if let Frame::SynReply { header_block, .. } = &f {
                    self.d.decompress(header_block).unwrap();
                }
                return Some(f);
            }
            let mut chunk = [0u8; 16384];
            let n = self.tcp.read(&mut chunk).await.unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The server's DATA per stream and the streams it finished, until `done` says so
    /// or the server closes the connection.
    async fn collect(
        &mut self,
        done: impl Fn(&[u32]) -> bool,
    ) -> (HashMap<u32, Vec<u8>>, Vec<u32>) {
        let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut fins = Vec::new();
        let all = async {
            while !done(&fins) {
                match self.recv().await {
                    Some(Frame::Data {
                        stream_id,
                        fin,
                        data: d,
                    }) => {
                        data.entry(stream_id).or_default().extend_from_slice(&d);
                        if fin {
                            fins.push(stream_id);
                        }
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("the server did not finish in time");
        (data, fins)
    }

    /// Everything until the server closes the connection.
    async fn drain(&mut self) -> (HashMap<u32, Vec<u8>>, Vec<u32>) {
        self.collect(|_| false).await
    }
}

fn stream(kind: &str) -> Vec<(&str, &str)> {
    vec![("streamtype", kind)]
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_spdy_v4_ends_with_a_json_status() {
    let s = server(|_| {}).await;
    for (script, code) in [
        ("echo -n out; echo -n err >&2", 0),
        ("echo -n out; echo -n err >&2; exit 7", 7),
    ] {
        let url = s.exec(exec_req(script, false, false)).await.unwrap();
        let (head, client) = upgrade(&url, &["v4.channel.k8s.io"]).await;
        assert!(
            head.contains("X-Stream-Protocol-Version: v4.channel.k8s.io"),
            "{head}"
        );
        let mut c = client.unwrap();
        let error = c.open(&stream("error")).await;
        let stdout = c.open(&stream("stdout")).await;
        let stderr = c.open(&stream("stderr")).await;
        let (data, fins) = c.drain().await;
        assert_eq!(data[&stdout], b"out");
        assert_eq!(data[&stderr], b"err");
        assert!(fins.contains(&stdout) && fins.contains(&stderr) && fins.contains(&error));
        let status: serde_json::Value = serde_json::from_slice(&data[&error]).unwrap();
        if code == 0 {
            assert_eq!(
                status,
                serde_json::json!({"metadata": {}, "status": "Success"})
            );
        } else {
            assert_eq!(status["status"], "Failure");
            assert_eq!(status["reason"], "NonZeroExitCode");
            assert_eq!(status["details"]["causes"][0]["reason"], "ExitCode");
            assert_eq!(status["details"]["causes"][0]["message"], "7");
        }
        // The URL was single-use.
        let (head, client) = upgrade(&url, &["v4.channel.k8s.io"]).await;
        assert!(
            client.is_none() && head.starts_with("HTTP/1.1 404"),
            "{head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn negotiation_takes_the_first_offered_protocol_we_speak() {
    let s = server(|_| {}).await;
    // Comma-separated and repeated headers; the client's order decides.
    let url = s.exec(exec_req("exit 3", false, false)).await.unwrap();
    let offered = ["x-unknown, v3.channel.k8s.io", "v4.channel.k8s.io"];
    let (head, client) = upgrade(&url, &offered).await;
    assert!(
        head.contains("X-Stream-Protocol-Version: v3.channel.k8s.io"),
        "{head}"
    );
    let mut c = client.unwrap();
    let error = c.open(&stream("error")).await;
    c.open(&stream("stdout")).await;
    c.open(&stream("stderr")).await;
    let (data, _) = c.drain().await;
    // Before v4 the failure is a plain message.
    let msg = String::from_utf8(data[&error].clone()).unwrap();
    assert!(
        msg.contains("non-zero exit code") && msg.contains('3'),
        "{msg}"
    );
    assert!(!msg.starts_with('{'), "{msg}");

    // v5 is accepted (and behaves as v4 over SPDY).
    let url = s.exec(exec_req("true", false, false)).await.unwrap();
    let (head, _) = upgrade(&url, &["v5.channel.k8s.io"]).await;
    assert!(
        head.contains("X-Stream-Protocol-Version: v5.channel.k8s.io"),
        "{head}"
    );

    let url = s.exec(exec_req("true", false, false)).await.unwrap();
    let (head, client) = upgrade(&url, &["v9.channel.k8s.io"]).await;
    assert!(client.is_none());
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.contains(
            "X-Accepted-Stream-Protocol-Versions: v5.channel.k8s.io,v4.channel.k8s.io,\
             v3.channel.k8s.io,v2.channel.k8s.io,channel.k8s.io"
        ),
        "{head}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tty_exec_applies_resizes_and_ends_when_the_process_exits() {
    let s = server(|_| {}).await;
    let url = s
        .exec(exec_req("read x; stty size", true, true))
        .await
        .unwrap();
    let (_, client) = upgrade(&url, &["v4.channel.k8s.io"]).await;
    let mut c = client.unwrap();
    let error = c.open(&stream("error")).await;
    let stdin = c.open(&stream("stdin")).await;
    let stdout = c.open(&stream("stdout")).await;
    let resize = c.open(&stream("resize")).await;
    // Two messages in one frame, the second split across frames.
    c.data(resize, br#"{"Width":80,"Height":24}{"Width":12"#, false)
        .await;
    c.data(resize, br#"3,"Height":45}"#, false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // stdin stays open: the session must end because the process does.
    c.data(stdin, b"go\n", false).await;
    let (data, _) = c.drain().await;
    let out = String::from_utf8_lossy(&data[&stdout]);
    assert!(out.contains("45 123"), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&data[&error]).unwrap();
    assert_eq!(status["status"], "Success");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_opens_its_streams_is_dropped() {
    let s = server(|c| c.stream_creation_timeout = Duration::from_millis(300)).await;
    let url = s.exec(exec_req("true", false, true)).await.unwrap();
    let (_, client) = upgrade(&url, &["v4.channel.k8s.io"]).await;
    let mut c = client.unwrap();
    c.open(&stream("error")).await;
    let (data, _) = c.drain().await;
    // The connection ends with no status (at most FINs on the streams it had).
    assert!(data.values().all(Vec::is_empty), "{data:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_validated_and_sessions_capped() {
    let s = server(|c| c.max_sessions = 1).await;
    let mut bad = exec_req("true", true, false);
    bad.stderr = true;
    assert!(matches!(
        s.exec(bad).await,
        Err(streaming::Error::InvalidArgument(_))
    ));
    let mut none = exec_req("true", false, false);
    none.stdout = false;
    none.stderr = false;
    assert!(matches!(
        s.exec(none).await,
        Err(streaming::Error::InvalidArgument(_))
    ));
    let mut unknown = exec_req("true", false, false);
    unknown.container_id = "nope".into();
    assert!(matches!(
        s.exec(unknown).await,
        Err(streaming::Error::Runtime(RuntimeError::NotFound(_)))
    ));
    // One session at a time here: the second is refused while the first waits.
    let first = s.exec(exec_req("sleep 1", false, false)).await.unwrap();
    let (_, held) = upgrade(&first, &["v4.channel.k8s.io"]).await;
    assert!(held.is_some());
    let second = s.exec(exec_req("true", false, false)).await.unwrap();
    let (head, _) = upgrade(&second, &["v4.channel.k8s.io"]).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_over_websocket_v5_with_stdin_close() {
    let s = server(|_| {}).await;
    let url = s
        .exec(exec_req("cat; echo -n e >&2; exit 2", false, true))
        .await
        .unwrap();
    let mut req = url
        .replace("http://", "ws://")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );
    ws.send(Message::binary(b"\x00hello".to_vec()))
        .await
        .unwrap();
    // v5's close signal for stdin: cat sees EOF.
    ws.send(Message::binary(vec![255, 0])).await.unwrap();
    let mut by_channel: HashMap<u8, Vec<u8>> = HashMap::new();
    let mut close_code = None;
    let read = async {
        while let Some(Ok(m)) = ws.next().await {
            match m {
                Message::Binary(b) if !b.is_empty() => {
                    by_channel
                        .entry(b[0])
                        .or_default()
                        .extend_from_slice(&b[1..]);
                }
                Message::Close(f) => close_code = f.map(|f| u16::from(f.code)),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .unwrap();
    assert_eq!(by_channel[&1], b"hello");
    assert_eq!(by_channel[&2], b"e");
    let status: serde_json::Value = serde_json::from_slice(&by_channel[&3]).unwrap();
    assert_eq!(status["details"]["causes"][0]["message"], "2");
    // client-go treats any close but a normal one as an error on every stream.
    assert_eq!(close_code, Some(1000));
}

async fn open_forward(c: &mut Client, kind: &str, port: &str, request_id: &str) -> u32 {
    c.open(&[
        ("streamtype", kind),
        ("port", port),
        ("requestid", request_id),
    ])
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_spdy_pairs_streams_and_reports_dial_errors() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port().to_string();
    drop(closed);

    let s = server(|_| {}).await;
    let url = s
        .port_forward(PortForwardRequest {
            pod_id: "pod".into(),
            ports: vec![],
        })
        .await
        .unwrap();
    let (head, client) = upgrade(&url, &["portforward.k8s.io"]).await;
    assert!(
        head.contains("X-Stream-Protocol-Version: portforward.k8s.io"),
        "{head}"
    );
    let mut c = client.unwrap();
    let e0 = open_forward(&mut c, "error", &port, "0").await;
    let d0 = open_forward(&mut c, "data", &port, "0").await;
    let e1 = open_forward(&mut c, "error", &closed_port, "1").await;
    open_forward(&mut c, "data", &closed_port, "1").await;
    let payload = vec![42u8; 200_000];
    for chunk in payload.chunks(30_000) {
        c.data(d0, chunk, false).await;
    }
    c.data(d0, b"", true).await;
    let (data, _) = c
        .collect(|fins| [d0, e0, e1].iter().all(|s| fins.contains(s)))
        .await;
    assert_eq!(data.get(&d0).map(Vec::len), Some(payload.len()));
    assert!(data.get(&e0).is_none_or(Vec::is_empty));
    let err = String::from_utf8_lossy(&data[&e1]);
    assert!(
        err.contains(&format!("error forwarding port {closed_port}")),
        "{err}"
    );
}

/// The kubelet's own streaming server also speaks the pre-v4 `channel.k8s.io` and the
/// base64 text framings (node e2e's "remote command execution over websockets" uses them):
/// the same channels, and before v4 the end is a plain message, nothing for a success.
#[tokio::test(flavor = "multi_thread")]
async fn exec_over_websocket_legacy_and_base64_protocols() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let s = server(|_| {}).await;
    for (protocol, exit, base64) in [
        ("channel.k8s.io", 0, false),
        ("channel.k8s.io", 3, false),
        ("base64.channel.k8s.io", 0, true),
        ("v4.base64.channel.k8s.io", 3, true),
    ] {
        let url = s
            .exec(exec_req(
                &format!("read l; echo \"$l\"; echo -n e >&2; exit {exit}"),
                false,
                true,
            ))
            .await
            .unwrap();
        let mut req = url
            .replace("http://", "ws://")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], protocol);
        let stdin = if base64 {
            Message::text(format!("0{}", b64.encode("hello\n")))
        } else {
            Message::binary(b"\x00hello\n".to_vec())
        };
        ws.send(stdin).await.unwrap();
        let mut by_channel: HashMap<u8, Vec<u8>> = HashMap::new();
        let read = async {
            while let Some(Ok(m)) = ws.next().await {
                let (channel, body) = match m {
                    Message::Binary(b) if !base64 && !b.is_empty() => (b[0], b[1..].to_vec()),
                    Message::Text(t) if base64 && !t.is_empty() => (
                        t.as_bytes()[0] - b'0',
                        b64.decode(&t.as_bytes()[1..]).unwrap(),
                    ),
                    Message::Close(_) => break,
                    other => panic!("{protocol}: unexpected {other:?}"),
                };
                by_channel
                    .entry(channel)
                    .or_default()
                    .extend_from_slice(&body);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap();
        assert_eq!(by_channel[&1], b"hello\n", "{protocol}");
        assert_eq!(by_channel[&2], b"e", "{protocol}");
        let status = by_channel.get(&3).cloned().unwrap_or_default();
        match (protocol.starts_with("v4"), exit) {
            (false, 0) => assert!(status.is_empty(), "{protocol}: {status:?}"),
            (false, _) => assert_eq!(
                String::from_utf8_lossy(&status),
                "command terminated with non-zero exit code: exit status 3"
            ),
            (true, _) => {
                let v: serde_json::Value = serde_json::from_slice(&status).unwrap();
                assert_eq!(v["details"]["causes"][0]["message"], "3", "{protocol}");
            }
        }
    }
}

/// The kubelet's own port-forward over WebSocket channels (`?port=` in the query,
/// `v4.channel.k8s.io`): each port's channels first carry the port, then its bytes (data,
/// channel 2i) or its errors (channel 2i+1); the socket closes once every connection has.
#[tokio::test(flavor = "multi_thread")]
async fn port_forward_over_websocket_channels_with_ports_in_the_query() {
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = echo.local_addr().unwrap().port();
    tokio::spawn(async move {
        // Answers one line, then closes: the forward ends with the pod's side.
        while let Ok((conn, _)) = echo.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = conn.into_split();
                let mut line = String::new();
                let _ = tokio::io::BufReader::new(r).read_line(&mut line).await;
                let _ = w.write_all(format!("echo {line}").as_bytes()).await;
            });
        }
    });
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);

    let s = server(|_| {}).await;
    // The ports in the query, or (as a kubelet proxying such a request sends them) in the
    // PortForward request.
    for (protocol, in_query) in [("v4.channel.k8s.io", true), ("", true), ("", false)] {
        let url = s
            .port_forward(PortForwardRequest {
                pod_id: "pod".into(),
                ports: if in_query {
                    vec![]
                } else {
                    vec![port, closed_port]
                },
            })
            .await
            .unwrap();
        let url = if in_query {
            format!("{url}?port={port}&port={closed_port}")
        } else {
            url
        };
        let mut req = url
            .replace("http://", "ws://")
            .into_client_request()
            .unwrap();
        if !protocol.is_empty() {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
        }
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        ws.send(Message::binary(b"\x00hi\n".to_vec()))
            .await
            .unwrap();
        let mut by_channel: HashMap<u8, Vec<u8>> = HashMap::new();
        let read = async {
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Binary(b) if !b.is_empty() => by_channel
                        .entry(b[0])
                        .or_default()
                        .extend_from_slice(&b[1..]),
                    Message::Close(_) => break,
                    other => panic!("unexpected {other:?}"),
                };
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .unwrap();
        let mut data = port.to_le_bytes().to_vec();
        data.extend_from_slice(b"echo hi\n");
        assert_eq!(by_channel[&0], data, "{protocol:?}");
        assert_eq!(by_channel[&1], port.to_le_bytes(), "{protocol:?}");
        assert_eq!(by_channel[&2], closed_port.to_le_bytes(), "{protocol:?}");
        let err = String::from_utf8_lossy(&by_channel[&3][2..]).into_owned();
        assert!(
            err.contains(&format!("error forwarding port {closed_port}")),
            "{err}"
        );
    }
    // No port, or a bad one: a clear 400 before any upgrade.
    for query in ["", "?port=0", "?port=http"] {
        let url = s
            .port_forward(PortForwardRequest {
                pod_id: "pod".into(),
                ports: vec![],
            })
            .await
            .unwrap();
        let req = format!("{url}{query}")
            .replace("http://", "ws://")
            .into_client_request()
            .unwrap();
        let e = tokio_tungstenite::connect_async(req).await.unwrap_err();
        assert!(e.to_string().contains("400"), "{query}: {e}");
    }
}
