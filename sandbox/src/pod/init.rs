//! The pod init: the process that holds a pod's PID namespace (PID 1 in it) and reaps
//! orphans until SIGTERM or SIGINT. It is a tiny static program of its own
//! (`sandbox/pod-init/main.rs`, built by `sandbox/build.rs`), embedded here and run from a
//! sealed memfd (see `sealed_exe`), so it starts fast and holds a few KiB per pod.
//!
//! It joins the pod's cgroups itself, right after it reports ready. On cgroup v1 the first
//! move of a process after a quiet spell waits for an RCU grace period (the kernel's
//! `cgroup_threadgroup_rwsem`), 10-15 ms on this kind of machine, and nothing about the
//! pod depends on where its idle reaper is accounted, so RunPodSandbox does not wait for
//! that. The daemon runs with `KillMode=process`, so the short stay in its cgroup is safe.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
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
/// More cgroup v1 hierarchies than any kernel has (the fd table is built without
/// allocating, between fork and exec).
const MAX_HIERARCHIES: usize = 32;
const _: () = assert!(FIRST_CGROUP_FD == READY_FD + 1);

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
pub(crate) fn spawn(cgroup_procs: &[impl AsRef<Path>]) -> io::Result<InitProcess> {
    let count = cgroup_procs.len().to_string();
    let exec = program()?.prepare(&[POD_INIT_NAME, &count], &[])?;
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
    if procs.len() > MAX_HIERARCHIES {
        return Err(io::Error::other(format!(
            "{} cgroup hierarchies; the pod init takes at most {MAX_HIERARCHIES}",
            procs.len()
        )));
    }
    let proc_fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
    let (ready_read, ready_write) = ready_pipe()?;
    let ready_fd = ready_write.as_raw_fd();
    // The program is never executed: the last pre_exec hook replaces the child with the
    // sealed copy and returns only its error.
    let mut cmd = Command::new("/proc/self/exe");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .current_dir("/");
    // SAFETY: between fork and exec the hook only makes syscalls and builds io::Errors
    // from errno (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // Lift every fd still needed above the slots the init gets first, so no dup2
            // below overwrites one of them.
            let floor = FIRST_CGROUP_FD + proc_fds.len() as libc::c_int;
            let exe = libc::fcntl(exec.fd(), libc::F_DUPFD_CLOEXEC, floor);
            if exe < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut lifted = [0; MAX_HIERARCHIES + 1];
            for (slot, fd) in lifted.iter_mut().zip([ready_fd].iter().chain(&proc_fds)) {
                *slot = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, floor);
                if *slot < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            // dup2 clears close-on-exec on the copies: the init inherits exactly these.
            for (target, fd) in (READY_FD..).zip(&lifted[..=proc_fds.len()]) {
                if libc::dup2(*fd, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Err(exec.exec_from(exe))
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("starting the pod init: {e}")))?;
    drop(procs);
    drop(ready_write);
    let pid = child.id() as i32;
    if let Err(e) = wait_ready(ready_read, pid) {
        // Still our unreaped child, so the PID is still its.
        // SAFETY: kill and waitpid on that child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        return Err(e);
    }
    // The Child handle is dropped without waiting: berth reaps the init when it stops the
    // pod (`terminate`), and after a daemon restart the host's init does.
    let start_time = proc_start_time(pid)?
        .ok_or_else(|| io::Error::other(format!("the pod init (pid {pid}) exited at once")))?;
    Ok(InitProcess {
        pid,
        start_time,
        boot: boot(),
    })
}

fn ready_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    use std::os::fd::FromRawFd;
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
