//! The per-container monitor, conmon-like: one small single-threaded process per container,
//! started by the daemon as `<berth> __monitor create <state-dir>`. It detaches (setsid and
//! a second fork, no parent-death signal) so it outlives daemon restarts, forks the container
//! process, holds its stdio pipes, writes the CRI log, serves `start` and `reopen-log` on a
//! control socket and attach clients on an attach socket (both in the state dir), waits on
//! the process through a pidfd and records its exit durably in `exit.json`.
//!
//! `<berth> __monitor exec <state-dir> <request-json> [--tty]` is the exec helper: it enters
//! a running container's namespaces and cgroup and runs one more process there (Exec and
//! ExecSync).

pub mod attach;
pub mod cri_log;
mod exec_helper;
mod trim;

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};

use crate::container::cgroup::{Cgroup, Hierarchy};
use crate::container::child;
use crate::container::spec::{ContainerSpec, Namespace};
use crate::container::state::{self, ExitRecord, ProcessId, StartRecord};
use cri_log::{Framer, LogFile, Stream};

pub use exec_helper::ExecRequest;
pub(crate) use exec_helper::{STATUS_FD, TTY_FLAG};

/// Entry point for the monitor's argv (after the program name and any `__monitor` word).
/// Runs before any runtime or logging is set up; returns the process exit code.
pub fn main(args: Vec<OsString>) -> i32 {
    let mut args = args.into_iter();
    let mode = args.next();
    let dir = args.next().map(PathBuf::from);
    match (mode.as_ref().and_then(|m| m.to_str()), dir) {
        (Some("create"), Some(dir)) => run_create(&dir),
        (Some("exec"), Some(dir)) => {
            let request = args.next();
            let tty = args.next().is_some_and(|a| a == exec_helper::TTY_FLAG);
            exec_helper::run(&dir, request, tty)
        }
        _ => {
            eprintln!(
                "usage: __monitor create <state-dir> | exec <state-dir> <request-json> [--tty]"
            );
            2
        }
    }
}

/// Control requests on the socket, one line each; replies are `ok` or `err <message>`.
pub(crate) const REQ_START: &str = "start";
pub(crate) const REQ_REOPEN: &str = "reopen-log";
/// `resize <rows> <cols>`
pub(crate) const REQ_RESIZE: &str = "resize";
/// Monitor → container process: you are in the container's cgroup now.
const IN_CGROUP: &[u8] = b"in-cgroup\n";

fn run_create(dir: &Path) -> i32 {
    // The daemon waits for this first process; the real monitor is its child, in a session
    // of its own, reparented to init once we return.
    if nix::unistd::setsid().is_err() {
        // Already a group leader: still detach through the fork below.
    }
    // SAFETY: the monitor is single-threaded.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { .. }) => return 0,
        Ok(ForkResult::Child) => {}
        Err(e) => {
            println!("err forking the monitor: {e}");
            return 1;
        }
    }
    // Keep no directory of the daemon's busy.
    let _ = std::env::set_current_dir("/");
    // stdout is the daemon's handshake pipe until the container process is ready.
    let monitor = match Monitor::prepare(dir) {
        Ok(m) => m,
        Err(msg) => {
            println!("err {}", msg.replace('\n', " "));
            return 1;
        }
    };
    // The daemon that asked may have died meanwhile (the pipe is broken): nobody would
    // ever start or remove this container, so it goes now, and the next daemon removes
    // what is left of it on disk.
    let mut out = io::stdout();
    if writeln!(out, "ok {}", monitor.child.pid)
        .and_then(|()| out.flush())
        .is_err()
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(monitor.child.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        return 1;
    }
    detach_stdio();
    monitor.run()
}

fn detach_stdio() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the stdio fds.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

