//! A pod's user namespace and the namespaces it owns.
//!
//! Threads cannot enter or create user namespaces (the kernel refuses both to a process
//! with more than one thread), and a namespace belongs to the user namespace of whoever
//! creates it. So a short-lived holder process is cloned with `CLONE_NEWUSER` together
//! with the pod's network, UTS and IPC flags: the kernel makes the user namespace first
//! and gives it the others. We write its ID maps, pin all of them and let it go. The
//! daemon's pod thread then joins the pinned namespaces (root of the host may) to set
//! them up, as for a pod without a user namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::namespaces::{NamespaceError, pin, pin_path};
use super::spec::UserNamespaceSpec;

/// Creates the user namespace and, owned by it, the namespaces of `kinds` (`net`, `uts`,
/// `ipc`), and pins each under `dir` (`user`, then the kinds).
pub(super) fn create_pinned(
    dir: &Path,
    spec: &UserNamespaceSpec,
    kinds: &[&str],
) -> Result<(), NamespaceError> {
    let sys = |what: &str| {
        let what = what.to_string();
        move |source: io::Error| NamespaceError::Sys { what, source }
    };
    let mut flags = libc::CLONE_NEWUSER;
    for kind in kinds {
        flags |= match *kind {
            "net" => libc::CLONE_NEWNET,
            "uts" => libc::CLONE_NEWUTS,
            "ipc" => libc::CLONE_NEWIPC,
            other => {
                return Err(NamespaceError::Sys {
                    what: format!("a {other} namespace owned by the pod's user namespace"),
                    source: io::Error::from(io::ErrorKind::Unsupported),
                });
            }
        };
    }
    let (hold_read, hold_write) = pipe().map_err(sys("creating the holder's pipe"))?;
    let holder = clone_holder(flags, &hold_read, &hold_write)
        .map_err(sys("cloning the user namespace holder"))?;
    drop(hold_read);
    let pinned = (|| {
        for (file, m) in [("uid_map", spec.uids), ("gid_map", spec.gids)] {
            let path = format!("/proc/{holder}/{file}");
            std::fs::write(&path, m.map_line()).map_err(sys(&format!("writing {path}")))?;
        }
        for kind in std::iter::once(&"user").chain(kinds) {
            pin(&format!("/proc/{holder}/ns/{kind}"), &pin_path(dir, kind))?;
        }
        Ok(())
    })();
    // EOF on its pipe ends the holder; the pins keep the namespaces.
    drop(hold_write);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(holder, &mut status, libc::__WALL) };
    pinned
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the array with two new fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Clones a child in new namespaces that waits for EOF on `read` and exits.
fn clone_holder(flags: libc::c_int, read: &OwnedFd, write: &OwnedFd) -> io::Result<libc::pid_t> {
    let (read, write) = (read.as_raw_fd(), write.as_raw_fd());
    // SAFETY: a fork-like clone (no new stack). The child of this multi-threaded process
    // makes only async-signal-safe syscalls (close, read, _exit) before it exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: see above.
        unsafe {
            libc::close(write);
            let mut byte = 0u8;
            libc::read(read, (&raw mut byte).cast(), 1);
            libc::_exit(0);
        }
    }
    Ok(pid as libc::pid_t)
}

/// Runs `f` with the calling thread's effective uid set to `uid`, then back to 0. The raw
/// syscall changes this thread only (glibc's setresuid would change every thread); the
/// effective capabilities it drops come back with euid 0.
pub(super) fn as_euid<T>(
    uid: u32,
    f: impl FnOnce() -> Result<T, NamespaceError>,
) -> Result<T, NamespaceError> {
    let set = |euid: libc::uid_t, what: &str| {
        // SAFETY: setresuid with plain integers; -1 keeps the real and saved uids.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_setresuid,
                libc::uid_t::MAX,
                euid,
                libc::uid_t::MAX,
            )
        };
        if rc != 0 {
            return Err(NamespaceError::Sys {
                what: what.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    };
    set(uid, "taking the user namespace root's uid")?;
    let result = f();
    set(0, "returning to uid 0")?;
    result
}
