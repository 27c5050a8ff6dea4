//! A server-side SPDY/3.1 connection. The peer opens every stream (SYN_STREAM); each one
//! is answered with SYN_REPLY at once (the Go client waits for it) and handed out as a
//! [`SpdyStream`], whose `io` is a plain `AsyncRead + AsyncWrite`: reading gives the
//! peer's DATA until its FIN, writing sends DATA, shutting down sends FIN.
//!
//! Tasks: one reader (frames in), one writer (frames out, the only owner of the socket's
//! write half and of the compressor), and per stream two pumps between the connection and
//! the stream's in-memory pipe. When the socket ends, every pipe reaches EOF and every
//! pump exits: no task outlives the connection and its consumer (the goroutine-leak
//! class of CVE-2022-23471).
//!
//! Flow control: received DATA is acknowledged with WINDOW_UPDATE as the consumer reads
//! it. The send side honours the peer's windows only once the peer shows it does flow
//! control (sends WINDOW_UPDATE or SETTINGS_INITIAL_WINDOW_SIZE): moby/spdystream, the
//! client inside kubelet, crictl and kubectl, never sends WINDOW_UPDATE, and a server
//! that waited for one would stall every exec after 64 KiB of output.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

use super::frame::{FLAG_FIN, Frame, FrameError, SETTINGS_INITIAL_WINDOW_SIZE, goaway, rst};
use super::headers::{HeaderCompressor, HeaderDecompressor, Headers};

/// The SPDY/3 default window, per stream and for the connection.
pub const INITIAL_WINDOW: i64 = 64 << 10;
/// Streams open at once on one connection; more are refused (REFUSED_STREAM).
pub const MAX_STREAMS: usize = 128;
/// Frames queued towards one stream's consumer before the reader waits.
const INBOUND_QUEUE: usize = 4;
/// Largest DATA frame sent.
const MAX_SEND_CHUNK: usize = 32 << 10;
/// How long a peer may send nothing before the connection ends (the kubelet's default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(4 * 60 * 60);
/// How long `close` waits for the streams' last bytes to be sent.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 64 << 10;

/// A stream the peer opened.
pub struct SpdyStream {
    pub id: u32,
    pub headers: Headers,
    /// The stream's bytes: read the peer's DATA, write ours, shut down for FIN.
    pub io: DuplexStream,
    shared: Arc<Shared>,
}

impl SpdyStream {
    /// Abandons the stream with RST_STREAM.
    pub fn reset(self, status: u32) {
        self.shared.reset(self.id, status);
    }
}

enum Out {
    Frame(Frame),
    Reply(u32),
    /// GOAWAY, flush, shut the socket down.
    Close(u32),
}

struct StreamState {
    /// Where the reader puts the peer's DATA; `None` once the peer has sent FIN.
    inbound: Option<mpsc::Sender<Vec<u8>>>,
    send_window: i64,
    reset: bool,
    /// We have sent FIN (or can send nothing more).
    sent_fin: bool,
}

struct Windows {
    streams: HashMap<u32, StreamState>,
    connection: i64,
    /// The peer does flow control (see the module doc).
    peer_flow_control: bool,
    initial_send_window: i64,
    closed: bool,
}

struct Shared {
    out: mpsc::Sender<Out>,
    state: Mutex<Windows>,
    changed: Notify,
    sending_pumps: AtomicUsize,
    pumps_done: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        // A panic elsewhere must not wedge every stream; the data stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send_now(&self, out: Out) {
        // Control frames from non-async contexts; dropped only if the writer is gone.
        let _ = self.out.try_send(out);
    }

    fn reset(&self, id: u32, status: u32) {
        let known = {
            let mut w = self.lock();
            match w.streams.get_mut(&id) {
                Some(s) => {
                    s.reset = true;
                    s.inbound = None;
                    true
                }
                None => false,
            }
        };
        self.changed.notify_waiters();
        if known {
            let out = self.out.clone();
            tokio::spawn(async move {
                let _ = out
                    .send(Out::Frame(Frame::RstStream {
                        stream_id: id,
                        status,
                    }))
                    .await;
            });
        }
    }

    /// Waits until `want` bytes (or part of them) may be sent on `id`; `None` if the
    /// stream or connection is gone.
    async fn reserve(&self, id: u32, want: usize) -> Option<usize> {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut w = self.lock();
                if w.closed {
                    return None;
                }
                let fc = w.peer_flow_control;
                let conn = w.connection;
                let s = w.streams.get_mut(&id)?;
                if s.reset {
                    return None;
                }
                if !fc {
                    return Some(want);
                }
                let n = want
                    .min(s.send_window.max(0) as usize)
                    .min(conn.max(0) as usize);
                if n > 0 {
                    s.send_window -= n as i64;
                    w.connection -= n as i64;
                    return Some(n);
                }
            }
            notified.await;
        }
    }

    fn close_all(&self) {
        let mut w = self.lock();
        w.closed = true;
        for s in w.streams.values_mut() {
            s.inbound = None;
        }
        drop(w);
        self.changed.notify_waiters();
    }
}

