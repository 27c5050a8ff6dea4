//! What happens inside the forked container process before execve. This runs in a child
//! of the single-threaded monitor, so allocating and using std is safe here. Errors are
//! plain messages: they cross a process boundary to the caller.
//!
//! Order: namespaces and cgroup, bind sources opened on the host, image volumes' trees
//! cloned from their overlays, the rootfs overlay, pivot_root, system mounts, bind mounts,
//! device nodes and image volumes, masked and read-only paths, hostname, cwd,
//! executable lookup, the pod's user namespace, rlimits, bounding set, uid/gid,
//! capabilities, no_new_privs, seccomp. The fd sweep and execve come last, after the start
//! gate.
//!
//! With a user namespace, everything up to joining it runs with the host's privileges in a
//! mount namespace the host's user namespace owns (so the container can never unmount
//! what hides the host); the layers, volumes and pod files are idmapped into the user
//! namespace, so files of host root are its root's.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::unistd::{Gid, Uid};

use super::caps::{self, CapSet};
use super::seccomp;
use super::spec::{BindMount, ContainerSpec, DeviceNode, Namespace, Process, Propagation};

pub(crate) type SetupResult<T> = Result<T, String>;

trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> SetupResult<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> SetupResult<T> {
        self.map_err(|e| format!("{}: {e}", what()))
    }
}

/// A resolved execve call.
pub(crate) struct ExecPlan {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// For `exec_self`: argv and env for the registered entry point, run in this process.
    in_process: Option<(Vec<String>, Vec<String>)>,
    /// `pass_files`, to become fds 3, 4, … at exec.
    passed: Vec<OwnedFd>,
}

/// Opens `pass_files` while the host's files are still visible (before pivot_root).
pub(crate) fn open_pass_files(p: &Process) -> SetupResult<Vec<OwnedFd>> {
    p.pass_files
        .iter()
        .map(|f| {
            std::fs::OpenOptions::new()
                .read(!f.writable)
                .write(f.writable)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&f.path)
                .map(OwnedFd::from)
                .context(|| format!("opening {:?} for the process", f.path))
        })
        .collect()
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Common first steps of every process we place in a container.
pub(crate) fn reset_process_state() {
    // SAFETY: plain libc calls on the current (single-threaded) process.
    unsafe {
        // Rust ignores SIGPIPE and ignored signals survive execve; the workload expects default.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        // Until execve replaces our image, nothing in the container may open our
        // /proc/<pid>/exe or ptrace us (the CVE-2019-5736 class). execve resets this.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::umask(0o022);
    }
}

