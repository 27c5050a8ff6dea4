//! `__monitor exec <state-dir> <request-json>`: runs one more process inside a running
//! container. Started by the daemon with stdout/stderr pipes and a status pipe on fd 3; it
//! opens the container's namespaces, forks, and the child joins them and the cgroup, takes
//! the container's identity (uid, capabilities, seccomp) and execs. Status lines on fd 3:
//! `pid <n>`, then `exit <code>` or `error <message>`.

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::sched::{CloneFlags, setns};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;
use serde::{Deserialize, Serialize};

use crate::container::cgroup::{Cgroup, Hierarchy};
use crate::container::child;
use crate::container::spec::ContainerSpec;
use crate::container::state::{self, ProcessId};

/// The process to run: argv and extra `NAME=value` env entries (overriding the container's).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Run berth's sealed binary with `args` (e.g. `__wasm-run`) instead of `args[0]`.
    #[serde(default)]
    pub exec_self: bool,
}

pub(crate) const STATUS_FD: i32 = 3;
/// Last argument when stdio is a terminal the process should take as its controlling tty.
pub(crate) const TTY_FLAG: &str = "--tty";

pub(super) fn run(dir: &Path, request: Option<std::ffi::OsString>, tty: bool) -> i32 {
    // SAFETY: the daemon placed the status pipe on fd 3 for us.
    let mut status = unsafe { File::from_raw_fd(STATUS_FD) };
    // SAFETY: fcntl on our fd 3: the exec'd process must not inherit it.
    unsafe { libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    match prepare_and_fork(dir, request, tty, &mut status) {
        Ok(code) => {
            let _ = writeln!(status, "exit {code}");
            0
        }
        Err(msg) => {
            let _ = writeln!(status, "error {}", msg.replace('\n', " "));
            1
        }
    }
}

/// Namespace files of the container, except those we already share.
fn namespaces_of(pid: i32) -> Result<Vec<(File, CloneFlags)>, String> {
    let mut out = Vec::new();
    for (name, flag) in [
        ("pid", CloneFlags::CLONE_NEWPID),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        // Entering it changes our root and cwd.
        ("mnt", CloneFlags::CLONE_NEWNS),
        // Last: inside it we lose the host's privileges over the others.
        ("user", CloneFlags::CLONE_NEWUSER),
    ] {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let file = File::open(&theirs).map_err(|e| format!("opening {theirs}: {e}"))?;
        let same = match (
            file.metadata(),
            std::fs::metadata(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if !same {
            out.push((file, flag));
        }
    }
    Ok(out)
}

fn prepare_and_fork(
    dir: &Path,
    request: Option<std::ffi::OsString>,
    tty: bool,
    status: &mut File,
) -> Result<i32, String> {
    let request: ExecRequest = request
        .as_ref()
        .and_then(|r| r.to_str())
        .ok_or("missing exec request")
        .and_then(|r| serde_json::from_str(r).map_err(|_| "malformed exec request"))?;
    let spec: ContainerSpec = state::read_json(dir, state::CONFIG)
        .map_err(|e| e.to_string())?
        .ok_or("the container config is missing")?;
    let target: ProcessId = state::read_json(dir, state::PID)
        .map_err(|e| e.to_string())?
        .ok_or("the container has no process")?;
    let namespaces = namespaces_of(target.pid)?;
    // Checked after opening the namespace files, so they belong to the container.
    if !target.is_alive()
        || state::read_json::<state::StartRecord>(dir, state::STARTED)
            .ok()
            .flatten()
            .is_none()
    {
        return Err("the container is not running".into());
    }
    let cgroup = spec
        .cgroup
        .as_ref()
        .map(|c| Cgroup::at(&Hierarchy::detect(), &c.path));
    // A PID namespace applies to our children: join it here, the rest in the child.
    for (file, flag) in &namespaces {
        if *flag == CloneFlags::CLONE_NEWPID {
            setns(file, *flag).map_err(|e| format!("joining the pid namespace: {e}"))?;
        }
    }
    let helper = std::process::id() as i32;
    // SAFETY: the helper is single-threaded.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let msg = child_main(&spec, &request, tty, cgroup.as_ref(), &namespaces, helper);
            let _ = writeln!(status, "error {}", msg.replace('\n', " "));
            // SAFETY: leave without running the helper's destructors.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            let _ = writeln!(status, "pid {child}");
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                    Ok(_) => {}
                    Err(nix::Error::EINTR) => {}
                    Err(e) => return Err(format!("waiting for the exec'd process: {e}")),
                }
            }
        }
    }
}

/// Returns only with an error message.
fn child_main(
    spec: &ContainerSpec,
    request: &ExecRequest,
    tty: bool,
    cgroup: Option<&Cgroup>,
    namespaces: &[(File, CloneFlags)],
    helper: i32,
) -> String {
    child::reset_process_state();
    if tty {
        // A session of its own with the terminal on stdin as its controlling tty.
        // SAFETY: setsid and ioctl on our own stdin.
        let ok = unsafe { libc::setsid() >= 0 && libc::ioctl(0, libc::TIOCSCTTY, 0) == 0 };
        if !ok {
            return format!("taking the terminal: {}", std::io::Error::last_os_error());
        }
    }
    // If the helper is killed (timeout), the exec'd process dies with it.
    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // The helper is our parent: seen as 0 from inside a PID namespace it is not part of.
    // Anything else means it died before the death signal was armed.
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    if parent != helper && parent != 0 {
        return "the exec helper exited".into();
    }
    if let Some(cg) = cgroup
        && let Err(e) = cg.join_self()
    {
        return e.to_string();
    }
    for (file, flag) in namespaces {
        if *flag != CloneFlags::CLONE_NEWPID
            && let Err(e) = setns(file, *flag)
        {
            return format!("joining namespace {flag:?}: {e}");
        }
    }
    if let Err(e) = std::env::set_current_dir(&spec.process.cwd) {
        return format!("changing to cwd {:?}: {e}", spec.process.cwd);
    }
    let mut process = spec.process.clone();
    process.args = request.args.clone();
    process.exec_self = request.exec_self;
    process.pass_files.clear();
    let plan = match child::resolve(&process, &request.env) {
        Ok(plan) => plan,
        Err(msg) => return msg,
    };
    if let Err(msg) = child::set_identity(&process) {
        return msg;
    }
    let err = child::exec(&plan);
    format!("exec {}: {err}", plan.describe())
}
