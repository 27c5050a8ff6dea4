//! The streaming HTTP server: mints single-use URLs for the CRI handlers, and serves each
//! URL once with the transport the client asks for (SPDY/3.1 or WebSocket upgrade).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::http::{self, RequestHead, Rewind};
use crate::remotecommand::{self, Command, Protocol};
use crate::runtime::{AttachRequest, ExecRequest, PortForwardRequest, StreamingRuntime, Streams};
use crate::spdy::SpdyConnection;
use crate::tokens::{MAX_PENDING_REQUESTS, Pending, RequestCache, TOKEN_TTL};
use crate::{Error, RuntimeError, portforward, websocket};

#[derive(Debug, Clone)]
pub struct StreamingConfig {
    /// Where to listen; port 0 picks a free one.
    pub address: SocketAddr,
    pub token_ttl: Duration,
    pub max_pending_requests: usize,
    /// Sessions served at once; more get 503.
    pub max_sessions: usize,
    /// How long a client may take to open its streams.
    pub stream_creation_timeout: Duration,
    /// How long a SPDY client may send nothing (Go clients PING every few seconds).
    pub idle_timeout: Duration,
}

impl StreamingConfig {
    pub fn new(address: SocketAddr) -> StreamingConfig {
        StreamingConfig {
            address,
            token_ttl: TOKEN_TTL,
            max_pending_requests: MAX_PENDING_REQUESTS,
            max_sessions: 256,
            stream_creation_timeout: Duration::from_secs(30),
            idle_timeout: crate::spdy::IDLE_TIMEOUT,
        }
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`StreamingRuntime`] with boxed futures, so the server need not be generic.
pub trait DynRuntime: Send + Sync {
    fn check_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    fn check_pod<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;
    fn exec(&self, req: ExecRequest, streams: Streams) -> BoxFuture<'_, Result<i32, RuntimeError>>;
    fn attach(
        &self,
        req: AttachRequest,
        streams: Streams,
    ) -> BoxFuture<'_, Result<(), RuntimeError>>;
    fn port_forward<'a>(
        &'a self,
        pod_id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<TcpStream, RuntimeError>>;
}

impl<R: StreamingRuntime> DynRuntime for R {
    fn check_container<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(StreamingRuntime::check_container(self, id))
    }
    fn check_pod<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(StreamingRuntime::check_pod(self, id))
    }
    fn exec(&self, req: ExecRequest, streams: Streams) -> BoxFuture<'_, Result<i32, RuntimeError>> {
        Box::pin(StreamingRuntime::exec(self, req, streams))
    }
    fn attach(
        &self,
        req: AttachRequest,
        streams: Streams,
    ) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(StreamingRuntime::attach(self, req, streams))
    }
    fn port_forward<'a>(
        &'a self,
        pod_id: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<TcpStream, RuntimeError>> {
        Box::pin(StreamingRuntime::port_forward(self, pod_id, port))
    }
}

struct Ctx {
    config: StreamingConfig,
    cache: RequestCache,
    runtime: Arc<dyn DynRuntime>,
    sessions: Arc<Semaphore>,
}

/// The running server. Dropping it stops accepting connections.
pub struct StreamingServer {
    local_addr: SocketAddr,
    base_url: String,
    ctx: Arc<Ctx>,
    accept: JoinHandle<()>,
}