/// Builds the container around the calling process. The PID namespace was already chosen by
/// the monitor (it applies to children). The monitor moves us into the container's cgroup
/// meanwhile (the first cgroup v1 migration waits ~10 ms for an RCU grace period, so it runs
/// in parallel with our mounts); `in_cgroup` returns once that is done.
pub(crate) fn setup_container(
    spec: &ContainerSpec,
    state_dir: &Path,
    in_cgroup: impl FnOnce() -> SetupResult<()>,
) -> SetupResult<ExecPlan> {
    reset_process_state();
    nix::unistd::setsid().context(|| "setsid".into())?;
    if spec.process.tty {
        // SAFETY: ioctl on our stdin, which is the terminal's slave.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
            return Err(format!(
                "taking the terminal: {}",
                io::Error::last_os_error()
            ));
        }
    }
    enter_namespaces(spec)?;
    // Joined last, once everything that needs the host's privileges is done.
    let userns = spec
        .user_namespace
        .as_ref()
        .map(|u| {
            File::open(&u.path)
                .map(|ns| (u, ns))
                .context(|| format!("opening user namespace {:?}", u.path))
        })
        .transpose()?;

    let binds = open_bind_sources(spec, userns.as_ref().map(|(_, ns)| ns))?;
    let passed = open_pass_files(&spec.process)?;
    // Our mounts must not leak to the host, and pivot_root refuses shared mounts. Volumes
    // that propagate (rslave/rshared) were cloned above while still peers of the host's.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .context(|| "making / a slave mount".into())?;
    let image_volumes = open_image_volumes(spec, state_dir)?;
    let rootfs = state_dir.join(super::state::ROOTFS);
    match &userns {
        Some((user, ns)) => {
            let lower = idmapped_layers(&spec.rootfs.lower, ns, state_dir)?;
            let upper = &spec.rootfs.upper;
            std::fs::create_dir_all(upper).context(|| format!("creating {upper:?}"))?;
            // The writable layer's root is the container's / : its root owns it.
            std::os::unix::fs::chown(upper, Some(user.root_uid), Some(user.root_gid))
                .context(|| format!("chown {upper:?} to the container's root"))?;
            mount_overlay(&lower, spec, &rootfs)?;
        }
        None => mount_overlay(&spec.rootfs.lower, spec, &rootfs)?,
    }
    pivot_into(&rootfs)?;

    mount_system(binds.host_dev, binds.shm)?;
    for (m, fd) in spec.mounts.iter().zip(binds.volumes) {
        attach_bind(m, &fd)?;
    }
    for d in &spec.devices {
        make_device(d)?;
    }
    for (v, fd) in spec.image_volumes.iter().zip(image_volumes) {
        let m = BindMount {
            source: v.sub_path.clone().unwrap_or_else(|| "/".into()),
            destination: v.destination.clone(),
            readonly: true,
            // Read-only already: the clone was made so in `open_image_volumes`.
            recursive_readonly: true,
            propagation: Propagation::Private,
        };
        attach_bind(&m, &fd)?;
    }
    for path in &spec.masked_paths {
        mask(path)?;
    }
    for path in &spec.readonly_paths {
        make_readonly(path)?;
    }
    if spec.rootfs.readonly {
        remount_readonly(Path::new("/")).context(|| "making the rootfs read-only".into())?;
    }
    if spec.namespaces.uts == Namespace::New
        && let Some(h) = &spec.hostname
    {
        nix::unistd::sethostname(h).context(|| format!("setting hostname {h:?}"))?;
    }
    std::fs::create_dir_all(&spec.process.cwd)
        .and_then(|()| std::env::set_current_dir(&spec.process.cwd))
        .context(|| format!("changing to cwd {:?}", spec.process.cwd))?;
    let mut plan = resolve(&spec.process, &[])?;
    plan.passed = passed;
    in_cgroup()?;
    // The cgroup namespace is rooted where we are now: in the container's cgroup.
    if spec.namespaces.cgroup == Namespace::New {
        unshare(CloneFlags::CLONE_NEWCGROUP).context(|| "creating the cgroup namespace".into())?;
    }
    if let Some((_, ns)) = &userns {
        setns(ns, CloneFlags::CLONE_NEWUSER)
            .context(|| "joining the pod's user namespace".into())?;
    }
    set_identity(&spec.process)?;
    Ok(plan)
}

fn enter_namespaces(spec: &ContainerSpec) -> SetupResult<()> {
    let ns = &spec.namespaces;
    let kinds = [
        (&ns.net, CloneFlags::CLONE_NEWNET, "net"),
        (&ns.ipc, CloneFlags::CLONE_NEWIPC, "ipc"),
        (&ns.uts, CloneFlags::CLONE_NEWUTS, "uts"),
        (&ns.cgroup, CloneFlags::CLONE_NEWCGROUP, "cgroup"),
        (&ns.mnt, CloneFlags::CLONE_NEWNS, "mnt"),
    ];
    let mut new = CloneFlags::empty();
    for (choice, flag, name) in kinds {
        match choice {
            // A new cgroup namespace waits until we are in the container's cgroup.
            Namespace::New if flag == CloneFlags::CLONE_NEWCGROUP => {}
            Namespace::New => new |= flag,
            Namespace::Join(path) => {
                let file =
                    File::open(path).context(|| format!("opening {name} namespace {path:?}"))?;
                setns(&file, flag).context(|| format!("joining {name} namespace {path:?}"))?;
            }
            Namespace::Host => {}
        }
    }
    unshare(new).context(|| "creating namespaces".into())
}

