//! The daemon's side of the streaming server: what Exec, Attach and PortForward sessions
//! do once a client has connected (see the `streaming` crate for the protocols).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::CloneFlags;
use sandbox::container::{self as ctr, ContainerState};
use sandbox::pod::NamespaceMode;
use sandbox::pod::PodManager;
use streaming::{
    AttachRequest, BoxedReader, BoxedWriter, ExecRequest, RuntimeError, StreamingRuntime, Streams,
};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use crate::containers::{ContainerRecord, Containers};

/// How long dialing a port in a pod may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an exec's output may keep flowing after the process exits (a background
/// child holding the pipes open must not hold the session).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

pub struct DaemonStreaming {
    pub pods: Arc<PodManager>,
    pub containers: Arc<Containers>,
}

impl DaemonStreaming {
    fn running(&self, id: &str) -> Result<Arc<ContainerRecord>, RuntimeError> {
        let rec = self
            .containers
            .find(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id:?} not found")))?;
        match ctr::state(&rec.dir) {
            Ok(ContainerState::Running { .. }) => Ok(rec),
            Ok(_) => Err(RuntimeError::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            ))),
            Err(e) => Err(RuntimeError::Internal(e.to_string())),
        }
    }
}

impl StreamingRuntime for DaemonStreaming {
    async fn check_container(&self, container_id: &str) -> Result<(), RuntimeError> {
        self.running(container_id).map(|_| ())
    }

    async fn check_pod(&self, pod_id: &str) -> Result<(), RuntimeError> {
        self.pods
            .status(pod_id)
            .map(|_| ())
            .map_err(|e| RuntimeError::NotFound(e.to_string()))
    }

    async fn exec(&self, req: ExecRequest, streams: Streams) -> Result<i32, RuntimeError> {
        let rec = self.running(&req.container_id)?;
        let monitor = self.containers.monitor().clone();
        let request = crate::containers::wasm::exec_request(&rec, req.cmd)
            .map_err(|e| RuntimeError::Unsupported(e.to_string()))?;
        let stdio = ctr::ExecStdio {
            stdin: streams.stdin.is_some() && !req.tty,
            tty: req.tty,
        };
        let process = tokio::task::spawn_blocking(move || {
            ctr::spawn_exec(&monitor, &rec.dir, &request, stdio)
        })
        .await
        .map_err(internal)?
        .map_err(internal)?;
        run_to_exit(process, streams).await
    }

    async fn attach(&self, req: AttachRequest, streams: Streams) -> Result<(), RuntimeError> {
        let rec = self.running(&req.container_id)?;
        let conn = tokio::task::spawn_blocking(move || ctr::attach(&rec.dir))
            .await
            .map_err(internal)?
            .map_err(|e| match e {
                ctr::ContainerError::NotRunning => RuntimeError::FailedPrecondition(format!(
                    "container {} is not running",
                    req.container_id
                )),
                e => internal(e),
            })?;
        conn.set_nonblocking(true).map_err(internal)?;
        let conn = tokio::net::UnixStream::from_std(conn).map_err(internal)?;
        relay_attach(conn, streams).await
    }

    async fn port_forward(&self, pod_id: &str, port: u16) -> Result<TcpStream, RuntimeError> {
        let pod = self
            .pods
            .status(pod_id)
            .map_err(|e| RuntimeError::NotFound(e.to_string()))?;
        let netns = (pod.record.spec.namespaces.network != NamespaceMode::Node)
            .then(|| pod.paths.namespace("net"));
        dial_pod_port(netns, port)
            .await
            .map_err(|e| RuntimeError::Internal(format!("dialing localhost:{port}: {e}")))
    }
}

fn internal(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Internal(e.to_string())
}

/// Wires an exec'd process to the client's streams and waits for it. Returns once the
/// process has exited and its output is written (bounded by [`OUTPUT_GRACE`]), even if
/// the client still holds stdin open.
async fn run_to_exit(mut process: ctr::ExecProcess, streams: Streams) -> Result<i32, RuntimeError> {
    let Streams {
        stdin: client_in,
        stdout: client_out,
        stderr: client_err,
        mut resize,
    } = streams;
    let mut feeders = Vec::new();
    let mut outputs = Vec::new();
    // Clones: the process keeps its terminal for `resize`.
    if let Some(terminal) = process.terminal.as_ref() {
        let terminal = terminal.try_clone().map_err(internal)?;
        let reader = terminal.try_clone().map_err(internal)?;
        outputs.push(tokio::spawn(copy_terminal_out(reader, client_out)));
        if let Some(from) = client_in {
            feeders.push(tokio::spawn(copy_terminal_in(from, terminal)));
        }
    } else {
        let to_std = |e| internal(e);
        if let (Some(mut from), Some(to)) = (client_in, process.stdin.take()) {
            let mut to = tokio::process::ChildStdin::from_std(to).map_err(to_std)?;
            feeders.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut to).await;
                // Dropping `to` closes the process's stdin.
            }));
        }
        let out = process
            .stdout
            .take()
            .map(tokio::process::ChildStdout::from_std)
            .transpose()
            .map_err(to_std)?;
        let err = process
            .stderr
            .take()
            .map(tokio::process::ChildStderr::from_std)
            .transpose()
            .map_err(to_std)?;
        outputs.push(tokio::spawn(copy_out(out, client_out)));
        outputs.push(tokio::spawn(copy_out(err, client_err)));
    }
    // Wait for the exit without a blocking thread, applying resizes meanwhile.
    let exit_fd = process.exit_fd().try_clone_to_owned().map_err(internal)?;
    // SAFETY: `exit_fd` is our own OwnedFd, open for as long as the AsyncFd owns it.
    let exited = unsafe { AsyncFd::register_with_interest(exit_fd, Interest::READABLE) }
        .map_err(internal)?;
    loop {
        tokio::select! {
            ready = exited.readable() => {
                let _ = ready.map_err(internal)?;
                break;
            }
            Some(size) = async { resize.as_mut()?.recv().await }, if resize.is_some() => {
                if let Err(e) = process.resize(size.height, size.width) {
                    tracing::debug!(error = %e, "resizing an exec terminal");
                }
            }
        }
    }
    let code = tokio::task::spawn_blocking(move || process.wait())
        .await
        .map_err(internal)?
        .map_err(internal)?;
    let _ = tokio::time::timeout(OUTPUT_GRACE, async {
        for o in outputs {
            let _ = o.await;
        }
    })
    .await;
    for f in feeders {
        f.abort();
    }
    Ok(code)
}

