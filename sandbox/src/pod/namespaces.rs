//! Creating and pinning a pod's namespaces without a pause container, the CRI-O way.
//!
//! A dedicated std thread (never a tokio worker: namespaces belong to the thread that
//! unshares them) unshares the pod's network/UTS and IPC namespaces, sets the hostname,
//! brings `lo` up and applies the sysctls while it is inside them, and pins each one by
//! bind-mounting `/proc/thread-self/ns/<kind>` under `<pod>/ns/`. With a pod PID namespace
//! it then unshares CLONE_NEWPID, starts the pod init (PID 1 there) and pins its PID
//! namespace. The thread ends; the bind mounts keep the namespaces alive.
//!
//! The same thread creates the pod's cgroup once the pins are in place (the init joins
//! it): that way the cgroup's mkdirs overlap the caller's CNI ADD instead of preceding it.
//!
//! With a user namespace of the pod's own, a holder process creates it together with the
//! network, UTS and IPC namespaces it owns (`userns`); the thread joins those instead of
//! unsharing its own.
//!
//! The pin directory is bound onto itself and made private, so the pins never propagate
//! into other mount namespaces.

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};

use super::init::{self, InitProcess};
use super::spec::UserNamespaceSpec;
use super::{cgroup, sysctl, userns};

/// The namespace kinds a pod may pin, in the order they are created.
pub const KINDS: [&str; 5] = ["user", "net", "uts", "ipc", "pid"];

/// What to create for a pod.
#[derive(Debug, Clone)]
pub struct NamespacePlan {
    pub dir: PathBuf,
    /// A network namespace (and with it a UTS namespace with the pod's hostname).
    pub network: bool,
    pub hostname: String,
    pub ipc: bool,
    /// Validated sysctls.
    pub sysctls: Vec<(String, String)>,
    /// The pod cgroup, relative to each hierarchy's root (`cgroup::relative_path`).
    pub cgroup: PathBuf,
    /// Start a pod init in a new PID namespace, in the pod cgroup.
    pub pod_init: bool,
    /// A user namespace of the pod's own, owning the network, UTS and IPC namespaces.
    pub user_namespace: Option<UserNamespaceSpec>,
}

#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Sysctl(String),
}

fn sys<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> NamespaceError {
    let what = what.into();
    move |e| NamespaceError::Sys {
        what,
        source: e.into(),
    }
}

/// The pin file of one namespace kind.
pub fn pin_path(dir: &Path, kind: &str) -> PathBuf {
    dir.join(kind)
}

/// Namespaces being created. The thread reports once the network, UTS and IPC pins are
/// in place (`pinned`) and then goes on to create the cgroup and start the pod init, so
/// the caller can run CNI meanwhile (`finish` collects both). On failure whatever was
/// pinned or created stays for the caller's `unpin_all` and `cgroup::remove`, which it must
/// have registered before calling `start`.
pub struct PendingNamespaces {
    pinned: std::sync::mpsc::Receiver<Result<(), NamespaceError>>,
    thread: Option<std::thread::JoinHandle<Result<Created, NamespaceError>>>,
}

/// What the namespace thread made besides the pins.
#[derive(Debug, Default)]
pub struct Created {
    /// The pod cgroup's directory in every hierarchy.
    pub cgroup_dirs: Vec<PathBuf>,
    pub init: Option<InitProcess>,
}

/// Starts creating the namespaces of `plan` on a dedicated thread.
pub fn start(plan: NamespacePlan) -> Result<PendingNamespaces, NamespaceError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("pod-namespaces".into())
        .spawn(move || create_on_this_thread(&plan, &tx))
        .map_err(sys("starting the namespace thread"))?;
    Ok(PendingNamespaces {
        pinned: rx,
        thread: Some(thread),
    })
}

impl PendingNamespaces {
    /// Waits until the network, UTS and IPC namespaces are pinned (CNI can run then).
    pub fn pinned(&mut self) -> Result<(), NamespaceError> {
        match self.pinned.recv() {
            Ok(r) => r,
            // The thread ended without a word: it failed before pinning; say how.
            Err(_) => self.join().map(|_| ()),
        }
    }

    /// Waits for the whole creation: the cgroup, and the pod init if one was asked for.
    pub fn finish(mut self) -> Result<Created, NamespaceError> {
        self.join()
    }

    fn join(&mut self) -> Result<Created, NamespaceError> {
        let Some(thread) = self.thread.take() else {
            return Ok(Created::default());
        };
        thread.join().unwrap_or_else(|_| {
            Err(NamespaceError::Sys {
                what: "the namespace thread".into(),
                source: io::Error::other("panicked"),
            })
        })
    }
}

impl Drop for PendingNamespaces {
    /// Abandoned (the pod creation failed elsewhere): an init started meanwhile must not
    /// outlive the pod.
    fn drop(&mut self) {
        if let Ok(Created {
            init: Some(init), ..
        }) = self.join()
        {
            let _ = init.terminate(std::time::Duration::from_secs(5));
        }
    }
}