struct BindSources {
    /// The host's /dev, for privileged containers.
    host_dev: Option<OwnedFd>,
    shm: Option<OwnedFd>,
    volumes: Vec<OwnedFd>,
}

/// Clones each bind source as a detached mount while host paths are still visible; they are
/// attached after pivot_root, where destinations resolve inside the container's root (an
/// image symlink cannot redirect a mount onto the host).
/// With a user namespace, each clone is idmapped into it (files of host root appear as the
/// container's root); recursive read-only is set on the clone, so the tree is never
/// writable where the container sees it.
fn open_bind_sources(spec: &ContainerSpec, userns: Option<&File>) -> SetupResult<BindSources> {
    let clone = |source: &Path, recursive: bool, rro: bool| -> SetupResult<OwnedFd> {
        let fd = clone_tree(source, recursive)?;
        let mut attr = MountAttr::default();
        if rro {
            attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
        }
        if let Some(ns) = userns {
            attr.attr_set |= libc::MOUNT_ATTR_IDMAP;
            attr.userns_fd = ns.as_raw_fd() as u64;
        }
        if attr.attr_set != 0 {
            set_tree_attr(&fd, &attr, recursive).context(|| {
                let what = match (rro, userns.is_some()) {
                    (true, true) => "idmapping and making recursively read-only",
                    (true, false) => "making recursively read-only",
                    _ => "idmapping",
                };
                format!("{what} {source:?}")
            })?;
        }
        Ok(fd)
    };
    let shm = spec
        .shm
        .as_deref()
        .map(|p| clone(p, false, false))
        .transpose()?;
    let volumes = spec
        .mounts
        .iter()
        .map(|m| clone(&m.source, true, m.recursive_readonly))
        .collect::<SetupResult<_>>()?;
    let host_dev = if spec.privileged {
        Some(clone_tree(Path::new("/dev"), true)?)
    } else {
        None
    };
    Ok(BindSources {
        host_dev,
        shm,
        volumes,
    })
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn clone_tree(source: &Path, recursive: bool) -> SetupResult<OwnedFd> {
    let c = cpath(source)?;
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: a valid C string; the returned fd is owned below.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(format!(
            "bind source {source:?}: {}",
            io::Error::last_os_error()
        ));
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn move_tree(fd: &OwnedFd, target: &Path) -> io::Result<()> {
    let empty = c"";
    let c = CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: fd is a detached mount from open_tree; both strings are valid.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
#[derive(Default)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// mount_setattr on the mount behind `fd` (a clone from `clone_tree`) and, with
/// `recursive`, every mount below it.
fn set_tree_attr(fd: &OwnedFd, attr: &MountAttr, recursive: bool) -> io::Result<()> {
    let empty = c"";
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: fd is a mount fd; the attr struct is valid for the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            flags,
            attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Where image volumes' overlays are mounted while their (sub-)trees are cloned (in the
/// container's mount namespace only, which no longer propagates to the host).
const IMAGE_VOLUMES: &str = "image-volumes";

/// Each image volume as a detached, read-only mount: the layers as a lower-only overlay,
/// then the sub-path resolved inside it (no symlink of the image's leads out) and cloned.
/// In a pod with a user namespace the files keep their host owners (shown as the
/// overflow ids); the mount is read-only either way.
fn open_image_volumes(spec: &ContainerSpec, state_dir: &Path) -> SetupResult<Vec<OwnedFd>> {
    let staging = state_dir.join(IMAGE_VOLUMES);
    spec.image_volumes
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let at = staging.join(i.to_string());
            std::fs::create_dir_all(&at).context(|| format!("creating {at:?}"))?;
            let lower = v
                .layers
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(":");
            mount(
                Some("overlay"),
                &at,
                Some("overlay"),
                MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
                Some(format!("lowerdir={lower}").as_str()),
            )
            .context(|| format!("mounting the image of volume {:?}", v.destination))?;
            let root = File::open(&at).context(|| format!("opening {at:?}"))?;
            let sub = v.sub_path.as_deref().unwrap_or(Path::new("."));
            let target = super::in_root::open(root.as_fd(), sub, libc::O_PATH)
                .context(|| format!("image volume {:?}: sub-path {sub:?}", v.destination))?;
            let fd = clone_fd_tree(&target)
                .context(|| format!("cloning image volume {:?}", v.destination))?;
            let ro = MountAttr {
                attr_set: libc::MOUNT_ATTR_RDONLY,
                ..MountAttr::default()
            };
            set_tree_attr(&fd, &ro, false)
                .context(|| format!("making image volume {:?} read-only", v.destination))?;
            drop((target, root));
            umount2(&at, MntFlags::MNT_DETACH).context(|| format!("detaching {at:?}"))?;
            Ok(fd)
        })
        .collect()
}

/// open_tree(OPEN_TREE_CLONE) of what `fd` (an O_PATH fd) names.
fn clone_fd_tree(fd: &OwnedFd) -> io::Result<OwnedFd> {
    let empty = c"";
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as u32;
    // SAFETY: a valid fd and empty path with AT_EMPTY_PATH; the result is owned below.
    let out = unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), empty.as_ptr(), flags) };
    if out < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(out as i32) })
}

