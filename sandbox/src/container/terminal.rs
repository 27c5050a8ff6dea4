//! Pseudo-terminals for containers and exec'd processes with `tty`: the process gets the
//! slave as stdio and controlling tty, berth keeps the master. An exec'd process gets one
//! from its container's own devpts, so `/dev/pts/N` exists where it runs (`tty`, `stty`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A new pseudo-terminal on the host's devpts: (master, slave), both close-on-exec.
pub(crate) fn open() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: posix_openpt/grantpt/unlockpt/ptsname_r on an fd we own; checked results.
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 {
            return Err(io::Error::last_os_error());
        }
        let master = OwnedFd::from_raw_fd(master);
        if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 64];
        let rc = libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let slave = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(io::Error::last_os_error());
        }
        let slave = OwnedFd::from_raw_fd(slave);
        set_size(master.as_fd(), 24, 80)?;
        Ok((master, slave))
    }
}

/// A new pseudo-terminal on the devpts of the container whose process is `pid`: its
/// `/dev/pts/ptmx`, resolved inside the container's root (no symlink of the container's
/// can lead out of it) and checked to be a devpts node; the slave is opened through the
/// master (TIOCGPTPEER), never by a path the container could swap.
pub(crate) fn open_in_container(pid: i32) -> io::Result<(OwnedFd, OwnedFd)> {
    const DEVPTS_SUPER_MAGIC: libc::c_long = 0x1cd1;
    let root = std::fs::File::open(format!("/proc/{pid}/root"))?;
    let master = super::in_root::open(
        root.as_fd(),
        Path::new("dev/pts/ptmx"),
        libc::O_RDWR | libc::O_NOCTTY,
    )?;
    // SAFETY: the calls take fds we own and buffers of the right size.
    unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        if libc::fstatfs(master.as_raw_fd(), &mut fs) != 0 {
            return Err(io::Error::last_os_error());
        }
        if fs.f_type as libc::c_long != DEVPTS_SUPER_MAGIC {
            return Err(io::Error::other(
                "the container's /dev/pts/ptmx is not on a devpts file system",
            ));
        }
        if libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(io::Error::last_os_error());
        }
        let slave = libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        if slave < 0 {
            return Err(io::Error::last_os_error());
        }
        let slave = OwnedFd::from_raw_fd(slave);
        set_size(master.as_fd(), 24, 80)?;
        Ok((master, slave))
    }
}

pub(crate) fn set_size(fd: BorrowedFd<'_>, rows: u16, cols: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on a terminal fd.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
