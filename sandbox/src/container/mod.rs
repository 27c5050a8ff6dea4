//! Native containers: the domain API the daemon calls (create, start, signal, state,
//! remove, reopen the log, exec_sync). Each container has a state directory holding its
//! spec and the records written by its monitor (see `state`); the monitor process (see
//! `crate::monitor`) is what actually forks and supervises the container process.
//!
//! Lifecycle, derived from the records rather than stored:
//!
//! ```text
//!   create ──► Created ──start──► Running ──exit──► Exited
//!                 └────────────kill/exit───────────────┘
//! ```

pub mod caps;
pub mod cgroup;
pub(crate) mod child;
mod exec_sync;
mod in_root;
pub mod seccomp;
pub mod spec;
pub mod state;
mod syscall_table;
pub(crate) mod terminal;

use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::monitor::ExecRequest;
use crate::monitor::{REQ_REOPEN, REQ_RESIZE, REQ_START};
use crate::trash::Trash;
use crate::undo::Undo;
use cgroup::{Cgroup, CgroupError, Hierarchy};
pub use exec_sync::{ExecOutput, ExecProcess, ExecStdio, MAX_EXEC_OUTPUT, exec_sync, spawn_exec};
pub use spec::{ContainerSpec, SpecError};
use state::{ExitRecord, ProcessId, StartRecord};

/// An entry point of the daemon's binary that a container process can run in place of
/// execve (`Process::exec_self`): argv (starting with the program name) and environment
/// in, exit status out.
pub type SelfEntry =
    fn(Vec<std::ffi::OsString>, Vec<(std::ffi::OsString, std::ffi::OsString)>) -> i32;

static SELF_ENTRY: std::sync::OnceLock<SelfEntry> = std::sync::OnceLock::new();

/// Registers the entry point for `exec_self` processes; the binary does it before it
/// becomes a monitor or exec helper.
pub fn set_self_entry(entry: SelfEntry) {
    let _ = SELF_ENTRY.set(entry);
}

pub(crate) fn self_entry() -> Option<SelfEntry> {
    SELF_ENTRY.get().copied()
}