fn cpath(p: &Path) -> SetupResult<CString> {
    CString::new(p.as_os_str().as_bytes()).context(|| format!("path {p:?}"))
}

/// Where idmapped views of the image layers are attached while the overlay is mounted
/// (in the container's mount namespace only; gone with the old root after pivot_root).
const IDMAPPED_LAYERS: &str = "idmapped-layers";

/// An idmapped view of each layer, so the image's files owned by host root appear as the
/// container's root inside the user namespace; returns their paths, in order.
fn idmapped_layers(
    layers: &[PathBuf],
    userns: &File,
    state_dir: &Path,
) -> SetupResult<Vec<PathBuf>> {
    let staging = state_dir.join(IDMAPPED_LAYERS);
    std::fs::create_dir_all(&staging).context(|| format!("creating {staging:?}"))?;
    mount(
        Some("tmpfs"),
        &staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=700,size=64k"),
    )
    .context(|| format!("mounting a tmpfs on {staging:?}"))?;
    let attr = MountAttr {
        attr_set: libc::MOUNT_ATTR_IDMAP,
        userns_fd: userns.as_raw_fd() as u64,
        ..MountAttr::default()
    };
    layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            let fd = clone_tree(layer, false)?;
            set_tree_attr(&fd, &attr, false).context(|| format!("idmapping layer {layer:?}"))?;
            let at = staging.join(i.to_string());
            std::fs::create_dir(&at).context(|| format!("creating {at:?}"))?;
            move_tree(&fd, &at).context(|| format!("attaching layer {layer:?} at {at:?}"))?;
            Ok(at)
        })
        .collect()
}

fn mount_overlay(lower: &[PathBuf], spec: &ContainerSpec, target: &Path) -> SetupResult<()> {
    let r = &spec.rootfs;
    let join = |paths: &[PathBuf]| {
        paths
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(":")
    };
    for p in lower.iter().chain([&r.upper, &r.work]) {
        let s = p.to_string_lossy();
        if s.contains([':', ',']) {
            return Err(format!("overlay path {p:?} contains ':' or ','"));
        }
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        join(lower),
        r.upper.display(),
        r.work.display()
    );
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .context(|| format!("mounting the rootfs overlay ({options})"))
}

