//! tracing set-up, and the tower layer that logs every RPC with its duration.

use std::future::Future;
use std::io::IsTerminal;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;
use tower::{Layer, Service};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// berth's own crates; everything else (h2, hyper, ...) logs at warn and above.
const OUR_CRATES: [&str; 6] = [
    "berth",
    "cri_server",
    "image_store",
    "sandbox",
    "wasm_exec",
    "meta_store",
];

/// Installs the global subscriber. `RUST_LOG`, when set, replaces the configured level.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        let ours: Vec<String> = OUR_CRATES
            .iter()
            .map(|c| format!("{c}={}", cfg.level))
            .collect();
        EnvFilter::new(format!("warn,{}", ours.join(",")))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cfg.format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Logs `rpc` and `elapsed_us` at debug level for every gRPC call.
#[derive(Clone, Copy, Default)]
pub struct RpcLogLayer;

impl<S> Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;
    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog { inner }
    }
}

#[derive(Clone)]
pub struct RpcLog<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for RpcLog<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let rpc = req
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            tracing::debug!(rpc, elapsed_us = start.elapsed().as_micros() as u64, "rpc");
            res
        })
    }
}