/// How to start a monitor: a program plus the leading arguments that select the monitor
/// mode, e.g. berth's sealed copy with `__monitor`.
#[derive(Debug, Clone)]
pub struct MonitorCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl MonitorCommand {
    /// `berth __monitor` from the daemon's sealed in-memory copy of itself, so no process
    /// in a container can reach the daemon's binary on disk (CVE-2019-5736).
    pub fn sealed_berth() -> io::Result<Self> {
        let exe = crate::sealed_exe::shared()?;
        Ok(Self {
            program: format!("/proc/self/fd/{}", exe.raw_fd()).into(),
            args: vec!["__monitor".into()],
        })
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedContainer {
    /// Host PID of the container process (blocked before execve until `start`).
    pub pid: i32,
    pub created_at_ns: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created { pid: i32 },
    Running { pid: i32, started_at_ns: i64 },
    Exited(ExitRecord),
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container spec: {0}")]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("creating the container failed: {0}")]
    Create(String),
    #[error("starting the container failed: {0}")]
    Start(String),
    #[error("the container monitor: {0}")]
    Monitor(String),
    #[error("the container is not running")]
    NotRunning,
    #[error("container state directory {0:?} does not exist")]
    NotFound(PathBuf),
    #[error("the command timed out after {0:?} and was killed")]
    ExecTimeout(Duration),
    #[error("exec failed: {0}")]
    Exec(String),
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(io::Error) -> ContainerError {
    let what = what.into();
    move |source| ContainerError::Io { what, source }
}

/// Creates the container: state dir, writable layer dirs, cgroup, and (through a new
/// monitor) the container process, set up and waiting before execve. On failure everything
/// made so far is removed again, in reverse order.
pub fn create(
    monitor: &MonitorCommand,
    spec: &ContainerSpec,
    dir: &Path,
) -> Result<CreatedContainer, ContainerError> {
    spec.validate()?;
    let mut undo = Undo::new();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io_ctx(format!("creating state directory {dir:?}")))?;
    let owned = dir.to_owned();
    undo.push("state dir", move || {
        let _ = std::fs::remove_dir_all(owned);
    });
    std::fs::create_dir(dir.join(state::ROOTFS))
        .map_err(io_ctx("creating the rootfs mount point"))?;
    for layer_dir in [&spec.rootfs.upper, &spec.rootfs.work] {
        if !layer_dir.exists() {
            std::fs::create_dir_all(layer_dir)
                .map_err(io_ctx(format!("creating {layer_dir:?}")))?;
            let owned = layer_dir.clone();
            undo.push("layer dir", move || {
                let _ = std::fs::remove_dir_all(owned);
            });
        }
    }
    state::write_json(dir, state::CONFIG, spec).map_err(io_ctx("writing config.json"))?;
    if let Some(cg) = &spec.cgroup {
        let cgroup = Cgroup::at(&Hierarchy::detect(), &cg.path);
        let made = cgroup.clone();
        undo.push("cgroup", move || {
            let _ = made.remove();
        });
        cgroup.create(&cg.resources)?;
        if !spec.privileged {
            cgroup.restrict_devices(&spec.devices)?;
        }
    }
    let pid = spawn_monitor(monitor, dir)?;
    undo.commit();
    Ok(CreatedContainer {
        pid,
        created_at_ns: state::now_ns(),
    })
}

/// Runs `<monitor> create <dir>` and reads its handshake: `ok <pid>` or `err <message>`.
fn spawn_monitor(monitor: &MonitorCommand, dir: &Path) -> Result<i32, ContainerError> {
    let mut child = monitor
        .command()
        .arg("create")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_ctx(format!(
            "starting the monitor {:?}",
            monitor.program
        )))?;
    let _ = child.wait();
    // EOF arrives when the detached monitor has answered and let go of the pipes.
    let out = match child.stdout.take() {
        Some(stdout) => read_until_eof(stdout, HANDSHAKE_TIMEOUT),
        None => None,
    };
    let Some(out) = out else {
        kill_recorded(dir, state::PID);
        kill_recorded(dir, state::MONITOR);
        return Err(ContainerError::Monitor(format!(
            "no answer within {HANDSHAKE_TIMEOUT:?}"
        )));
    };
    let mut err = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut err);
    }
    let line = out.lines().next().unwrap_or_default();
    if let Some(pid) = line.strip_prefix("ok ") {
        return pid
            .trim()
            .parse()
            .map_err(|_| ContainerError::Monitor(format!("bad handshake {line:?}")));
    }
    if let Some(msg) = line.strip_prefix("err ") {
        return Err(ContainerError::Create(msg.to_owned()));
    }
    Err(ContainerError::Monitor(format!(
        "no handshake (stdout {out:?}, stderr {:?})",
        err.trim()
    )))
}

/// How long container setup (namespaces, mounts, cgroup) may take before create gives up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// Reads `pipe` to EOF; `None` when `timeout` passes first.
fn read_until_eof(mut pipe: impl Read + AsRawFd, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n == 0 {
            continue;
        }
        match pipe.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Some(String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

/// SIGKILLs the process recorded in `file`, if it is still that process.
fn kill_recorded(dir: &Path, file: &str) {
    if let Ok(Some(p)) = state::read_json::<ProcessId>(dir, file)
        && p.is_alive()
    {
        // SAFETY: kill with a pid whose identity was just checked.
        unsafe { libc::kill(p.pid, libc::SIGKILL) };
    }
}

/// One request on the monitor's control socket.
fn control(dir: &Path, request: &str) -> Result<Result<(), String>, ContainerError> {
    let path = dir.join(state::CONTROL);
    let mut conn = match connect(&path) {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ContainerError::NotRunning);
        }
        Err(e) => return Err(io_ctx(format!("connecting to {path:?}"))(e)),
    };
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io_ctx("control socket"))?;
    conn.write_all(format!("{request}\n").as_bytes())
        .map_err(io_ctx("sending to the monitor"))?;
    let mut reply = String::new();
    BufReader::new(conn)
        .read_line(&mut reply)
        .map_err(io_ctx("reading the monitor's reply"))?;
    let reply = reply.trim_end();
    match reply {
        "ok" => Ok(Ok(())),
        _ => match reply.strip_prefix("err ") {
            Some(msg) => Ok(Err(msg.to_owned())),
            None => Err(ContainerError::Monitor(format!(
                "unexpected reply {reply:?}"
            ))),
        },
    }
}

