//! ExecSync: run a command in a running container, collect its output (capped,
//! CVE-2022-31030) and exit code, and kill it when the timeout passes.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use super::{ContainerError, ExecRequest, MonitorCommand, io_ctx, terminal};
use crate::monitor::pidfd_open;

/// The most output ExecSync keeps, stdout and stderr together: whatever follows is read
/// and dropped, like CRI-O's cap. The kubelet and crictl refuse gRPC messages over 16 MiB,
/// so both streams at once must leave room for the rest of the response.
pub const MAX_EXEC_OUTPUT: usize = 15 << 20;

/// What the exec helper may say on its status pipe (a pid, an exit code, an error).
const MAX_STATUS: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// A process running in a container through the exec helper (Exec and ExecSync).
pub struct ExecProcess {
    helper: Child,
    helper_fd: OwnedFd,
    status: Capped,
    /// Present when requested at spawn (never with a terminal).
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    /// The terminal's master side: read the output, write the input. Reads fail with EIO
    /// once the process is gone.
    pub terminal: Option<File>,
}

/// How the exec'd process's stdio is wired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecStdio {
    /// A stdin pipe (without it, stdin is /dev/null).
    pub stdin: bool,
    /// A terminal instead of pipes, as the process's controlling tty.
    pub tty: bool,
}

/// Starts `request` in the running container of state dir `dir`, with stdout and stderr
/// pipes (or one terminal).
pub fn spawn_exec(
    monitor: &MonitorCommand,
    dir: &Path,
    request: &ExecRequest,
    stdio: ExecStdio,
) -> Result<ExecProcess, ContainerError> {
    let json = serde_json::to_string(request).map_err(|e| ContainerError::Exec(e.to_string()))?;
    let (status_r, status_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_ctx("pipe")(e.into()))?;
    let status_raw = status_w.as_raw_fd();
    let mut cmd = monitor.command();
    cmd.arg("exec").arg(dir).arg(json);
    let mut terminal = None;
    if stdio.tty {
        let (master, slave) = container_terminal(dir).map_err(io_ctx("allocating a terminal"))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from);
        cmd.arg(crate::monitor::TTY_FLAG)
            .stdin(dup(&slave).map_err(io_ctx("dup"))?)
            .stdout(dup(&slave).map_err(io_ctx("dup"))?)
            .stderr(Stdio::from(slave));
        terminal = Some(File::from(master));
    } else {
        cmd.stdin(if stdio.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    }
    // SAFETY: dup2 is async-signal-safe; it runs in the forked child before execve and
    // places the status pipe on fd 3 without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(status_raw, crate::monitor::STATUS_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut helper = cmd.spawn().map_err(io_ctx("starting the exec helper"))?;
    // Our copies of the child's ends (status pipe, terminal slave) go now, so EOF and EIO
    // arrive when the child side is done.
    drop(cmd);
    drop(status_w);
    let helper_fd = match pidfd_open(helper.id() as i32) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = helper.kill();
            let _ = helper.wait();
            return Err(io_ctx("pidfd_open")(e));
        }
    };
    Ok(ExecProcess {
        stdin: helper.stdin.take(),
        stdout: helper.stdout.take(),
        stderr: helper.stderr.take(),
        terminal,
        helper,
        helper_fd,
        status: Capped::new(Some(File::from(status_r))),
    })
}

/// A terminal on the container's own devpts, so the exec'd process finds its tty under
/// `/dev/pts`; the host's only when the container has no devpts of its own to offer.
fn container_terminal(dir: &Path) -> io::Result<(OwnedFd, OwnedFd)> {
    let process = super::state::read_json::<super::state::ProcessId>(dir, super::state::PID)?;
    match process.filter(|p| p.is_alive()) {
        Some(p) => terminal::open_in_container(p.pid).or_else(|e| {
            tracing::warn!(error = %e, "no terminal on the container's devpts; using the host's");
            terminal::open()
        }),
        None => terminal::open(),
    }
}