/// One upgraded connection.
pub struct SpdyConnection {
    incoming: mpsc::Receiver<SpdyStream>,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
}

impl SpdyConnection {
    /// Starts serving SPDY on `io` (the connection after the 101 response), with the
    /// default idle timeout.
    pub fn start<T>(io: T) -> SpdyConnection
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::start_with_idle_timeout(io, IDLE_TIMEOUT)
    }

    /// As [`SpdyConnection::start`]; the connection ends when the peer sends nothing
    /// (not even a PING) for `idle`, so a vanished client does not hold a session.
    pub fn start_with_idle_timeout<T>(io: T, idle: Duration) -> SpdyConnection
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            out: out_tx,
            state: Mutex::new(Windows {
                streams: HashMap::new(),
                connection: INITIAL_WINDOW,
                peer_flow_control: false,
                initial_send_window: INITIAL_WINDOW,
                closed: false,
            }),
            changed: Notify::new(),
            sending_pumps: AtomicUsize::new(0),
            pumps_done: Notify::new(),
        });
        let (in_tx, in_rx) = mpsc::channel(16);
        let writer = tokio::spawn(write_frames(wr, out_rx, shared.clone()));
        let reader = tokio::spawn(read_frames(rd, in_tx, shared.clone(), idle));
        SpdyConnection {
            incoming: in_rx,
            shared,
            reader,
            writer: Some(writer),
        }
    }

    /// The next stream the peer opens; `None` once the connection is gone.
    pub async fn accept(&mut self) -> Option<SpdyStream> {
        self.incoming.recv().await
    }

    /// Ends the connection: lets the streams' last bytes go out (bounded), then GOAWAY
    /// and a shutdown of the socket.
    pub async fn close(mut self) {
        let drained = async {
            loop {
                let done = self.shared.pumps_done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if self.shared.sending_pumps.load(Ordering::Acquire) == 0 {
                    break;
                }
                done.await;
            }
        };
        if tokio::time::timeout(CLOSE_GRACE, drained).await.is_err() {
            tracing::debug!("SPDY close: streams still sending after the grace period");
        }
        let _ = self.shared.out.send(Out::Close(goaway::OK)).await;
        if let Some(w) = self.writer.take() {
            let _ = tokio::time::timeout(CLOSE_GRACE, w).await;
        }
        self.shared.close_all();
        self.reader.abort();
    }
}

impl Drop for SpdyConnection {
    fn drop(&mut self) {
        self.reader.abort();
        self.shared.close_all();
        if let Some(w) = self.writer.take() {
            self.shared.send_now(Out::Close(goaway::OK));
            // The writer ends on Close or when every sender is gone.
            drop(w);
        }
    }
}

async fn read_frames<R: AsyncRead>(
    rd: R,
    incoming: mpsc::Sender<SpdyStream>,
    shared: Arc<Shared>,
    idle: Duration,
) {
    tokio::pin!(rd);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut reader = FrameReader {
        decompressor: HeaderDecompressor::default(),
        incoming,
        shared: shared.clone(),
        last_stream_id: 0,
        going_away: false,
    };
    let status = 'conn: loop {
        loop {
            match Frame::decode(&buf) {
                Ok(Some((frame, used))) => {
                    buf.drain(..used);
                    if let Err(e) = reader.handle(frame).await {
                        tracing::debug!(error = %e, "SPDY protocol error; closing the connection");
                        break 'conn goaway::PROTOCOL_ERROR;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "bad SPDY frame; closing the connection");
                    break 'conn goaway::PROTOCOL_ERROR;
                }
            }
        }
        let start = buf.len();
        buf.resize(start + READ_CHUNK, 0);
        match tokio::time::timeout(idle, rd.read(&mut buf[start..])).await {
            Err(_) => {
                tracing::debug!(
                    idle_s = idle.as_secs(),
                    "SPDY peer idle; closing the connection"
                );
                break goaway::OK;
            }
            Ok(Ok(0) | Err(_)) => break goaway::OK,
            Ok(Ok(n)) => buf.truncate(start + n),
        }
    };
    let _ = shared.out.send(Out::Close(status)).await;
    shared.close_all();
}