impl StreamingServer {
    /// Binds and starts serving; must be called inside a tokio runtime.
    pub fn start<R: StreamingRuntime>(
        config: StreamingConfig,
        runtime: Arc<R>,
    ) -> Result<StreamingServer, Error> {
        let bind = |source| Error::Bind {
            addr: config.address,
            source,
        };
        let std_listener = std::net::TcpListener::bind(config.address).map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let listener = TcpListener::from_std(std_listener).map_err(bind)?;
        let local_addr = listener.local_addr().map_err(bind)?;
        // An unspecified bind address is reachable on loopback; name that in URLs.
        let mut url_addr = local_addr;
        if url_addr.ip().is_unspecified() {
            url_addr.set_ip(match url_addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let ctx = Arc::new(Ctx {
            cache: RequestCache::new(config.token_ttl, config.max_pending_requests),
            sessions: Arc::new(Semaphore::new(config.max_sessions)),
            runtime: runtime as Arc<dyn DynRuntime>,
            config,
        });
        let accept = tokio::spawn(accept_loop(listener, ctx.clone()));
        tracing::info!(address = %local_addr, "streaming server listening");
        Ok(StreamingServer {
            local_addr,
            base_url: format!("http://{url_addr}"),
            ctx,
            accept,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Validates an Exec and mints its URL.
    pub async fn exec(&self, req: ExecRequest) -> Result<String, Error> {
        if req.cmd.is_empty() {
            return Err(Error::InvalidArgument("cmd must not be empty".into()));
        }
        validate_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        self.ctx.runtime.check_container(&req.container_id).await?;
        self.mint(Pending::Exec(req))
    }

    /// Validates an Attach and mints its URL.
    pub async fn attach(&self, req: AttachRequest) -> Result<String, Error> {
        validate_streams(req.tty, req.stdin, req.stdout, req.stderr)?;
        self.ctx.runtime.check_container(&req.container_id).await?;
        self.mint(Pending::Attach(req))
    }

    /// Validates a PortForward and mints its URL.
    pub async fn port_forward(&self, req: PortForwardRequest) -> Result<String, Error> {
        if req.pod_id.is_empty() {
            return Err(Error::InvalidArgument(
                "pod_sandbox_id must not be empty".into(),
            ));
        }
        self.ctx.runtime.check_pod(&req.pod_id).await?;
        self.mint(Pending::PortForward(req))
    }

    fn mint(&self, req: Pending) -> Result<String, Error> {
        let route = req.route();
        let token = self.ctx.cache.insert(req)?;
        Ok(format!("{}/{route}/{token}", self.base_url))
    }
}

impl Drop for StreamingServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn validate_streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> Result<(), Error> {
    if tty && stderr {
        return Err(Error::InvalidArgument(
            "tty and stderr cannot both be true: a terminal has one output".into(),
        ));
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::InvalidArgument(
            "one of stdin, stdout or stderr must be true".into(),
        ));
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    loop {
        match listener.accept().await {
            Ok((conn, peer)) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(conn, &ctx).await {
                        tracing::debug!(%peer, error = %e, "streaming connection failed");
                    }
                });
            }
            Err(e) => {
                // Out of fds and the like: back off instead of spinning.
                tracing::warn!(error = %e, "streaming server accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut conn: TcpStream, ctx: &Ctx) -> Result<(), Error> {
    let _ = conn.set_nodelay(true);
    let (head, rest) = match http::read_head(&mut conn).await {
        Ok(h) => h,
        Err(e) => {
            let _ = http::respond(&mut conn, 400, "Bad Request", &[], &format!("{e}\n")).await;
            return Err(e);
        }
    };
    if head.method != "GET" && head.method != "POST" {
        http::respond(
            &mut conn,
            405,
            "Method Not Allowed",
            &[("Allow", "GET, POST")],
            "",
        )
        .await?;
        return Ok(());
    }
    let mut parts = head.path.trim_start_matches('/').splitn(2, '/');
    let (route, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let Some(req) = ctx.cache.take(route, token) else {
        http::respond(
            &mut conn,
            404,
            "Not Found",
            &[],
            "unknown or expired streaming URL\n",
        )
        .await?;
        return Ok(());
    };
    let Ok(_permit) = ctx.sessions.clone().try_acquire_owned() else {
        http::respond(
            &mut conn,
            503,
            "Service Unavailable",
            &[],
            "too many streaming sessions\n",
        )
        .await?;
        return Ok(());
    };
    let websocket = head.upgrades_to("websocket");
    let spdy = head.upgrades_to("SPDY/3.1");
    let io = Rewind::new(rest, conn);
    match req {
        Pending::Exec(r) => {
            serve_remotecommand(io, &head, ctx, Command::Exec(r), spdy, websocket).await
        }
        Pending::Attach(r) => {
            serve_remotecommand(io, &head, ctx, Command::Attach(r), spdy, websocket).await
        }
        Pending::PortForward(r) => serve_port_forward(io, &head, ctx, r, spdy, websocket).await,
    }
}

async fn refuse_upgrade<S: AsyncWrite + Unpin>(io: &mut S) -> Result<(), Error> {
    http::respond(
        io,
        400,
        "Bad Request",
        &[],
        "expected an Upgrade to SPDY/3.1 or websocket\n",
    )
    .await?;
    Ok(())
}

async fn serve_remotecommand<S>(
    mut io: S,
    head: &RequestHead,
    ctx: &Ctx,
    cmd: Command,
    spdy: bool,
    websocket: bool,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if spdy {
        let supported: Vec<(&str, Protocol)> =
            Protocol::SPDY.iter().map(|p| (p.name(), *p)).collect();
        let protocol =
            match remotecommand::negotiate(&head.values("x-stream-protocol-version"), &supported) {
                Ok(p) => p.unwrap_or(Protocol::V1),
                Err(accepted) => return refuse_protocol(&mut io, &accepted).await,
            };
        http::switch_protocols(
            &mut io,
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", protocol.name()),
            ],
        )
        .await?;
        let conn = SpdyConnection::start_with_idle_timeout(io, ctx.config.idle_timeout);
        return remotecommand::serve_spdy(
            conn,
            protocol,
            &*ctx.runtime,
            cmd,
            ctx.config.stream_creation_timeout,
        )
        .await;
    }
    if websocket {
        let Some((ws, protocol)) =
            accept_websocket(io, head, &websocket::REMOTECOMMAND_PROTOCOLS).await?
        else {
            return Ok(());
        };
        websocket::serve_remotecommand(ws, protocol, &*ctx.runtime, cmd).await;
        return Ok(());
    }
    refuse_upgrade(&mut io).await
}

async fn serve_port_forward<S>(
    mut io: S,
    head: &RequestHead,
    ctx: &Ctx,
    req: PortForwardRequest,
    spdy: bool,
    websocket: bool,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = ctx.config.stream_creation_timeout;
    if spdy {
        let offered = head.values("x-stream-protocol-version");
        if !offered.contains(&portforward::PROTOCOL) {
            return refuse_protocol(&mut io, portforward::PROTOCOL).await;
        }
        http::switch_protocols(
            &mut io,
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", portforward::PROTOCOL),
            ],
        )
        .await?;
        let conn = SpdyConnection::start_with_idle_timeout(io, ctx.config.idle_timeout);
        portforward::serve(conn, ctx.runtime.clone(), req, timeout).await;
        return Ok(());
    }
    if websocket
        && !head
            .values("sec-websocket-protocol")
            .contains(&websocket::SPDY_TUNNEL_PROTOCOL)
    {
        // The channel protocol of the kubelet's own streaming server: the ports are in
        // the query, one data and one error channel each. A kubelet that proxies such a
        // request sends the ports in the PortForward call instead (the URL it gets back
        // replaces the query).
        let ports: Result<Vec<u16>, _> = head
            .query_values("port")
            .iter()
            .map(|p| {
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or(p.to_string())
            })
            .collect();
        let ports = match ports {
            Ok(p) if p.is_empty() => Ok(req.ports.clone()),
            other => other,
        };
        let ports = match ports {
            Ok(p) if !p.is_empty() && p.len() <= websocket::MAX_FORWARDED_PORTS => p,
            Ok(_) => {
                let msg = format!(
                    "port-forward over WebSocket channels needs 1 to {} ?port= parameters\n",
                    websocket::MAX_FORWARDED_PORTS
                );
                http::respond(&mut io, 400, "Bad Request", &[], &msg).await?;
                return Ok(());
            }
            Err(bad) => {
                let msg = format!("invalid port {bad:?}\n");
                http::respond(&mut io, 400, "Bad Request", &[], &msg).await?;
                return Ok(());
            }
        };
        let Some((ws, protocol)) =
            accept_websocket(io, head, &websocket::PORT_FORWARD_PROTOCOLS).await?
        else {
            return Ok(());
        };
        websocket::serve_port_forward(ws, protocol, ctx.runtime.clone(), req.pod_id, ports).await;
        return Ok(());
    }
    if websocket {
        let supported = [(websocket::SPDY_TUNNEL_PROTOCOL, ())];
        let Some((ws, ())) = accept_websocket(io, head, &supported).await? else {
            return Ok(());
        };
        let tunnel = websocket::byte_stream(ws);
        portforward::serve(
            SpdyConnection::start_with_idle_timeout(tunnel, ctx.config.idle_timeout),
            ctx.runtime.clone(),
            req,
            timeout,
        )
        .await;
        return Ok(());
    }
    refuse_upgrade(&mut io).await
}

/// The answer when no offered sub-protocol is one we speak.
async fn refuse_protocol<S: AsyncWrite + Unpin>(io: &mut S, accepted: &str) -> Result<(), Error> {
    tracing::warn!(
        accepted,
        "streaming request refused: the client offered no sub-protocol berth speaks"
    );
    http::respond(
        io,
        403,
        "Forbidden",
        &[("X-Accepted-Stream-Protocol-Versions", accepted)],
        &format!("unable to upgrade: no common protocol; the server accepts {accepted}\n"),
    )
    .await?;
    Ok(())
}

/// Completes a WebSocket handshake choosing one of `supported`; `None` if the request was
/// refused (and answered).
async fn accept_websocket<S, T: Copy>(
    mut io: S,
    head: &RequestHead,
    supported: &[(&str, T)],
) -> Result<Option<(WebSocketStream<S>, T)>, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Some(key) = head.header("sec-websocket-key") else {
        http::respond(
            &mut io,
            400,
            "Bad Request",
            &[],
            "missing Sec-WebSocket-Key\n",
        )
        .await?;
        return Ok(None);
    };
    let accepted: Vec<&str> = supported
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !n.is_empty())
        .collect();
    let offered = head.values("sec-websocket-protocol");
    // A client that offers no sub-protocol gets the one named "" where there is one.
    let chosen = if offered.is_empty() {
        supported.iter().find(|(n, _)| n.is_empty())
    } else {
        offered
            .iter()
            .find_map(|o| supported.iter().find(|(n, _)| !n.is_empty() && n == o))
    };
    let Some((name, protocol)) = chosen else {
        refuse_protocol(&mut io, &accepted.join(",")).await?;
        return Ok(None);
    };
    let accept_key = derive_accept_key(key.as_bytes());
    let mut answer = vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key.as_str()),
    ];
    if !name.is_empty() {
        answer.push(("Sec-WebSocket-Protocol", name));
    }
    http::switch_protocols(&mut io, &answer).await?;
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(websocket::config())).await;
    Ok(Some((ws, *protocol)))
}
