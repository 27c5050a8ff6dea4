//! berth-pod-init: PID 1 of a pod's PID namespace. It holds the namespace open and reaps
//! the orphans that get reparented to it, until SIGTERM or SIGINT.
//!
//! A program of its own, with no Rust std and a static libc, so it execs in a fraction of a
//! millisecond and holds about 0.6 MiB resident, 0.2 MiB PSS per pod. `sandbox/build.rs`
//! compiles it; the daemon embeds it and runs it from a sealed memfd (`sandbox::pod::init`).
//!
//! Contract with `sandbox::pod::init::spawn`: fd 3 is the ready pipe (one byte, then it is
//! closed); fds 4.. are the pod's `cgroup.procs` files, and argv[1] says how many.

#![no_std]
#![no_main]

use core::ffi::{c_char, c_int, c_ulong, c_void};
use core::ptr::null_mut;

const READY_FD: c_int = 3;
const FIRST_CGROUP_FD: c_int = 4;

// Linux's values, the same on every architecture berth builds for.
const PR_SET_NAME: c_int = 15;
const SIG_BLOCK: c_int = 0;
const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

/// glibc's sigset_t (1024 bits).
#[repr(C)]
struct SigSet([c_ulong; 1024 / (8 * core::mem::size_of::<c_ulong>())]);

#[link(name = "c")]
unsafe extern "C" {
    fn prctl(option: c_int, ...) -> c_int;
    fn chdir(path: *const c_char) -> c_int;
    fn sigemptyset(set: *mut SigSet) -> c_int;
    fn sigaddset(set: *mut SigSet, sig: c_int) -> c_int;
    fn sigprocmask(how: c_int, set: *const SigSet, old: *mut SigSet) -> c_int;
    fn sigwaitinfo(set: *const SigSet, info: *mut c_void) -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn write(fd: c_int, buf: *const c_void, n: usize) -> isize;
    fn close(fd: c_int) -> c_int;
    fn _exit(code: c_int) -> !;
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // SAFETY: ends the process.
    unsafe { _exit(101) }
}

#[unsafe(no_mangle)]
extern "C" fn main(argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY: libc calls on locals and on the fds of the contract above; argv holds argc
    // NUL-terminated strings.
    unsafe {
        prctl(PR_SET_NAME, c"berth-pod-init".as_ptr());
        // Keep no directory of the daemon's busy.
        chdir(c"/".as_ptr());
        // As PID 1 of a namespace, a signal with the default action is dropped; a blocked
        // one is queued, so block the ones we act on and take them synchronously.
        let mut set = SigSet([0; _]);
        sigemptyset(&mut set);
        for sig in [SIGTERM, SIGINT, SIGCHLD] {
            sigaddset(&mut set, sig);
        }
        sigprocmask(SIG_BLOCK, &set, null_mut());
        write(READY_FD, b"r".as_ptr().cast(), 1);
        close(READY_FD);

        // Only after ready: on cgroup v1 the first move after a quiet spell waits for an
        // RCU grace period, and where the reaper is accounted changes nothing about the
        // pod, so RunPodSandbox does not wait for it. A failed move is not worth dying
        // (and taking the PID namespace) for.
        let cgroups = if argc > 1 { parse(*argv.add(1)) } else { 0 };
        for fd in FIRST_CGROUP_FD..FIRST_CGROUP_FD + cgroups {
            // "0" moves the writing process itself.
            write(fd, b"0".as_ptr().cast(), 1);
            close(fd);
        }

        loop {
            match sigwaitinfo(&set, null_mut()) {
                SIGCHLD => while waitpid(-1, null_mut(), WNOHANG) > 0 {},
                SIGTERM | SIGINT => _exit(0),
                _ => {}
            }
        }
    }
}

/// A small decimal number (0 for anything else).
unsafe fn parse(mut s: *const c_char) -> c_int {
    let mut n: c_int = 0;
    // SAFETY: `s` is NUL-terminated.
    unsafe {
        while (*s as u8).is_ascii_digit() && n < 1000 {
            n = n * 10 + (*s as u8 - b'0') as c_int;
            s = s.add(1);
        }
    }
    n
}
