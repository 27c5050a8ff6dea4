//! The CRI streaming server: the URLs that Exec, Attach and PortForward return, and the
//! SPDY/3.1 and WebSocket protocols kubelet and crictl speak on them.
//!
//! The daemon implements [`StreamingRuntime`] (run a command in a container, attach to it,
//! dial a port in a pod) and mints URLs through [`StreamingServer`]; everything about the
//! wire stays in this crate.

mod error;
mod http;
mod portforward;
mod remotecommand;
mod runtime;
mod server;
pub mod spdy;
mod tokens;
mod websocket;

pub use error::{Error, RuntimeError};
pub use remotecommand::{RESIZE_BUFFER, status_json};
pub use runtime::{
    AttachRequest, BoxedReader, BoxedWriter, ExecRequest, PortForwardRequest, StreamingRuntime,
    Streams, TermSize,
};
pub use server::{StreamingConfig, StreamingServer};
pub use tokens::{MAX_PENDING_REQUESTS, TOKEN_TTL};