struct FrameReader {
    decompressor: HeaderDecompressor,
    incoming: mpsc::Sender<SpdyStream>,
    shared: Arc<Shared>,
    last_stream_id: u32,
    going_away: bool,
}

impl FrameReader {
    async fn send(&self, frame: Frame) {
        let _ = self.shared.out.send(Out::Frame(frame)).await;
    }

    async fn rst(&self, stream_id: u32, status: u32) {
        self.send(Frame::RstStream { stream_id, status }).await;
    }

    /// Handles one frame; an error is a connection-level protocol error.
    async fn handle(&mut self, frame: Frame) -> Result<(), FrameError> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                header_block,
                ..
            } => {
                // Decompress first: the zlib stream must see every block.
                let headers = self.decompressor.decompress(&header_block)?;
                self.open_stream(stream_id, flags & FLAG_FIN != 0, headers)
                    .await;
            }
            Frame::Data {
                stream_id,
                fin,
                data,
            } => self.data(stream_id, fin, data).await,
            Frame::RstStream { stream_id, .. } => {
                self.shared.lock().streams.remove(&stream_id);
                // Its pumps find it gone: the consumer sees EOF, sends go nowhere.
                self.shared.changed.notify_waiters();
            }
            Frame::Settings { entries, .. } => {
                for e in entries {
                    if e.id == SETTINGS_INITIAL_WINDOW_SIZE {
                        let new = i64::from(e.value & 0x7fff_ffff);
                        let mut w = self.shared.lock();
                        let delta = new - w.initial_send_window;
                        w.initial_send_window = new;
                        w.peer_flow_control = true;
                        for s in w.streams.values_mut() {
                            s.send_window += delta;
                        }
                    }
                }
                self.shared.changed.notify_waiters();
            }
            Frame::Ping { id } => {
                // Odd ids are the client's; even ones would answer pings we never send.
                if !id.is_multiple_of(2) {
                    self.send(Frame::Ping { id }).await;
                }
            }
            Frame::GoAway { .. } => self.going_away = true,
            Frame::Headers {
                stream_id,
                fin,
                header_block,
            } => {
                self.decompressor.decompress(&header_block)?;
                if fin {
                    self.data(stream_id, true, Vec::new()).await;
                }
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let overflow = {
                    let mut w = self.shared.lock();
                    w.peer_flow_control = true;
                    let delta = i64::from(delta);
                    if stream_id == 0 {
                        w.connection += delta;
                        false
                    } else if let Some(s) = w.streams.get_mut(&stream_id) {
                        s.send_window += delta;
                        s.send_window > i64::from(i32::MAX)
                    } else {
                        false
                    }
                };
                self.shared.changed.notify_waiters();
                if overflow {
                    self.shared.reset(stream_id, rst::FLOW_CONTROL_ERROR);
                }
            }
            Frame::SynReply { stream_id, .. } => {
                // We open no streams, so nothing can be replied to.
                self.rst(stream_id, rst::PROTOCOL_ERROR).await;
            }
            Frame::Unknown { .. } => {}
        }
        Ok(())
    }

    async fn open_stream(&mut self, id: u32, fin: bool, headers: Headers) {
        // Client streams are odd and increasing.
        if id.is_multiple_of(2) || id <= self.last_stream_id {
            self.rst(id, rst::PROTOCOL_ERROR).await;
            return;
        }
        self.last_stream_id = id;
        if self.going_away {
            self.rst(id, rst::REFUSED_STREAM).await;
            return;
        }
        let (in_tx, in_rx) = mpsc::channel(INBOUND_QUEUE);
        let admitted = {
            let mut w = self.shared.lock();
            let send_window = w.initial_send_window;
            let room = w.streams.len() < MAX_STREAMS;
            if room {
                w.streams.insert(
                    id,
                    StreamState {
                        inbound: (!fin).then_some(in_tx),
                        send_window,
                        reset: false,
                        sent_fin: false,
                    },
                );
            }
            room
        };
        if !admitted {
            self.rst(id, rst::REFUSED_STREAM).await;
            return;
        }
        let _ = self.shared.out.send(Out::Reply(id)).await;
        let (ours, theirs) = tokio::io::duplex(READ_CHUNK);
        let (our_rd, our_wr) = tokio::io::split(ours);
        tokio::spawn(pump_inbound(id, in_rx, our_wr, self.shared.clone()));
        self.shared.sending_pumps.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(pump_outbound(id, our_rd, self.shared.clone()));
        let stream = SpdyStream {
            id,
            headers,
            io: theirs,
            shared: self.shared.clone(),
        };
        if let Err(refused) = self.incoming.send(stream).await {
            refused.0.reset(rst::REFUSED_STREAM);
        }
    }

    async fn data(&mut self, id: u32, fin: bool, data: Vec<u8>) {
        let target = {
            let mut w = self.shared.lock();
            match w.streams.get_mut(&id) {
                Some(s) if s.reset => return,
                Some(s) => {
                    let tx = s.inbound.clone();
                    if fin {
                        s.inbound = None;
                        if s.sent_fin {
                            w.streams.remove(&id);
                        }
                    }
                    Some(tx)
                }
                None => None,
            }
        };
        match target {
            // DATA for a stream we do not know: an old one is a benign race, a new one an error.
            None => {
                if id > self.last_stream_id {
                    self.rst(id, rst::INVALID_STREAM).await;
                }
            }
            // DATA after the peer's FIN.
            Some(None) => {
                if !data.is_empty() {
                    self.rst(id, rst::STREAM_IN_USE).await;
                }
            }
            Some(Some(tx)) => {
                if !data.is_empty() {
                    // Waits while the consumer is behind: backpressure on the connection.
                    let _ = tx.send(data).await;
                }
            }
        }
    }
}

