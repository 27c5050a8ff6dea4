//! Sealed, in-memory executables, for every process berth starts that a container could
//! reach: a copy of berth's own binary (monitors, exec helpers, Wasm runners) and the
//! embedded pod init program.
//!
//! CVE-2019-5736: a process in a container that shares a PID namespace with one of ours can
//! open `/proc/<pid>/exe` and, if that is the daemon's binary on disk, overwrite it and take
//! the host the next time the daemon runs. So such processes run a memfd copy
//! whose contents are sealed (no write, grow, shrink, nor further seal changes): `exe`
//! points at a file nobody can write. Each copy is made once per daemon and shared; each
//! process is started with `execveat(fd, "", AT_EMPTY_PATH)`.

use std::ffi::{CStr, CString, c_char};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

/// The sealed copy of `/proc/self/exe`.
pub struct SealedExe {
    fd: OwnedFd,
}

static SHARED: OnceLock<Result<SealedExe, String>> = OnceLock::new();

/// The daemon-wide sealed copy, made on first use.
pub fn shared() -> io::Result<&'static SealedExe> {
    SHARED
        .get_or_init(|| SealedExe::create().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| io::Error::other(format!("sealing a copy of berth's executable: {e}")))
}

const SEALS: libc::c_int =
    libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;

impl SealedExe {
    /// Copies `/proc/self/exe` into a new memfd and seals it.
    pub fn create() -> io::Result<SealedExe> {
        Self::seal(c"berth", &mut File::open("/proc/self/exe")?)
    }

    /// A sealed memfd named `name` holding `program`.
    pub fn from_bytes(name: &CStr, mut program: &[u8]) -> io::Result<SealedExe> {
        Self::seal(name, &mut program)
    }

    fn seal(name: &CStr, contents: &mut impl io::Read) -> io::Result<SealedExe> {
        // SAFETY: a valid C string and flags; the result is checked.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new fd that nothing else owns.
        let mut copy = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        io::copy(contents, &mut copy)?;
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SealedExe { fd: copy.into() })
    }

    /// The memfd (close-on-exec: it does not leak into what it starts).
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The seals in force (for checks and tests).
    pub fn seals(&self) -> io::Result<libc::c_int> {
        // SAFETY: fcntl on an fd we own.
        let s = unsafe { libc::fcntl(self.fd.as_raw_fd(), libc::F_GET_SEALS) };
        if s < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(s)
        }
    }

    /// Prepares an exec of the sealed copy with `argv` and `env` ("KEY=value"), so that
    /// a forked child can run it without allocating.
    pub fn prepare(&self, argv: &[&str], env: &[&str]) -> io::Result<PreparedExec> {
        let cstrings = |v: &[&str]| -> io::Result<Vec<CString>> {
            v.iter()
                .map(|s| {
                    CString::new(*s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
                })
                .collect()
        };
        let argv = cstrings(argv)?;
        let env = cstrings(env)?;
        let pointers = |v: &[CString]| -> Vec<*const c_char> {
            v.iter()
                .map(|c| c.as_ptr())
                .chain([std::ptr::null()])
                .collect()
        };
        Ok(PreparedExec {
            fd: self.fd.as_raw_fd(),
            argv_ptrs: pointers(&argv),
            env_ptrs: pointers(&env),
            _argv: argv,
            _env: env,
        })
    }
}

/// An exec of the sealed copy, ready to run in a forked child.
pub struct PreparedExec {
    fd: RawFd,
    argv_ptrs: Vec<*const c_char>,
    env_ptrs: Vec<*const c_char>,
    // The strings the pointers point into; never touched after construction.
    _argv: Vec<CString>,
    _env: Vec<CString>,
}

// SAFETY: the pointers point into the CStrings owned by the same value, which are never
// mutated, so moving or sharing the whole is sound.
unsafe impl Send for PreparedExec {}
unsafe impl Sync for PreparedExec {}

impl PreparedExec {
    /// Replaces the calling process with the sealed copy. Async-signal-safe (no
    /// allocation), for use between fork and exec, e.g. as the last `pre_exec` hook of a
    /// `std::process::Command`. Returns only on failure.
    pub fn exec(&self) -> io::Error {
        self.exec_from(self.fd)
    }

    /// The sealed copy's fd in this process.
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// `exec` through another fd of the same sealed copy (a duplicate placed where the
    /// child's fd shuffling cannot overwrite it).
    pub fn exec_from(&self, fd: RawFd) -> io::Error {
        // SAFETY: NULL-terminated arrays of pointers to live C strings; the fd is a memfd
        // that lives as long as the daemon (the shared copy is never dropped), or a
        // duplicate of it.
        unsafe {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                c"".as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
        }
        io::Error::last_os_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_is_sealed_against_writes() {
        let exe = shared().unwrap();
        assert_eq!(exe.seals().unwrap() & SEALS, SEALS);
        // SAFETY: plain write on a valid fd.
        let n = unsafe { libc::write(exe.raw_fd(), b"x".as_ptr().cast(), 1) };
        assert_eq!(n, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
        let len = std::fs::metadata("/proc/self/exe").unwrap().len();
        let copy_len = std::fs::metadata(format!("/proc/self/fd/{}", exe.raw_fd()))
            .unwrap()
            .len();
        assert_eq!(len, copy_len);
    }

    #[test]
    fn prepare_rejects_nul_bytes() {
        let exe = shared().unwrap();
        assert!(exe.prepare(&["a\0b"], &[]).is_err());
        assert!(exe.prepare(&["berth", "x"], &["A=b"]).is_ok());
    }
}