fn pivot_into(rootfs: &Path) -> SetupResult<()> {
    std::env::set_current_dir(rootfs).context(|| format!("entering {rootfs:?}"))?;
    // pivot_root(".", ".") stacks the old root on top of the new one; detaching "." then
    // drops the old root without needing a directory for it.
    nix::unistd::pivot_root(".", ".").context(|| "pivot_root".into())?;
    umount2(".", MntFlags::MNT_DETACH).context(|| "detaching the old root".into())?;
    std::env::set_current_dir("/").context(|| "chdir /".into())
}

fn mount_at(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> SetupResult<()> {
    std::fs::create_dir_all(target).context(|| format!("creating {target}"))?;
    mount(Some(source), target, Some(fstype), flags, data)
        .context(|| format!("mounting {fstype} on {target}"))
}

fn mount_system(host_dev: Option<OwnedFd>, shm: Option<OwnedFd>) -> SetupResult<()> {
    let secure = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_at("proc", "/proc", "proc", secure, None)?;
    let sys_flags = if host_dev.is_some() {
        secure
    } else {
        secure | MsFlags::MS_RDONLY
    };
    mount_at("sysfs", "/sys", "sysfs", sys_flags, None)?;
    match host_dev {
        Some(fd) => {
            std::fs::create_dir_all("/dev").context(|| "creating /dev".into())?;
            move_tree(&fd, Path::new("/dev")).context(|| "binding the host's /dev".into())?;
        }
        None => populate_dev()?,
    }
    mount_at(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?;
    match shm {
        Some(fd) => {
            std::fs::create_dir_all("/dev/shm").context(|| "creating /dev/shm".into())?;
            move_tree(&fd, Path::new("/dev/shm"))
                .context(|| "binding the pod's /dev/shm".into())?;
        }
        None => mount_at(
            "shm",
            "/dev/shm",
            "tmpfs",
            secure,
            Some("mode=1777,size=65536k"),
        )?,
    }
    mount_at("mqueue", "/dev/mqueue", "mqueue", secure, None)?;
    Ok(())
}

/// A minimal /dev: a tmpfs with the standard character devices and links.
fn populate_dev() -> SetupResult<()> {
    mount_at(
        "tmpfs",
        "/dev",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = format!("/dev/{name}");
        mknod(
            path.as_str(),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .context(|| format!("creating {path}"))?;
        // mknod is subject to the umask.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .context(|| format!("chmod {path}"))?;
    }
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
        ("/dev/core", "/proc/kcore"),
    ] {
        std::os::unix::fs::symlink(target, link).context(|| format!("symlink {link}"))?;
    }
    Ok(())
}

/// A device node of the container's, with its owner and mode. One that exists already (a
/// privileged container sees the host's /dev) is left as it is.
fn make_device(d: &DeviceNode) -> SetupResult<()> {
    let path = &d.path;
    if std::fs::symlink_metadata(path).is_ok() {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).context(|| format!("creating {parent:?}"))?;
    }
    let kind = if d.kind == 'b' {
        SFlag::S_IFBLK
    } else {
        SFlag::S_IFCHR
    };
    mknod(
        path,
        kind,
        Mode::from_bits_truncate(d.mode),
        makedev(d.major, d.minor),
    )
    .context(|| format!("creating device {path:?}"))?;
    std::os::unix::fs::chown(path, Some(d.uid), Some(d.gid))
        .context(|| format!("chown device {path:?}"))?;
    // mknod is subject to the umask.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(d.mode & 0o7777))
        .context(|| format!("chmod device {path:?}"))
}

fn attach_bind(m: &BindMount, fd: &OwnedFd) -> SetupResult<()> {
    let dest = &m.destination;
    // Host paths are out of sight now: the source's type comes from its clone.
    if fd_is_dir(fd) {
        std::fs::create_dir_all(dest).context(|| format!("creating mount point {dest:?}"))?;
    } else {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).context(|| format!("creating {parent:?}"))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(dest)
            .context(|| format!("creating mount point {dest:?}"))?;
    }
    // A recursively read-only clone is read-only already (`open_bind_sources`).
    move_tree(fd, dest).context(|| format!("bind mount {:?} on {dest:?}", m.source))?;
    if m.readonly && !m.recursive_readonly {
        remount_readonly(dest).context(|| format!("making {dest:?} read-only"))?;
    }
    let propagation = match m.propagation {
        Propagation::Private => MsFlags::MS_PRIVATE,
        Propagation::HostToContainer => MsFlags::MS_SLAVE,
        Propagation::Bidirectional => MsFlags::MS_SHARED,
    };
    mount(
        None::<&str>,
        dest,
        None::<&str>,
        MsFlags::MS_REC | propagation,
        None::<&str>,
    )
    .context(|| format!("setting propagation of {dest:?}"))
}

