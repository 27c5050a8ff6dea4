//! The pod init: the process that holds a pod's PID namespace (PID 1 in it) and reaps
//! orphans until SIGTERM or SIGINT. It is a tiny static program of its own
//! (`sandbox/pod-init/main.rs`, built by `sandbox/build.rs`), embedded here and run from a
//! sealed memfd (see `sealed_exe`), so it starts fast and stays small (0.6 MiB resident).
//!
//! It joins the pod's cgroups itself, right after it reports ready. On cgroup v1 the first
//! move of a process after a quiet spell waits for an RCU grace period (the kernel's
//! `cgroup_threadgroup_rwsem`), 10-15 ms on this kind of machine, and nothing about the
//! pod depends on where its idle reaper is accounted, so RunPodSandbox does not wait for
//! that. The daemon runs with `KillMode=process`, so the short stay in its cgroup is safe.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::sealed_exe::SealedExe;

/// Its name in `ps` (argv[0]) and in `/proc/<pid>/comm`.
pub const POD_INIT_NAME: &str = "berth-pod-init";

/// The program, as `sandbox/build.rs` built it.
static PROGRAM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/berth-pod-init"));

/// The fd on which the pod init reports that it is set up (one byte, then closed).
const READY_FD: libc::c_int = 3;
/// The pod's `cgroup.procs` files, open for writing, are fds `FIRST_CGROUP_FD..`; their
/// count is the init's first argument.
const FIRST_CGROUP_FD: libc::c_int = 4;
const _: () = assert!(FIRST_CGROUP_FD == READY_FD + 1);

/// Seals the program ahead of the first pod.
pub(crate) fn prepare() -> io::Result<()> {
    program().map(drop)
}

/// The daemon-wide sealed copy of the program, made on first use.
fn program() -> io::Result<&'static SealedExe> {
    static SEALED: OnceLock<Result<SealedExe, String>> = OnceLock::new();
    const NAME: &CStr = c"berth-pod-init";
    SEALED
        .get_or_init(|| SealedExe::from_bytes(NAME, PROGRAM).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| io::Error::other(format!("sealing the pod init program: {e}")))
}

/// A running pod init, identified by PID, start time and boot, so a reused PID (also
/// after a reboot, when start times begin again) is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitProcess {
    pub pid: i32,
    pub start_time: u64,
    /// The first 64 bits of the kernel's boot id when the init was started.
    #[serde(default)]
    pub boot: u64,
}

/// The first 64 bits of this boot's id (0 if unreadable).
fn boot() -> u64 {
    static BOOT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|id| u64::from_str_radix(&id.replace('-', "")[..16], 16).ok())
            .unwrap_or(0)
    })
}

