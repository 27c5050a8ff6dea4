//! Sealed, in-memory executables, for every process berth starts that a container could
//! reach: a copy of berth's own binary (monitors, exec helpers, Wasm runners) and the
//! embedded pod init program.
//!
//! CVE-2019-5736: a process in a container that shares a PID namespace with one of ours can
//! open `/proc/<pid>/exe` and, if that is the daemon's binary on disk, overwrite it and take
//! the host the next time the daemon runs. So such processes run a memfd copy
//! whose contents are sealed (no write, grow, shrink, nor further seal changes): `exe`
//! points at a file nobody can write. Each copy is made once per daemon and shared; a
//! process is started from it through `/proc/self/fd/<fd>`.

use std::ffi::CStr;
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
    fn a_program_from_bytes_is_sealed_with_those_bytes() {
        let exe = SealedExe::from_bytes(c"test", b"\x7fELF and so on").unwrap();
        assert_eq!(exe.seals().unwrap() & SEALS, SEALS);
        let path = format!("/proc/self/fd/{}", exe.raw_fd());
        assert_eq!(std::fs::read(&path).unwrap(), b"\x7fELF and so on");
        assert!(
            std::fs::read_link(&path)
                .unwrap()
                .to_string_lossy()
                .starts_with("/memfd:test")
        );
    }
}