/// Unix socket paths are limited to 108 bytes; longer ones go through the directory's fd.
fn connect(path: &Path) -> io::Result<UnixStream> {
    if path.as_os_str().len() < 100 {
        return UnixStream::connect(path);
    }
    let parent = std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?;
    let name = path.file_name().unwrap_or_default();
    UnixStream::connect(Path::new(&format!("/proc/self/fd/{}", parent.as_raw_fd())).join(name))
}

/// Connects to the container's output (and stdin, if it has one); the wire format is
/// described in `crate::monitor::attach`. Errors with `NotRunning` once it exited.
pub fn attach(dir: &Path) -> Result<UnixStream, ContainerError> {
    let path = dir.join(state::ATTACH);
    connect(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ContainerError::NotRunning,
        _ => io_ctx(format!("connecting to {path:?}"))(e),
    })
}

/// Sets the size of the container's terminal (containers created with `tty`).
pub fn resize(dir: &Path, rows: u16, cols: u16) -> Result<(), ContainerError> {
    control(dir, &format!("{REQ_RESIZE} {rows} {cols}"))?.map_err(ContainerError::Monitor)
}

/// Lets the created container process execve its entrypoint.
pub fn start(dir: &Path) -> Result<(), ContainerError> {
    control(dir, REQ_START)?.map_err(ContainerError::Start)
}

/// Asks the monitor to continue the log in a new file at the original path (after the
/// kubelet renamed the old one). Fails when the container is not running.
pub fn reopen_log(dir: &Path) -> Result<(), ContainerError> {
    control(dir, REQ_REOPEN)?.map_err(ContainerError::Monitor)
}

/// Sends `signal` to the container process. Errors with `NotRunning` once it exited.
pub fn signal(dir: &Path, signal: i32) -> Result<(), ContainerError> {
    let Some(target) =
        state::read_json::<ProcessId>(dir, state::PID).map_err(io_ctx("reading pid.json"))?
    else {
        return Err(ContainerError::NotRunning);
    };
    if state::read_json::<ExitRecord>(dir, state::EXIT)
        .ok()
        .flatten()
        .is_some()
    {
        return Err(ContainerError::NotRunning);
    }
    // The pidfd pins the process; checking the start time after opening it rules out a
    // recycled pid.
    let pidfd = match crate::monitor::pidfd_open(target.pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(ContainerError::NotRunning),
        Err(e) => return Err(io_ctx("pidfd_open")(e)),
    };
    if !target.is_alive() {
        return Err(ContainerError::NotRunning);
    }
    // SAFETY: plain syscall on a pidfd we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Err(ContainerError::NotRunning);
        }
        return Err(io_ctx(format!("sending signal {signal}"))(e));
    }
    Ok(())
}

/// The container's state, from its records and /proc.
pub fn state(dir: &Path) -> Result<ContainerState, ContainerError> {
    if !dir.exists() {
        return Err(ContainerError::NotFound(dir.to_owned()));
    }
    if let Some(exit) = read_exit(dir)? {
        return Ok(ContainerState::Exited(exit));
    }
    let target =
        state::read_json::<ProcessId>(dir, state::PID).map_err(io_ctx("reading pid.json"))?;
    if let Some(target) = target
        && target.is_alive()
    {
        let started = state::read_json::<StartRecord>(dir, state::STARTED)
            .map_err(io_ctx("reading started.json"))?;
        return Ok(match started {
            Some(s) => ContainerState::Running {
                pid: target.pid,
                started_at_ns: s.started_at_ns,
            },
            None => ContainerState::Created { pid: target.pid },
        });
    }
    // The process is gone: its monitor is draining output and about to write the record.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut monitor = MonitorWatch::open(dir);
    let mut pause = Backoff::new();
    loop {
        // Sampled before the read: a monitor found gone afterwards may have just written it.
        let monitor_alive = monitor.alive();
        if let Some(exit) = read_exit(dir)? {
            return Ok(ContainerState::Exited(exit));
        }
        if !monitor_alive || Instant::now() >= deadline {
            break;
        }
        monitor.nap(pause.next());
    }
    Ok(ContainerState::Exited(ExitRecord {
        exit_code: 255,
        signal: None,
        finished_at_ns: state::now_ns(),
        oom_killed: false,
        message: Some("the container's monitor ended without recording its exit".into()),
    }))
}

fn read_exit(dir: &Path) -> Result<Option<ExitRecord>, ContainerError> {
    state::read_json(dir, state::EXIT).map_err(io_ctx("reading exit.json"))
}