/// Starts the pod init as a child of the calling thread, which must already be in the
/// pod's namespaces with `unshare(CLONE_NEWPID)` done (so the child is PID 1 of a new PID
/// namespace). The child starts its own session (a signal to the daemon's process group
/// does not reach it, and it outlives the daemon); once running it joins the cgroups whose
/// `cgroup.procs` files are given.
///
/// `posix_spawn` rather than fork: glibc's shares the daemon's memory with the child until
/// the exec instead of copying its page tables, a few hundred microseconds per pod.
pub(crate) fn spawn(cgroup_procs: &[impl AsRef<Path>]) -> io::Result<InitProcess> {
    let procs: Vec<OwnedFd> = cgroup_procs
        .iter()
        .map(|p| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(p.as_ref())
                .map(OwnedFd::from)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.as_ref().display())))
        })
        .collect::<io::Result<_>>()?;
    let (ready_read, ready_write) = ready_pipe()?;
    // The child gets the ready pipe at fd 3 and the cgroup.procs files from fd 4. Every
    // fd it needs is first duplicated above those slots, so placing one never overwrites
    // another (nor the program).
    let floor = FIRST_CGROUP_FD + procs.len() as libc::c_int;
    let lift = |fd: libc::c_int| -> io::Result<OwnedFd> {
        // SAFETY: fcntl on an open fd; the new fd is ours.
        match unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, floor) } {
            -1 => Err(io::Error::last_os_error()),
            new => Ok(unsafe { OwnedFd::from_raw_fd(new) }),
        }
    };
    let program = lift(self::program()?.raw_fd())?;
    let passed: Vec<OwnedFd> = std::iter::once(ready_write.as_raw_fd())
        .chain(procs.iter().map(|f| f.as_raw_fd()))
        .map(lift)
        .collect::<io::Result<_>>()?;

    let path = CString::new(format!("/proc/self/fd/{}", program.as_raw_fd()))?;
    let count = CString::new(procs.len().to_string())?;
    let name = CString::new(POD_INIT_NAME)?;
    let argv = [name.as_ptr(), count.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    let mut actions = SpawnFileActions::new()?;
    for (target, open_flags) in [
        (0, libc::O_RDONLY),
        (1, libc::O_WRONLY),
        (2, libc::O_WRONLY),
    ] {
        actions.open(target, c"/dev/null", open_flags)?;
    }
    // dup2 clears close-on-exec on the copies: the init inherits exactly these.
    for (target, fd) in (READY_FD..).zip(&passed) {
        actions.dup2(fd.as_raw_fd(), target)?;
    }
    let attr = SpawnAttr::session_leader_with_no_blocked_signals()?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: valid file actions and attributes, NUL-terminated argv and envp of live C
    // strings.
    let rc = unsafe {
        libc::posix_spawn(
            &mut pid,
            path.as_ptr(),
            &actions.0,
            &attr.0,
            argv.as_ptr().cast(),
            envp.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::from_raw_os_error(rc);
        return Err(io::Error::new(
            e.kind(),
            format!("starting the pod init: {e}"),
        ));
    }
    drop((procs, passed, program, ready_write));
    if let Err(e) = wait_ready(ready_read, pid) {
        // Still our unreaped child, so the PID is still its.
        // SAFETY: kill and waitpid on that child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(e);
    }
    // Not waited for here: berth reaps the init when it stops the pod (`terminate`), and
    // after a daemon restart the host's init does.
    let start_time = proc_start_time(pid)?
        .ok_or_else(|| io::Error::other(format!("the pod init (pid {pid}) exited at once")))?;
    Ok(InitProcess {
        pid,
        start_time,
        boot: boot(),
    })
}

/// `posix_spawn_file_actions_t`, destroyed on drop.
struct SpawnFileActions(libc::posix_spawn_file_actions_t);

impl SpawnFileActions {
    fn new() -> io::Result<Self> {
        // SAFETY: init fills the zeroed struct; it is destroyed in Drop.
        unsafe {
            let mut a = std::mem::zeroed();
            check(libc::posix_spawn_file_actions_init(&mut a))?;
            Ok(Self(a))
        }
    }

    fn open(&mut self, fd: libc::c_int, path: &'static CStr, flags: libc::c_int) -> io::Result<()> {
        // SAFETY: an initialised struct and a static C string.
        check(unsafe {
            libc::posix_spawn_file_actions_addopen(&mut self.0, fd, path.as_ptr(), flags, 0)
        })
    }

    fn dup2(&mut self, fd: libc::c_int, target: libc::c_int) -> io::Result<()> {
        // SAFETY: an initialised struct.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd, target) })
    }
}

impl Drop for SpawnFileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in new.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// `posix_spawnattr_t`, destroyed on drop.
struct SpawnAttr(libc::posix_spawnattr_t);

impl SpawnAttr {
    /// setsid in the child, and an empty signal mask whatever the calling thread blocks.
    fn session_leader_with_no_blocked_signals() -> io::Result<Self> {
        // SAFETY: init fills the zeroed struct (destroyed in Drop); the sigset is a local.
        unsafe {
            let mut a = std::mem::zeroed();
            check(libc::posix_spawnattr_init(&mut a))?;
            let mut attr = Self(a);
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            check(libc::posix_spawnattr_setsigmask(&mut attr.0, &none))?;
            let flags = libc::POSIX_SPAWN_SETSID | libc::POSIX_SPAWN_SETSIGMASK as libc::c_short;
            check(libc::posix_spawnattr_setflags(&mut attr.0, flags))?;
            Ok(attr)
        }
    }
}

impl Drop for SpawnAttr {
    fn drop(&mut self) {
        // SAFETY: initialised in the constructor.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

/// posix_spawn's functions return an error number instead of setting errno.
fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

fn ready_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fds on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two fresh fds we now own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits for the init's ready byte, so that when the pod is reported created its init
/// really runs (named, signals set up). EOF means it died first.
fn wait_ready(ready: OwnedFd, pid: i32) -> io::Result<()> {
    const READY_TIMEOUT_MS: libc::c_int = 10_000;
    let mut pfd = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll and read on an fd we own, into a local buffer.
    let (n, got) = unsafe {
        let n = libc::poll(&mut pfd, 1, READY_TIMEOUT_MS);
        let mut byte = 0u8;
        let got = if n > 0 {
            libc::read(ready.as_raw_fd(), (&mut byte as *mut u8).cast(), 1)
        } else {
            0
        };
        (n, got)
    };
    match (n, got) {
        (1.., 1) => Ok(()),
        (0, _) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the pod init (pid {pid}) did not report ready"),
        )),
        _ => Err(io::Error::other(format!(
            "the pod init (pid {pid}) exited before it was ready"
        ))),
    }
}

impl InitProcess {
    /// Started since the last reboot (records from before it name long-gone processes).
    fn this_boot(&self) -> bool {
        self.boot == 0 || self.boot == boot()
    }

    /// Whether this very process still runs (not exited, not a zombie).
    pub fn is_alive(&self) -> bool {
        self.this_boot()
            && matches!(proc_stat(self.pid), Ok(Some((state, start))) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// Kills the init (and with it every process of its PID namespace) and waits until it
    /// is gone, reaping it if it is berth's child. Killing an init that is already gone is
    /// not an error.
    pub fn terminate(&self, timeout: std::time::Duration) -> io::Result<()> {
        let pidfd = match self.pidfd()? {
            Some(fd) => fd,
            None => return Ok(()),
        };
        // SAFETY: pidfd_send_signal on an fd we own that refers to our verified process.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH) {
            return Err(io::Error::last_os_error());
        }
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the pod init (pid {}) did not exit after SIGKILL", self.pid),
            ));
        }
        self.reap(&pidfd);
        Ok(())
    }

    /// Reaps the init if it is berth's own exited child; a no-op otherwise (after a daemon
    /// restart it is not our child). Safe against PID reuse: the pidfd pins the process.
    pub fn reap(&self, pidfd: &OwnedFd) {
        // SAFETY: waitid on a pidfd we own; a non-child answers ECHILD.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            );
        }
    }

    /// A pidfd for this process, or None if it no longer exists (or the PID was reused).
    pub fn pidfd(&self) -> io::Result<Option<OwnedFd>> {
        use std::os::fd::FromRawFd;
        if !self.this_boot() {
            return Ok(None);
        }
        // SAFETY: pidfd_open returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid, 0) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ESRCH) {
                Ok(None)
            } else {
                Err(e)
            };
        }
        // SAFETY: a fresh fd we now own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // Checked after opening the pidfd: from here on the PID cannot be reused.
        match proc_stat(self.pid)? {
            Some((_, start)) if start == self.start_time => Ok(Some(fd)),
            _ => Ok(None),
        }
    }
}