struct Monitor {
    dir: PathBuf,
    child: ProcessId,
    pidfd: OwnedFd,
    /// The sync channel to the child: `start` goes down, an exec error comes up, EOF means
    /// execve succeeded.
    sync: UnixStream,
    control: UnixListener,
    attachments: attach::Attachments,
    stdout: Option<File>,
    stderr: Option<File>,
    /// The terminal's master, for resizing (containers with `tty`).
    terminal: Option<File>,
    log: LogFile,
    framer: Framer,
    cgroup: Option<Cgroup>,
    oom_baseline: u64,
    started: bool,
    /// Unmap the clean file pages set-up touched just before the next poll (`trim`): done
    /// there, nothing but the poll itself runs between the drop and the idle wait.
    trim_before_poll: bool,
    start_error: Option<String>,
}

/// The container's stdio: the child's three fds, and the monitor's ends.
struct Stdio {
    child: [Option<File>; 3],
    /// Where attach clients' input goes.
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
    terminal: Option<File>,
}

impl Stdio {
    /// Pipes, or with `tty` one terminal whose output counts as stdout.
    fn new(stdin: bool, tty: bool) -> Result<Self, String> {
        if tty {
            let (master, slave) = crate::container::terminal::open()
                .map_err(|e| format!("allocating a terminal: {e}"))?;
            let master = File::from(master);
            let slave = File::from(slave);
            let dup = |f: &File| f.try_clone().map_err(|e| format!("dup: {e}"));
            return Ok(Self {
                child: [Some(dup(&slave)?), Some(dup(&slave)?), Some(slave)],
                stdin: if stdin { Some(dup(&master)?) } else { None },
                stdout: Some(dup(&master)?),
                stderr: None,
                terminal: Some(master),
            });
        }
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (stdin_r, stdin_w) = match stdin {
            true => pipe().map(|(r, w)| (Some(r), Some(w)))?,
            false => (None, None),
        };
        Ok(Self {
            child: [stdin_r, Some(out_w), Some(err_w)],
            stdin: stdin_w,
            stdout: Some(out_r),
            stderr: Some(err_r),
            terminal: None,
        })
    }
}

fn pipe() -> Result<(File, File), String> {
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    Ok((File::from(r), File::from(w)))
}

impl Monitor {
    fn prepare(dir: &Path) -> Result<Self, String> {
        let spec: ContainerSpec = state::read_json(dir, state::CONFIG)
            .map_err(|e| format!("reading the container config: {e}"))?
            .ok_or("the container config is missing")?;
        let me = ProcessId::of(std::process::id() as i32).map_err(|e| e.to_string())?;
        state::write_json_volatile(dir, state::MONITOR, &me)
            .map_err(|e| format!("writing monitor.json: {e}"))?;
        let log = LogFile::open(&spec.log_path)
            .map_err(|e| format!("opening log {:?}: {e}", spec.log_path))?;
        let stdio = Stdio::new(spec.process.stdin, spec.process.tty)?;
        let control_path = dir.join(state::CONTROL);
        let _ = std::fs::remove_file(&control_path);
        // Bound through the directory's fd, so a state dir deeper than sun_path allows works.
        let control = listen_in(dir, state::CONTROL)?;
        let attach_listener = listen_in(dir, state::ATTACH)?;
        let (mut sync, child_sync) = UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        let cgroup = spec
            .cgroup
            .as_ref()
            .map(|c| Cgroup::at(&Hierarchy::detect(), &c.path));
        let oom_baseline = cgroup.as_ref().and_then(Cgroup::oom_kills).unwrap_or(0);

        // A new or joined PID namespace applies to our next child: the container process.
        match &spec.namespaces.pid {
            Namespace::New => unshare(CloneFlags::CLONE_NEWPID)
                .map_err(|e| format!("creating the pid namespace: {e}"))?,
            Namespace::Join(path) => {
                let f =
                    File::open(path).map_err(|e| format!("opening pid namespace {path:?}: {e}"))?;
                setns(&f, CloneFlags::CLONE_NEWPID)
                    .map_err(|e| format!("joining pid namespace {path:?}: {e}"))?;
            }
            Namespace::Host => {}
        }

        // SAFETY: the monitor is single-threaded.
        let pid = match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
            ForkResult::Child => {
                drop(sync);
                container_main(&spec, dir, stdio.child, child_sync)
            }
            ForkResult::Parent { child } => child,
        };
        drop((stdio.child, child_sync));
        let child = ProcessId::of(pid.as_raw()).map_err(|e| format!("container process: {e}"))?;
        let pidfd = pidfd_open(pid.as_raw()).map_err(|e| format!("pidfd_open: {e}"))?;
        // The child sets itself up meanwhile and waits for this before dropping privileges.
        let joined = match &cgroup {
            Some(cg) => cg.join(pid.as_raw()).map_err(|e| e.to_string()),
            None => Ok(()),
        };
        if let Err(join_error) = joined {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            // A child that failed on its own (and so left no process to move) says why.
            let mut reply = String::new();
            let _ = BufReader::new(&mut sync).read_line(&mut reply);
            let msg = match reply.trim_end().strip_prefix("error ") {
                Some(own) => own.to_owned(),
                None => join_error,
            };
            let _ = waitpid(pid, None);
            let _ = std::fs::remove_file(&control_path);
            let _ = std::fs::remove_file(dir.join(state::ATTACH));
            return Err(msg);
        }
        let _ = sync.write_all(IN_CGROUP);

