//! Just enough HTTP/1.1 for the upgrade handshakes: read one request head, answer with a
//! status line and headers. Bytes the client sent after the head are kept ([`Rewind`]).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::Error;

/// Largest request head accepted.
pub const MAX_HEAD: usize = 16 << 10;
/// How long a client may take to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADERS: usize = 64;

#[derive(Debug)]
pub struct RequestHead {
    pub method: String,
    /// The path without the query.
    pub path: String,
    /// What followed `?` in the request target (empty when nothing did).
    pub query: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    /// Every value of query parameter `name` (`?port=80&port=81`), undecoded.
    pub fn query_values(&self, name: &str) -> Vec<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
            .collect()
    }

    /// Every value of `name`, with comma-separated lists and repeated headers flattened.
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    }

    /// Whether `Upgrade` names `protocol` (case-insensitive).
    pub fn upgrades_to(&self, protocol: &str) -> bool {
        self.values("upgrade")
            .iter()
            .any(|p| p.eq_ignore_ascii_case(protocol))
    }
}

/// Parses a request head from `buf`: `Ok(None)` until it is complete, else the head and
/// its length.
pub fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Error::BadRequest(e.to_string())),
    };
    let target = req.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let headers = req
        .headers
        .iter()
        .map(|h| {
            let v = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_string(), v)
        })
        .collect();
    Ok(Some((
        RequestHead {
            method: req.method.unwrap_or("").to_string(),
            path,
            query,
            headers,
        },
        used,
    )))
}

/// Reads one request head; returns it and any bytes that followed it.
pub async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> Result<(RequestHead, Vec<u8>), Error> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        loop {
            if let Some((head, used)) = parse_head(&buf)? {
                return Ok((head, buf[used..].to_vec()));
            }
            if buf.len() >= MAX_HEAD {
                return Err(Error::BadRequest(format!(
                    "request head over {MAX_HEAD} bytes"
                )));
            }
            let mut chunk = [0u8; 2048];
            let n = io.read(&mut chunk).await?;
            if n == 0 {
                return Err(Error::BadRequest(
                    "connection closed before the request head ended".into(),
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(HEAD_TIMEOUT, read)
        .await
        .map_err(|_| Error::BadRequest("timed out reading the request head".into()))?
}

/// Writes a complete plain-text response (the connection is closed after it).
pub async fn respond<S: AsyncWrite + Unpin>(
    io: &mut S,
    status: u16,
    reason: &str,
    extra_headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<()> {
    let mut r = format!("HTTP/1.1 {status} {reason}\r\n");
    for (n, v) in extra_headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str(&format!(
        "Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    io.write_all(r.as_bytes()).await?;
    io.flush().await
}

/// Writes a `101 Switching Protocols` head.
pub async fn switch_protocols<S: AsyncWrite + Unpin>(
    io: &mut S,
    headers: &[(&str, &str)],
) -> std::io::Result<()> {
    let mut r = String::from("HTTP/1.1 101 Switching Protocols\r\n");
    for (n, v) in headers {
        r.push_str(&format!("{n}: {v}\r\n"));
    }
    r.push_str("\r\n");
    io.write_all(r.as_bytes()).await?;
    io.flush().await
}

/// A stream that first yields bytes already read from it.
pub struct Rewind<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(prefix: Vec<u8>, inner: S) -> Rewind<S> {
        Rewind {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