/// Relays an attach connection to the monitor: its output frames to the client's stdout
/// and stderr, the client's stdin to it (shutting down our write side at the client's
/// EOF, which `stdin_once` turns into the container's EOF). Ends when the monitor closes
/// the connection (the container exited) or the client's output streams are gone.
async fn relay_attach(conn: tokio::net::UnixStream, streams: Streams) -> Result<(), RuntimeError> {
    use sandbox::monitor::attach::{STDERR, STDOUT, decode_frame};
    let (mut from_monitor, mut to_monitor) = conn.into_split();
    let feed = streams.stdin.map(|mut from| {
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from, &mut to_monitor).await;
            let _ = to_monitor.shutdown().await;
        })
    });
    let (mut stdout, mut stderr) = (streams.stdout, streams.stderr);
    let mut buf = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 32 << 10];
    'relay: loop {
        let n = from_monitor.read(&mut chunk).await.map_err(internal)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        while let Some((stream, payload, len)) = decode_frame(&buf[used..]) {
            let to = match stream {
                STDOUT => &mut stdout,
                STDERR => &mut stderr,
                _ => &mut None,
            };
            if let Some(w) = to
                && w.write_all(payload).await.is_err()
            {
                *to = None;
                if stdout.is_none() && stderr.is_none() {
                    break 'relay;
                }
            }
            used += len;
        }
        buf.drain(..used);
    }
    for w in [stdout.as_mut(), stderr.as_mut()].into_iter().flatten() {
        let _ = w.shutdown().await;
    }
    if let Some(f) = feed {
        f.abort();
    }
    Ok(())
}

/// Copies a process's output to the client's stream, or drains it if the client did not
/// ask for it (so the process never blocks on a full pipe).
async fn copy_out<R>(from: Option<R>, to: Option<BoxedWriter>)
where
    R: AsyncRead + Unpin,
{
    let Some(mut from) = from else { return };
    match to {
        Some(mut to) => {
            let _ = tokio::io::copy(&mut from, &mut to).await;
            let _ = to.shutdown().await;
        }
        None => {
            let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
        }
    }
}

/// The terminal's output to the client. A terminal master is read on a blocking thread;
/// it fails with EIO once the last process holding the terminal is gone.
async fn copy_terminal_out(mut master: File, to: Option<BoxedWriter>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; 32 << 10];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || tx.blocking_send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let Some(mut to) = to else {
        while rx.recv().await.is_some() {}
        return;
    };
    while let Some(chunk) = rx.recv().await {
        if to.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The client's input to the terminal, written on a blocking thread.
async fn copy_terminal_in(mut from: BoxedReader, mut master: File) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(8);
    tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            if master.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 32 << 10];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
            break;
        }
    }
}

/// Connects to `localhost:port` in the network namespace pinned at `netns` (the host's if
/// `None`). A socket belongs to the namespace it was created in, so the socket is made on
/// a dedicated thread that enters the namespace and ends afterwards; a tokio worker never
/// changes namespace.
pub async fn dial_pod_port(netns: Option<PathBuf>, port: u16) -> io::Result<TcpStream> {
    let Some(netns) = netns else {
        return match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            Ok(s) => Ok(s),
            Err(_) => TcpStream::connect((Ipv6Addr::LOCALHOST, port)).await,
        };
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("berth-netns-dial".into())
        .spawn(move || {
            let _ = tx.send(dial_in_netns(&netns, port));
        })?;
    let stream = rx
        .await
        .map_err(|_| io::Error::other("the namespace dialer thread died"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// Runs on a throwaway thread: enters `netns`, then dials loopback, IPv4 first.
fn dial_in_netns(netns: &Path, port: u16) -> io::Result<std::net::TcpStream> {
    let ns = File::open(netns)?;
    nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match std::net::TcpStream::connect_timeout(&v4, DIAL_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, DIAL_TIMEOUT).map_err(|_| e4)
        }
    }
}
