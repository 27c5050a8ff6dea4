//! Stopping a guest on SIGTERM / SIGINT.
//!
//! WASI has no signals, so a stop request cannot be delivered to the guest; the runner
//! ends it instead, with the exit status a native process killed by that signal reports
//! (128 + signo: 143 for SIGTERM, 130 for SIGINT). A dedicated thread waits for the
//! signals (blocked everywhere else, so no async-signal-safety puzzles) and bumps the
//! engine's epoch: a guest running Wasm code traps at its next epoch check and the main
//! thread exits cleanly. A guest blocked in a host call (sleeping in `poll_oneoff`,
//! reading stdin) never reaches one, so after a short grace the stop thread ends the
//! process itself.

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use wasmtime::Engine;

/// How long a guest gets to reach an epoch check before the process is ended anyway.
const GRACE: Duration = Duration::from_millis(100);

static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// The signal that asked the guest to stop, if one did.
pub fn requested() -> Option<i32> {
    match STOP_SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signo => Some(signo),
    }
}

extern "C" fn ignore(_: libc::c_int) {}

/// Starts the stop thread. Call before any other thread exists (Wasmtime and WASI start
/// theirs lazily), so every later thread inherits the blocked mask.
pub fn install(engine: &Engine) -> std::io::Result<()> {
    // SAFETY: plain libc signal-set manipulation on local values. The no-op handler
    // matters when the runner is a PID namespace's init: the kernel drops signals that
    // init has left at SIG_DFL, and never runs it anyway since the signals stay blocked.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signo in [libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, signo);
            libc::signal(signo, ignore as *const () as libc::sighandler_t);
        }
        match libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) {
            0 => set,
            errno => return Err(std::io::Error::from_raw_os_error(errno)),
        }
    };
    let engine = engine.clone();
    std::thread::Builder::new()
        .name("stop".into())
        .stack_size(64 << 10)
        .spawn(move || {
            let mut signo = 0;
            // SAFETY: `set` is a valid, initialised signal set.
            while unsafe { libc::sigwait(&set, &mut signo) } != 0 {}
            STOP_SIGNAL.store(signo, Ordering::SeqCst);
            engine.increment_epoch();
            std::thread::sleep(GRACE);
            // The main thread may hold the stdout lock in a blocked write: no flushing exit.
            // SAFETY: _exit ends the process without touching shared state.
            unsafe { libc::_exit(128 + signo) }
        })?;
    Ok(())
}