        let mut reply = String::new();
        let _ = BufReader::new(&mut sync).read_line(&mut reply);
        if reply.trim_end() != "ready" {
            let _ = waitpid(pid, None);
            let _ = std::fs::remove_file(&control_path);
            let _ = std::fs::remove_file(dir.join(state::ATTACH));
            let msg = reply
                .trim_end()
                .strip_prefix("error ")
                .unwrap_or("the container process died during setup");
            return Err(msg.to_owned());
        }
        state::write_json_volatile(dir, state::PID, &child)
            .map_err(|e| format!("writing pid.json: {e}"))?;
        for f in [&stdio.stdout, &stdio.stderr].into_iter().flatten() {
            set_nonblocking(f.as_raw_fd());
        }
        Ok(Self {
            dir: dir.to_owned(),
            child,
            pidfd,
            sync,
            control,
            attachments: attach::Attachments::new(
                attach_listener,
                stdio.stdin,
                spec.process.stdin_once,
            ),
            stdout: stdio.stdout,
            stderr: stdio.stderr,
            terminal: stdio.terminal,
            log,
            framer: Framer::default(),
            cgroup,
            oom_baseline,
            started: false,
            trim_before_poll: true,
            start_error: None,
        })
    }

    /// The poll loop: control requests, output, and the exit of the container process.
    fn run(mut self) -> i32 {
        loop {
            let mut fds = vec![
                poll_fd(self.control.as_raw_fd()),
                poll_fd(self.pidfd.as_raw_fd()),
            ];
            for f in [&self.stdout, &self.stderr].into_iter().flatten() {
                fds.push(poll_fd(f.as_raw_fd()));
            }
            fds.extend(self.attachments.poll_fds());
            if std::mem::take(&mut self.trim_before_poll) {
                trim::release_clean_file_pages();
            }
            // SAFETY: fds is a valid array of pollfd for the duration of the call.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                break;
            }
            let ready = |fd: i32| fds.iter().any(|p| p.fd == fd && p.revents != 0);
            if ready(self.control.as_raw_fd()) {
                self.serve_control();
            }
            self.attachments.handle(ready);
            for stream in [Stream::Stdout, Stream::Stderr] {
                if let Some(fd) = self.pipe(stream).as_ref().map(|f| f.as_raw_fd())
                    && ready(fd)
                {
                    self.pump(stream, false);
                }
            }
            if ready(self.pidfd.as_raw_fd()) {
                break;
            }
        }
        self.finish()
    }

    fn pipe(&mut self, stream: Stream) -> &mut Option<File> {
        match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        }
    }

    /// Copies what is readable into the log; `drain` reads until nothing is left.
    fn pump(&mut self, stream: Stream, drain: bool) {
        let mut buf = [0u8; 32 * 1024];
        loop {
            let Some(file) = self.pipe(stream).as_mut() else {
                return;
            };
            let read = match file.read(&mut buf) {
                // A terminal's master reports EIO once the process side is closed.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => Ok(0),
                r => r,
            };
            match read {
                Ok(0) => {
                    let _ = self.framer.finish(stream, state::now_ns(), &mut self.log);
                    *self.pipe(stream) = None;
                    return;
                }
                Ok(n) => {
                    self.attachments.broadcast(stream, &buf[..n]);
                    // A full disk must not stop the container: the bytes are dropped.
                    let _ = self
                        .framer
                        .feed(stream, &buf[..n], state::now_ns(), &mut self.log);
                    if !drain {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    if drain {
                        // Nothing more now; a process outside the container's lifetime may
                        // still hold the pipe, so the rest is cut off as a partial line.
                        let _ = self.framer.finish(stream, state::now_ns(), &mut self.log);
                    }
                    return;
                }
            }
        }
    }

    fn serve_control(&mut self) {
        let Ok((mut conn, _)) = self.control.accept() else {
            return;
        };
        let _ = conn.set_nonblocking(false);
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut request = String::new();
        if BufReader::new(&mut conn).read_line(&mut request).is_err() {
            return;
        }
        let reply = match request.trim_end() {
            REQ_START => self.start(),
            REQ_REOPEN => self
                .log
                .reopen()
                .map_err(|e| format!("reopening the log: {e}")),
            r if r.starts_with(REQ_RESIZE) => self.resize(r),
            other => Err(format!("unknown request {other:?}")),
        };
        let started = reply.is_ok() && request.trim_end() == REQ_START;
        let line = match reply {
            Ok(()) => "ok\n".to_owned(),
            Err(msg) => format!("err {}\n", msg.replace('\n', " ")),
        };
        let _ = conn.write_all(line.as_bytes());
        // Starting touched more code; drop it again once the container runs.
        self.trim_before_poll |= started;
    }

    fn resize(&self, request: &str) -> Result<(), String> {
        let terminal = self
            .terminal
            .as_ref()
            .ok_or("the container has no terminal")?;
        let mut words = request.split(' ').skip(1).map(str::parse::<u16>);
        let (Some(Ok(rows)), Some(Ok(cols))) = (words.next(), words.next()) else {
            return Err(format!("malformed request {request:?}"));
        };
        use std::os::fd::AsFd;
        crate::container::terminal::set_size(terminal.as_fd(), rows, cols)
            .map_err(|e| format!("resizing the terminal: {e}"))
    }

    fn start(&mut self) -> Result<(), String> {
        if self.started {
            return Err("the container was already started".into());
        }
        self.started = true;
        self.sync
            .write_all(format!("{REQ_START}\n").as_bytes())
            .map_err(|e| format!("the container process is gone: {e}"))?;
        let mut reply = String::new();
        let _ = BufReader::new(&mut self.sync).read_line(&mut reply);
        if let Some(msg) = reply.trim_end().strip_prefix("error ") {
            self.start_error = Some(msg.to_owned());
            return Err(msg.to_owned());
        }
        if !reply.is_empty() {
            return Err(format!(
                "unexpected reply from the container process: {reply:?}"
            ));
        }
        // EOF: the close-on-exec socket went away with a successful execve.
        let record = StartRecord {
            started_at_ns: state::now_ns(),
        };
        state::write_json_volatile(&self.dir, state::STARTED, &record)
            .map_err(|e| format!("writing started.json: {e}"))
    }

    /// The container process exited: drain its output, then record how it ended.
    fn finish(mut self) -> i32 {
        let status = waitpid(Pid::from_raw(self.child.pid), None);
        self.pump(Stream::Stdout, true);
        self.pump(Stream::Stderr, true);
        let (exit_code, signal) = match status {
            Ok(WaitStatus::Exited(_, code)) => (code, None),
            Ok(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, Some(sig as i32)),
            _ => (255, None),
        };
        let oom_killed = self
            .cgroup
            .as_ref()
            .and_then(Cgroup::oom_kills)
            .is_some_and(|n| n > self.oom_baseline);
        let record = ExitRecord {
            exit_code,
            signal,
            finished_at_ns: state::now_ns(),
            oom_killed,
            message: self.start_error.take(),
        };
        let _ = std::fs::remove_file(self.dir.join(state::CONTROL));
        let _ = std::fs::remove_file(self.dir.join(state::ATTACH));
        self.attachments.close();
        match state::write_json(&self.dir, state::EXIT, &record) {
            Ok(()) => 0,
            Err(_) => 1,
        }
    }
}

