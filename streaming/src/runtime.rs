//! What the daemon plugs in: the [`StreamingRuntime`] that runs exec/attach/port-forward
//! against real containers and pods, and the requests the CRI handlers mint URLs for.

use std::future::Future;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::RuntimeError;

/// A terminal size, as the client's resize messages carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// An Exec the client may start once, through the URL minted for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub container_id: String,
    pub cmd: Vec<String>,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachRequest {
    pub container_id: String,
    pub tty: bool,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForwardRequest {
    pub pod_id: String,
    /// The ports the client asked for: advisory over SPDY (each forwarded connection names
    /// its port itself); over WebSocket channels, the ports when the URL's query names none.
    pub ports: Vec<u16>,
}

pub type BoxedReader = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxedWriter = Box<dyn AsyncWrite + Send + Unpin>;

/// The client's side of an exec or attach session, whatever the transport. A stream the
/// client did not ask for is `None`; with a tty, stdout carries the terminal and stderr is
/// `None`.
pub struct Streams {
    /// The client's input; EOF when the client closes it.
    pub stdin: Option<BoxedReader>,
    pub stdout: Option<BoxedWriter>,
    pub stderr: Option<BoxedWriter>,
    /// Terminal resizes (tty only), in order; the channel closes with the session.
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

/// The daemon side of streaming. The protocol code calls these once a client has
/// connected to a minted URL and its streams are ready.
///
/// `exec` and `attach` must return when the process exits (or the attach ends), having
/// written all of its output, even if the client still holds stdin open; the session then
/// ends. Dropping `streams` closes them towards the client.
pub trait StreamingRuntime: Send + Sync + 'static {
    /// Whether Exec/Attach may be offered for this container (NotFound if unknown).
    fn check_container(
        &self,
        container_id: &str,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Whether PortForward may be offered for this pod (NotFound if unknown).
    fn check_pod(&self, pod_id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Runs `req.cmd` in the container, wired to `streams`; returns its exit code.
    fn exec(
        &self,
        req: ExecRequest,
        streams: Streams,
    ) -> impl Future<Output = Result<i32, RuntimeError>> + Send;

    /// Attaches `streams` to the container's main process until it exits or detaches.
    fn attach(
        &self,
        req: AttachRequest,
        streams: Streams,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// A TCP connection to `localhost:port` in the pod's network namespace.
    fn port_forward(
        &self,
        pod_id: &str,
        port: u16,
    ) -> impl Future<Output = Result<TcpStream, RuntimeError>> + Send;
}