fn create_on_this_thread(
    plan: &NamespacePlan,
    pinned: &std::sync::mpsc::Sender<Result<(), NamespaceError>>,
) -> Result<Created, NamespaceError> {
    let started = std::time::Instant::now();
    let r = pin_own_namespaces(plan);
    let failed = r.is_err();
    let _ = pinned.send(r);
    if failed {
        return Ok(Created::default()); // the error went to `pinned`
    }
    let pinned = started.elapsed();
    let cgroup_dirs = cgroup::create(&plan.cgroup).map_err(sys("creating the pod cgroup"))?;
    if !plan.pod_init {
        tracing::debug!(?pinned, cgroup = ?started.elapsed(), "pod namespaces pinned");
        return Ok(Created {
            cgroup_dirs,
            init: None,
        });
    }
    unshare(CloneFlags::CLONE_NEWPID).map_err(sys("unsharing the PID namespace"))?;
    let init =
        init::spawn(&cgroup::procs_files(&cgroup_dirs)).map_err(sys("starting the pod init"))?;
    tracing::debug!(?pinned, init_started = ?started.elapsed(), "pod namespaces pinned");
    if let Err(e) = pin(
        &format!("/proc/{}/ns/pid", init.pid),
        &pin_path(&plan.dir, "pid"),
    ) {
        let _ = init.terminate(std::time::Duration::from_secs(5));
        return Err(e);
    }
    Ok(Created {
        cgroup_dirs,
        init: Some(init),
    })
}

/// Unshares, configures and pins the network+UTS and IPC namespaces of the calling thread.
fn pin_own_namespaces(plan: &NamespacePlan) -> Result<(), NamespaceError> {
    if !(plan.network || plan.ipc || plan.pod_init) {
        return Ok(()); // all host namespaces: nothing to pin
    }
    make_private_dir(&plan.dir)?;
    let own = [
        ("net", CloneFlags::CLONE_NEWNET, plan.network),
        ("uts", CloneFlags::CLONE_NEWUTS, plan.network),
        ("ipc", CloneFlags::CLONE_NEWIPC, plan.ipc),
    ];
    if let Some(user) = &plan.user_namespace {
        // Made and pinned by a holder process; this thread joins them to set them up.
        let kinds: Vec<&str> = own.iter().filter(|k| k.2).map(|k| k.0).collect();
        userns::create_pinned(&plan.dir, user, &kinds)?;
        for (kind, flag, _) in own.iter().filter(|k| k.2) {
            let path = pin_path(&plan.dir, kind);
            let file =
                std::fs::File::open(&path).map_err(sys(format!("opening {}", path.display())))?;
            nix::sched::setns(file, *flag)
                .map_err(sys(format!("joining the pod's {kind} namespace")))?;
        }
    } else {
        let flags = own
            .iter()
            .filter(|k| k.2)
            .fold(CloneFlags::empty(), |f, k| f | k.1);
        if !flags.is_empty() {
            unshare(flags).map_err(sys("unsharing the pod namespaces"))?;
        }
    }
    if plan.network {
        if !plan.hostname.is_empty() {
            nix::unistd::sethostname(&plan.hostname).map_err(sys("setting the hostname"))?;
        }
        loopback_up().map_err(sys("bringing lo up"))?;
    }
    for (name, value) in &plan.sysctls {
        let apply = || sysctl::apply(name, value).map_err(NamespaceError::Sysctl);
        let ipc = matches!(sysctl::namespace_of(name), Ok(sysctl::SysctlNamespace::Ipc));
        match plan.user_namespace.and_then(|u| u.uids.host_of(0)) {
            // The IPC sysctls of an IPC namespace owned by a user namespace are writable
            // by that namespace's root only (the kernel checks the euid, where network
            // sysctls check CAP_NET_ADMIN).
            Some(root) if ipc => userns::as_euid(root, apply)?,
            _ => apply()?,
        }
    }
    if plan.user_namespace.is_some() {
        return Ok(()); // pinned already
    }
    for (kind, _, wanted) in own {
        if wanted {
            pin(
                &format!("/proc/thread-self/ns/{kind}"),
                &pin_path(&plan.dir, kind),
            )?;
        }
    }
    Ok(())
}

/// `dir`, bound onto itself and made private.
fn make_private_dir(dir: &Path) -> Result<(), NamespaceError> {
    std::fs::create_dir_all(dir).map_err(sys(format!("creating {}", dir.display())))?;
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(sys(format!("binding {} onto itself", dir.display())))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys(format!("making {} private", dir.display())))
}

pub(super) fn pin(source: &str, target: &Path) -> Result<(), NamespaceError> {
    std::fs::File::create(target).map_err(sys(format!("creating {}", target.display())))?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(format!("pinning {source} at {}", target.display())))
}

/// Unmounts the private pin directory with every pin in it (a lazy unmount takes the
/// whole tree at once), then removes them. Idempotent.
pub fn unpin_all(dir: &Path) -> io::Result<()> {
    detach(dir)?;
    for kind in KINDS {
        let p = pin_path(dir, kind);
        // Not mounted any more, unless it was pinned outside a private directory.
        detach(&p)?;
        remove_file(&p)?;
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Unmounts `p` lazily; "not mounted" and "not there" are fine.
pub(crate) fn detach(p: &Path) -> io::Result<()> {
    match umount2(p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("unmounting {}: {e}", p.display()),
        )),
    }
}

fn remove_file(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Sets IFF_UP on `lo` of the calling thread's network namespace.
fn loopback_up() -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket() returns a new fd or -1.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; the name fits with its NUL; the ioctls read and write
    // only that struct.
    unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