/// The peer's DATA into the stream's pipe, acknowledging what the consumer took.
async fn pump_inbound(
    id: u32,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut pipe: tokio::io::WriteHalf<DuplexStream>,
    shared: Arc<Shared>,
) {
    while let Some(chunk) = rx.recv().await {
        if pipe.write_all(&chunk).await.is_err() {
            // The consumer is gone; keep draining so the reader never blocks on us.
            continue;
        }
        let delta = chunk.len() as u32;
        for stream_id in [id, 0] {
            let _ = shared
                .out
                .send(Out::Frame(Frame::WindowUpdate { stream_id, delta }))
                .await;
        }
    }
    let _ = pipe.shutdown().await;
}

/// The consumer's writes out as DATA, then FIN when it shuts down or drops its end.
async fn pump_outbound(id: u32, mut pipe: tokio::io::ReadHalf<DuplexStream>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_SEND_CHUNK];
    let finished = 'stream: loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break true,
            Ok(n) => n,
        };
        let mut at = 0;
        while at < n {
            let Some(grant) = shared.reserve(id, n - at).await else {
                break 'stream false;
            };
            let frame = Frame::Data {
                stream_id: id,
                fin: false,
                data: buf[at..at + grant].to_vec(),
            };
            if shared.out.send(Out::Frame(frame)).await.is_err() {
                break 'stream false;
            }
            at += grant;
        }
    };
    if finished && !shared.lock().closed {
        let fin = Frame::Data {
            stream_id: id,
            fin: true,
            data: Vec::new(),
        };
        let _ = shared.out.send(Out::Frame(fin)).await;
    }
    {
        // Our side is done; the entry goes once the peer's side is too.
        let mut w = shared.lock();
        if let Some(s) = w.streams.get_mut(&id) {
            s.sent_fin = true;
            if s.inbound.is_none() {
                w.streams.remove(&id);
            }
        }
    }
    if shared.sending_pumps.fetch_sub(1, Ordering::AcqRel) == 1 {
        shared.pumps_done.notify_waiters();
    }
}

async fn write_frames<W: AsyncWrite>(wr: W, mut rx: mpsc::Receiver<Out>, shared: Arc<Shared>) {
    tokio::pin!(wr);
    let mut compressor = HeaderCompressor::default();
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let mut last_stream_id = 0;
    while let Some(out) = rx.recv().await {
        let mut close = None;
        let mut next = Some(out);
        // Batch whatever is already queued into one write.
        while let Some(out) = next {
            match out {
                Out::Frame(f) => f.encode(&mut buf),
                Out::Reply(stream_id) => {
                    last_stream_id = stream_id;
                    let header_block = compressor.compress(&Headers::default());
                    Frame::SynReply {
                        stream_id,
                        fin: false,
                        header_block,
                    }
                    .encode(&mut buf);
                }
                Out::Close(status) => {
                    Frame::GoAway {
                        last_good_stream_id: last_stream_id,
                        status,
                    }
                    .encode(&mut buf);
                    close = Some(());
                    break;
                }
            }
            if buf.len() >= READ_CHUNK {
                break;
            }
            next = rx.try_recv().ok();
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            break;
        }
        buf.clear();
        if close.is_some() {
            let _ = wr.shutdown().await;
            break;
        }
    }
    shared.close_all();
}
