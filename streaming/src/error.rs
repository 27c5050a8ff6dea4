//! The streaming crate's errors: what a session or the URL minting can fail with.

use crate::spdy::FrameError;

/// What a runtime call (exec, attach, port-forward, lookups) can fail with.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("too many pending streaming requests ({0}); try again shortly")]
    TooManyRequests(usize),
    #[error("starting the streaming server on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("bad HTTP request: {0}")]
    BadRequest(String),
    #[error("SPDY: {0}")]
    Spdy(#[from] FrameError),
    #[error("WebSocket: {0}")]
    WebSocket(String),
    #[error("{0}")]
    Protocol(String),
    #[error("streaming I/O: {0}")]
    Io(#[from] std::io::Error),
}