impl ExecProcess {
    /// Readable once the process has exited (for poll/epoll or an async reactor).
    pub fn exit_fd(&self) -> BorrowedFd<'_> {
        self.helper_fd.as_fd()
    }

    /// Sets the terminal's size (rows and columns), as the client's resize messages ask.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ContainerError> {
        let Some(terminal) = &self.terminal else {
            return Ok(());
        };
        terminal::set_size(terminal.as_fd(), rows, cols).map_err(io_ctx("resizing the terminal"))
    }

    /// Waits for the process and returns its exit code (128 + signal when killed), or
    /// why it never ran (e.g. `exec: "foo": executable file not found in $PATH`).
    pub fn wait(mut self) -> Result<i32, ContainerError> {
        let _ = self.helper.wait();
        let room = MAX_STATUS.saturating_sub(self.status.bytes.len());
        self.status.drain_nonblocking(room);
        let status = String::from_utf8_lossy(&self.status.bytes).into_owned();
        if let Some(msg) = status.lines().find_map(|l| l.strip_prefix("error ")) {
            return Err(ContainerError::Exec(msg.to_owned()));
        }
        parse_status(&status, "exit").ok_or_else(|| {
            ContainerError::Exec(format!("the exec helper reported nothing ({status:?})"))
        })
    }

    /// Kills the process in the container and the helper.
    pub fn kill(mut self) {
        // The helper reports its child's pid first; the helper's death also kills the
        // child through the parent-death signal, should the pid not be known yet.
        let status = self.status.take_text();
        if let Some(pid) = parse_status(&status, "pid") {
            // SAFETY: SIGKILL to the pid our helper reported for its direct child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // Let the helper reap it: the orphan of a process outside the container's PID
            // namespace goes to the host's init, which may never reap it.
            let mut fds = [libc::pollfd {
                fd: self.helper_fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            // SAFETY: poll on a pidfd we own, bounded.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 2000) };
        }
        let _ = self.helper.kill();
        let _ = self.helper.wait();
    }
}

/// Runs `request` in the container of state dir `dir` and waits at most `timeout` (None:
/// no limit). Blocking: the daemon calls it from a blocking task.
pub fn exec_sync(
    monitor: &MonitorCommand,
    dir: &Path,
    request: &ExecRequest,
    timeout: Option<Duration>,
) -> Result<ExecOutput, ContainerError> {
    let mut process = spawn_exec(monitor, dir, request, ExecStdio::default())?;
    let mut streams = [
        process.stdout.take().map(|p| File::from(OwnedFd::from(p))),
        process.stderr.take().map(|p| File::from(OwnedFd::from(p))),
    ]
    .map(Capped::new);
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let wait_ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    process.kill();
                    return Err(ContainerError::ExecTimeout(timeout.unwrap_or_default()));
                }
                left.as_millis().min(i32::MAX as u128) as i32 + 1
            }
            None => -1,
        };
        if poll_once(&mut streams, process.exit_fd(), wait_ms) {
            break;
        }
    }
    // The process is gone; take what its pipes still hold without waiting on processes it
    // left behind.
    for i in 0..streams.len() {
        let room = room_left(&streams);
        streams[i].drain_nonblocking(room);
    }
    let exit_code = process.wait()?;
    let [stdout, stderr] = streams.map(Capped::into_bytes);
    Ok(ExecOutput {
        exit_code,
        stdout,
        stderr,
    })
}

fn parse_status(status: &str, key: &str) -> Option<i32> {
    status
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
}

/// Polls the open streams and the helper; returns true once the helper exited.
fn poll_once(streams: &mut [Capped; 2], helper: BorrowedFd<'_>, wait_ms: i32) -> bool {
    let mut fds = vec![libc::pollfd {
        fd: helper.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    for f in streams.iter().filter_map(|s| s.file.as_ref()) {
        fds.push(libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    // SAFETY: fds is a valid pollfd array for the duration of the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
    if n <= 0 {
        return false;
    }
    for i in 0..streams.len() {
        let Some(fd) = streams[i].file.as_ref().map(|f| f.as_raw_fd()) else {
            continue;
        };
        if fds.iter().any(|p| p.fd == fd && p.revents != 0) {
            // One budget for both streams: what one kept is gone for the other.
            let room = room_left(streams);
            streams[i].read_some(room);
        }
    }
    fds[0].revents != 0
}

/// How much more output ExecSync keeps, for both streams together.
fn room_left(streams: &[Capped]) -> usize {
    let kept: usize = streams.iter().map(|s| s.bytes.len()).sum();
    MAX_EXEC_OUTPUT.saturating_sub(kept)
}

/// A pipe read into memory up to a cap; the rest is read and dropped so the writer never
/// blocks.
struct Capped {
    file: Option<File>,
    bytes: Vec<u8>,
}

impl Capped {
    fn new(file: Option<File>) -> Self {
        Self {
            file,
            bytes: Vec::new(),
        }
    }

    /// Reads once, keeping at most `room` more bytes; false at EOF or on an error.
    fn read_some(&mut self, room: usize) -> bool {
        let Some(f) = &mut self.file else {
            return false;
        };
        let mut buf = [0u8; 64 * 1024];
        match f.read(&mut buf) {
            Ok(0) => {
                self.file = None;
                false
            }
            Ok(n) => {
                self.bytes.extend_from_slice(&buf[..n.min(room)]);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(_) => false,
        }
    }

    /// Reads what the pipe holds now, keeping at most `room` more bytes.
    fn drain_nonblocking(&mut self, room: usize) {
        if let Some(f) = &self.file {
            // SAFETY: fcntl on a valid fd.
            unsafe {
                let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
                libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
            }
        }
        let cap = self.bytes.len() + room;
        while self.read_some(cap.saturating_sub(self.bytes.len())) {}
    }

    /// The status pipe's text so far.
    fn take_text(&mut self) -> String {
        self.drain_nonblocking(MAX_STATUS.saturating_sub(self.bytes.len()));
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}