/// A pidfd of the container's monitor while it runs; `None` once it is gone (or never ran).
/// The monitor exits right after it has recorded the container's exit.
pub fn monitor_pidfd(dir: &Path) -> Option<OwnedFd> {
    let monitor = state::read_json::<ProcessId>(dir, state::MONITOR)
        .ok()
        .flatten()?;
    let fd = crate::monitor::pidfd_open(monitor.pid).ok()?;
    // Checked after opening: the pidfd then refers to this very monitor.
    monitor.is_alive().then_some(fd)
}

/// The container's monitor, watched through a pidfd. It exits right after it has recorded
/// the container's exit, so a wait wakes the moment the record lands rather than at the
/// next poll.
struct MonitorWatch(Option<OwnedFd>);

impl MonitorWatch {
    fn open(dir: &Path) -> Self {
        MonitorWatch(monitor_pidfd(dir))
    }

    fn alive(&mut self) -> bool {
        self.nap(Duration::ZERO);
        self.0.is_some()
    }

    /// Sleeps for `d`, or less if the monitor exits meanwhile.
    fn nap(&mut self, d: Duration) {
        let Some(fd) = &self.0 else {
            std::thread::sleep(d);
            return;
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd and a valid timeout for the duration of the call.
        let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if n > 0 {
            self.0 = None;
        }
    }

    /// Waits up to `timeout` for the monitor to exit.
    fn wait_gone(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.alive() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.nap(left);
        }
    }
}

/// Waits until the container has exited and its exit is recorded (or `timeout` passes).
pub fn wait(dir: &Path, timeout: Duration) -> Result<ContainerState, ContainerError> {
    let deadline = Instant::now() + timeout;
    let mut monitor = MonitorWatch::open(dir);
    let mut pause = Backoff::new();
    loop {
        let s = state(dir)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if matches!(s, ContainerState::Exited(_)) || left.is_zero() {
            return Ok(s);
        }
        monitor.nap(pause.next().min(left));
    }
}

/// Sleeps for polling loops: short at first, so a stop or exit that is about to land is
/// seen within a millisecond, then up to 10 ms, so long waits stay cheap.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff(Duration::from_micros(500))
    }

    pub(crate) fn sleep(&mut self) {
        std::thread::sleep(self.next());
    }

    /// The next pause, doubling the one after it.
    pub(crate) fn next(&mut self) -> Duration {
        let pause = self.0;
        self.0 = (self.0 * 2).min(Duration::from_millis(10));
        pause
    }
}

/// Kills the container if needed and removes its cgroup, writable layer and state dir (the
/// directories through `trash`). Idempotent: removing a removed container is fine.
pub fn remove(dir: &Path, trash: &Trash) -> Result<(), ContainerError> {
    if !dir.exists() {
        return Ok(());
    }
    let spec: Option<ContainerSpec> =
        state::read_json(dir, state::CONFIG).map_err(io_ctx("reading config.json"))?;
    match signal(dir, libc::SIGKILL) {
        Ok(()) | Err(ContainerError::NotRunning) => {}
        Err(e) => return Err(e),
    }
    match wait(dir, Duration::from_secs(10)) {
        // A removal running at the same time got there first.
        Ok(_) | Err(ContainerError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    MonitorWatch::open(dir).wait_gone(Duration::from_secs(5));
    if let Some(spec) = &spec {
        if let Some(cg) = &spec.cgroup {
            let cgroup = Cgroup::at(&Hierarchy::detect(), &cg.path);
            // Stragglers (e.g. children left in a shared PID namespace) go with it.
            cgroup.kill_all();
            cgroup.remove()?;
        }
        for layer_dir in [&spec.rootfs.upper, &spec.rootfs.work] {
            discard(trash, layer_dir)?;
        }
    }
    discard(trash, dir)
}

/// Removes what a daemon that died inside CreateContainer left of a container it never
/// recorded: its monitor and process (killed by their records, even mid-setup, before
/// anything waits on them), then everything `remove` takes.
pub fn remove_orphan(dir: &Path, trash: &Trash) -> Result<(), ContainerError> {
    kill_recorded(dir, state::MONITOR);
    kill_recorded(dir, state::PID);
    remove(dir, trash)
}

fn discard(trash: &Trash, dir: &Path) -> Result<(), ContainerError> {
    trash
        .discard(dir)
        .map_err(io_ctx(format!("removing {dir:?}")))
}