fn fd_is_dir(fd: &OwnedFd) -> bool {
    // SAFETY: fstat on a valid fd into a zeroed struct.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd.as_raw_fd(), &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// Keeps the flags the kernel locks on a mount (nosuid/nodev/noexec) when adding ro.
fn remount_readonly(path: &Path) -> nix::Result<()> {
    let current = nix::sys::statvfs::statvfs(path)?.flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    use nix::sys::statvfs::FsFlags;
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.contains(fs) {
            flags |= ms;
        }
    }
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
}

fn mask(path: &Path) -> SetupResult<()> {
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("masking {path:?}: {e}")),
    };
    if md.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            Some("size=0"),
        )
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    }
    .context(|| format!("masking {path:?}"))
}

fn make_readonly(path: &Path) -> SetupResult<()> {
    match mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        Err(nix::Error::ENOENT) => return Ok(()),
        r => r.context(|| format!("binding {path:?}"))?,
    }
    remount_readonly(path).context(|| format!("making {path:?} read-only"))
}

/// Finds `args[0]` like execvp would, in the container's root, and builds the execve call.
/// `extra_env` entries override the process env (exec_sync).
pub(crate) fn resolve(process: &Process, extra_env: &[String]) -> SetupResult<ExecPlan> {
    let argv0 = process.args.first().ok_or("process args are empty")?;
    let mut env: Vec<String> = process.env.clone();
    for e in extra_env {
        let name = e.split('=').next().unwrap_or_default();
        env.retain(|old| old.split('=').next() != Some(name));
        env.push(e.clone());
    }
    if process.exec_self && super::self_entry().is_none() {
        return Err("this process has no in-process entry point to run".into());
    }
    let path = if process.exec_self {
        PathBuf::from("/proc/self/exe")
    } else if argv0.contains('/') {
        std::fs::metadata(argv0).map_err(|e| format!("exec: {argv0:?}: stat {argv0}: {e}"))?;
        PathBuf::from(argv0)
    } else {
        let search = env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        search
            .split(':')
            .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(argv0))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| format!("exec: {argv0:?}: executable file not found in $PATH"))?
    };
    let cstrings = |v: &[String]| -> SetupResult<Vec<CString>> {
        v.iter()
            .map(|s| CString::new(s.as_bytes()).context(|| format!("{s:?}")))
            .collect()
    };
    Ok(ExecPlan {
        path: cpath(&path)?,
        argv: cstrings(&process.args)?,
        envp: cstrings(&env)?,
        in_process: process
            .exec_self
            .then(|| (process.args.clone(), env.clone())),
        passed: Vec::new(),
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
}

/// rlimits, oom_score_adj, bounding set, groups, uid/gid, capabilities, no_new_privs and
/// seccomp, in the order that keeps each step permitted.
pub(crate) fn set_identity(p: &Process) -> SetupResult<()> {
    for r in &p.rlimits {
        let limit = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(r.resource as _, &limit) } != 0 {
            return Err(format!(
                "setrlimit {}: {}",
                r.resource,
                io::Error::last_os_error()
            ));
        }
    }
    if let Some(adj) = p.oom_score_adj {
        match std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
            Ok(()) => {}
            // Lowering the score needs CAP_SYS_RESOURCE, which some hosts withhold from root.
            Err(e) if adj < 0 && matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM)) => {}
            Err(e) => return Err(format!("setting oom_score_adj {adj}: {e}")),
        }
    }
    let caps = CapSet::from_names(&p.capabilities).map_err(|e| e.to_string())?;
    let filter = match (&p.seccomp_profile, p.seccomp_default) {
        (Some(profile), _) => Some(profile.compile().map_err(|e| e.to_string())?),
        (None, true) => Some(seccomp::compile_default(caps).map_err(|e| e.to_string())?),
        (None, false) => None,
    };
    caps::drop_bounding(caps).context(|| "dropping capabilities from the bounding set".into())?;
    // Without no_new_privs, loading a filter needs CAP_SYS_ADMIN, so it goes first; the
    // profile allows the remaining setup calls.
    if !p.no_new_privs
        && let Some(f) = &filter
    {
        seccomp::load(f).map_err(|e| e.to_string())?;
    }
    let groups: Vec<Gid> = p
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).context(|| "setgroups".into())?;
    nix::unistd::setgid(Gid::from_raw(p.gid)).context(|| format!("setgid {}", p.gid))?;
    nix::unistd::setuid(Uid::from_raw(p.uid)).context(|| format!("setuid {}", p.uid))?;
    caps::apply(caps).context(|| "setting capabilities".into())?;
    if p.no_new_privs {
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("no_new_privs: {}", io::Error::last_os_error()));
        }
        if let Some(f) = &filter {
            seccomp::load(f).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Marks every fd but stdio close-on-exec (CVE-2024-21626) and replaces the process image
/// (or, for `exec_self`, becomes the registered entry point). Returns only on failure.
pub(crate) fn exec(plan: &ExecPlan) -> io::Error {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes fd flags; arguments are plain integers.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) } != 0 {
        return io::Error::last_os_error();
    }
    // Passed files become 3, 4, …: first out of the way (the targets may be taken by
    // other sources), then into place without close-on-exec.
    const SPARE_FDS: i32 = 1000;
    let mut spare = Vec::new();
    for (i, fd) in plan.passed.iter().enumerate() {
        // SAFETY: fcntl/dup2 on descriptors we own.
        let high =
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, SPARE_FDS + i as i32) };
        if high < 0 {
            return io::Error::last_os_error();
        }
        spare.push(high);
    }
    for (i, high) in spare.iter().enumerate() {
        // SAFETY: as above; dup2 clears close-on-exec on the target.
        if unsafe { libc::dup2(*high, 3 + i as i32) } < 0 {
            return io::Error::last_os_error();
        }
    }
    let mut argv: Vec<*const libc::c_char> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = plan.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    if let Some((args, env)) = &plan.in_process {
        run_in_process(args, env, 3 + plan.passed.len() as u32);
    }
    // SAFETY: null-terminated arrays of valid C strings that outlive the call.
    unsafe { libc::execve(plan.path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    io::Error::last_os_error()
}

/// `exec_self`: this process is a fork of the monitor, which runs from the daemon's sealed
/// copy of berth, so berth's code is already here. Running the entry point in place needs
/// no executable inside the container (a Wasm image has no ELF loader or libc) and leaves
/// `/proc/self/exe` the sealed memfd, which no container can write (CVE-2019-5736).
fn run_in_process(args: &[String], env: &[String], first_unused_fd: u32) -> ! {
    use std::io::Write;
    // Nothing but stdio and the passed files may stay open: no exec will close them.
    // SAFETY: close_range on descriptors this process owns.
    unsafe { libc::syscall(libc::SYS_close_range, first_unused_fd, u32::MAX, 0u32) };
    let entry = super::self_entry().expect("checked by resolve");
    let env = env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.into(), v.into()),
            None => (e.into(), std::ffi::OsString::new()),
        })
        .collect();
    let code = entry(args.iter().map(Into::into).collect(), env);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: leave without running the monitor's destructors in this fork.
    unsafe { libc::_exit(code) }
}

impl ExecPlan {
    pub(crate) fn describe(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}