/// The forked container process. Never returns.
fn container_main(
    spec: &ContainerSpec,
    dir: &Path,
    stdio: [Option<File>; 3],
    mut sync: UnixStream,
) -> ! {
    let fail = |sync: &mut UnixStream, msg: String| -> ! {
        let _ = sync.write_all(format!("error {}\n", msg.replace('\n', " ")).as_bytes());
        // SAFETY: leave without running the monitor's destructors.
        unsafe { libc::_exit(127) }
    };
    for (target, file) in stdio.into_iter().enumerate() {
        let file = match file.map_or_else(|| File::open("/dev/null"), Ok) {
            Ok(f) => f,
            Err(e) => fail(&mut sync, format!("opening /dev/null: {e}")),
        };
        // SAFETY: dup2 onto stdio; the source closes at execve (close-on-exec).
        if unsafe { libc::dup2(file.as_raw_fd(), target as i32) } < 0 {
            fail(&mut sync, format!("dup2: {}", io::Error::last_os_error()));
        }
    }
    let mut reader = match sync.try_clone() {
        Ok(r) => r,
        Err(e) => fail(&mut sync, format!("dup: {e}")),
    };
    let in_cgroup = move || {
        let mut line = String::new();
        let _ = BufReader::new(&mut reader).read_line(&mut line);
        match line.as_bytes() == IN_CGROUP {
            true => Ok(()),
            false => Err("the monitor did not place the process in its cgroup".to_owned()),
        }
    };
    let plan = match child::setup_container(spec, dir, in_cgroup) {
        Ok(plan) => plan,
        Err(msg) => fail(&mut sync, msg),
    };
    if sync.write_all(b"ready\n").is_err() {
        // SAFETY: the monitor is gone; leave quietly.
        unsafe { libc::_exit(1) }
    }
    // The start gate: block until the daemon says start (or the monitor goes away).
    let mut request = String::new();
    let _ = BufReader::new(&mut sync).read_line(&mut request);
    if request.trim_end() != REQ_START {
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
    let err = child::exec(&plan);
    fail(&mut sync, format!("exec {}: {err}", plan.describe()))
}

/// A listening socket `name` in `dir`, bound through the directory's fd so a state dir
/// deeper than `sun_path` allows still works; non-blocking.
fn listen_in(dir: &Path, name: &str) -> Result<UnixListener, String> {
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let dir_fd = File::open(dir).map_err(|e| format!("opening {dir:?}: {e}"))?;
    let listener = UnixListener::bind(format!("/proc/self/fd/{}/{name}", dir_fd.as_raw_fd()))
        .map_err(|e| format!("socket {path:?}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(listener)
}

fn poll_fd(fd: i32) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

fn set_nonblocking(fd: i32) {
    // SAFETY: fcntl on a valid fd.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
}

pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}
