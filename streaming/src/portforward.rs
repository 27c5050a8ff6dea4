//! Port-forward over SPDY (`portforward.k8s.io`): per forwarded connection the client
//! opens an `error` and a `data` stream sharing a `requestID`; once both are here the
//! runtime dials the port and bytes are copied both ways. Errors go to the error stream
//! as text.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::runtime::PortForwardRequest;
use crate::server::DynRuntime;
use crate::spdy::{SpdyConnection, SpdyStream, rst};

/// The SPDY sub-protocol of port-forward.
pub const PROTOCOL: &str = "portforward.k8s.io";

#[derive(Default)]
struct Pair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
    port: u16,
    since: Option<Instant>,
}

/// Serves port-forward requests on `conn` until the client leaves.
pub async fn serve(
    mut conn: SpdyConnection,
    runtime: Arc<dyn DynRuntime>,
    req: PortForwardRequest,
    pair_timeout: Duration,
) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = JoinSet::new();
    let mut sweep = tokio::time::interval(pair_timeout / 4);
    loop {
        let stream = tokio::select! {
            s = conn.accept() => match s {
                Some(s) => s,
                None => break,
            },
            _ = sweep.tick() => {
                let now = Instant::now();
                pairs.retain(|id, p| {
                    let fresh = p.since.is_some_and(|t| now - t < pair_timeout);
                    if !fresh {
                        tracing::debug!(request_id = %id, "port-forward stream pair timed out");
                        for s in [p.error.take(), p.data.take()].into_iter().flatten() {
                            s.reset(rst::CANCEL);
                        }
                    }
                    fresh
                });
                continue;
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        let h = &stream.headers;
        let (Some(kind), Some(port), Some(id)) = (
            h.get("streamtype"),
            h.get("port")
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|&p| p > 0),
            h.get("requestid").map(str::to_string),
        ) else {
            tracing::debug!(headers = ?stream.headers, "port-forward stream with bad headers");
            stream.reset(rst::PROTOCOL_ERROR);
            continue;
        };
        let pair = pairs.entry(id.clone()).or_default();
        if pair.since.is_some() && pair.port != port {
            stream.reset(rst::PROTOCOL_ERROR);
            continue;
        }
        pair.port = port;
        pair.since.get_or_insert_with(Instant::now);
        let slot = match kind {
            "error" => &mut pair.error,
            "data" => &mut pair.data,
            _ => {
                stream.reset(rst::PROTOCOL_ERROR);
                continue;
            }
        };
        if slot.is_some() {
            stream.reset(rst::PROTOCOL_ERROR);
            continue;
        }
        *slot = Some(stream);
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pair {
                error: Some(error),
                data: Some(data),
                port,
                ..
            }) = pairs.remove(&id)
            else {
                continue;
            };
            let runtime = runtime.clone();
            let pod_id = req.pod_id.clone();
            forwards.spawn(async move { forward(&*runtime, &pod_id, port, error, data).await });
        }
    }
    // The client is gone: so is every forward it started, and every half-made pair.
    forwards.shutdown().await;
    drop(pairs);
    conn.close().await;
}

async fn forward(
    runtime: &dyn DynRuntime,
    pod_id: &str,
    port: u16,
    mut error: SpdyStream,
    data: SpdyStream,
) {
    match runtime.port_forward(pod_id, port).await {
        Ok(tcp) => {
            let (mut from_client, mut to_client) = tokio::io::split(data.io);
            let (mut from_port, mut to_port) = tcp.into_split();
            let up = async {
                let _ = tokio::io::copy(&mut from_client, &mut to_port).await;
                let _ = to_port.shutdown().await;
            };
            let down = async {
                let r = tokio::io::copy(&mut from_port, &mut to_client).await;
                let _ = to_client.shutdown().await;
                r
            };
            let ((), r) = tokio::join!(up, down);
            if let Err(e) = r {
                let msg = format!("error forwarding port {port} to pod {pod_id}: {e}");
                let _ = error.io.write_all(msg.as_bytes()).await;
            }
        }
        Err(e) => {
            let msg = format!("error forwarding port {port} to pod {pod_id}: {e}");
            tracing::debug!(%msg, "port-forward failed");
            let _ = error.io.write_all(msg.as_bytes()).await;
            drop(data);
        }
    }
    let _ = error.io.shutdown().await;
}