/// The process that is PID 1 of the PID namespace pinned at `pin`, if it still runs.
pub(crate) fn pid_namespace_init(pin: &Path) -> Option<InitProcess> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(pin).ok()?.ino();
    let want = format!("pid:[{ino}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let in_ns = std::fs::read_link(entry.path().join("ns/pid"))
            .is_ok_and(|l| l.as_os_str() == want.as_str());
        let is_init = in_ns
            && std::fs::read_to_string(entry.path().join("status")).is_ok_and(|st| {
                st.lines()
                    .find(|l| l.starts_with("NSpid:"))
                    .is_some_and(|l| l.split_whitespace().last() == Some("1"))
            });
        if is_init && let Ok(Some(start_time)) = proc_start_time(pid) {
            return Some(InitProcess {
                pid,
                start_time,
                boot: boot(),
            });
        }
    }
    None
}

fn proc_start_time(pid: i32) -> io::Result<Option<u64>> {
    Ok(proc_stat(pid)?.map(|(_, start)| start))
}

/// (state, start time in clock ticks) from /proc/<pid>/stat; None if there is no such
/// process.
fn proc_stat(pid: i32) -> io::Result<Option<(char, u64)>> {
    let text = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(parse_stat(&text))
}

/// The comm field may hold spaces and parentheses, so fields are counted after the last ')'.
fn parse_stat(text: &str) -> Option<(char, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state come fields 4..; starttime is field 22 overall, the 20th here.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_comm_names() {
        let line = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 123456 1000 10";
        assert_eq!(parse_stat(line), Some(('S', 123456)));
        let me = proc_stat(std::process::id() as i32).unwrap().unwrap();
        assert!(me.0 != 'Z' && me.1 > 0);
    }

    #[test]
    fn a_gone_process_is_not_alive() {
        let p = InitProcess {
            pid: i32::MAX - 1,
            start_time: 1,
            boot: boot(),
        };
        assert!(!p.is_alive());
        // Ourselves, but recorded in another boot: not the same process.
        let me = std::process::id() as i32;
        let start_time = proc_start_time(me).unwrap().unwrap();
        let same = InitProcess {
            pid: me,
            start_time,
            boot: boot(),
        };
        assert!(same.is_alive());
        let other_boot = InitProcess {
            boot: boot() ^ 1,
            ..same
        };
        assert!(!other_boot.is_alive());
        assert!(other_boot.pidfd().unwrap().is_none());
        assert!(p.pidfd().unwrap().is_none());
        p.terminate(std::time::Duration::from_millis(10)).unwrap();
    }
}
