//! What a native container is, in domain terms: the rootfs layers, the process, its
//! namespaces, mounts and limits. `cri-server` translates CRI requests into this; the
//! monitor reads it back from `config.json` in the container's state directory.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::caps::CapSet;
use super::cgroup::Resources;

/// Everything needed to create one container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub rootfs: Rootfs,
    pub process: Process,
    pub namespaces: Namespaces,
    /// Set when the container has its own UTS namespace.
    pub hostname: Option<String>,
    /// Host file or directory bind-mounted at `/dev/shm` (the pod's shm); a private 64 MiB
    /// tmpfs when unset.
    pub shm: Option<PathBuf>,
    /// Bind mounts (resolv.conf, hosts, volumes), applied in order after the system mounts.
    pub mounts: Vec<BindMount>,
    /// Paths hidden from the container: `/dev/null` over files, a read-only tmpfs over dirs.
    pub masked_paths: Vec<PathBuf>,
    /// Paths remounted read-only inside the container.
    pub readonly_paths: Vec<PathBuf>,
    /// Cgroup to create and join, relative to each hierarchy's root (ends in the container
    /// id so cAdvisor can match it).
    pub cgroup: Option<CgroupSpec>,
    /// Path of the CRI log file the monitor writes.
    pub log_path: PathBuf,
    /// A privileged container sees the host's devices and a writable /sys. Capabilities,
    /// seccomp and masked paths are set by the caller as for any container.
    #[serde(default)]
    pub privileged: bool,
    /// The pod's user namespace: the container's mounts are idmapped into it and the
    /// process joins it once they are made. `None` runs in the host's.
    #[serde(default)]
    pub user_namespace: Option<UserNamespace>,
    /// Image volumes (Kubernetes' `image` volume source): mounted read-only after `mounts`.
    #[serde(default)]
    pub image_volumes: Vec<ImageVolume>,
    /// Device nodes made in the container's /dev and allowed by its device cgroup (CRI
    /// devices and CDI device nodes).
    #[serde(default)]
    pub devices: Vec<DeviceNode>,
}

/// A device node inside the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceNode {
    /// Absolute path inside the container.
    pub path: PathBuf,
    /// `c` (character) or `b` (block).
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    /// Permission bits of the node.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// What the device cgroup allows: a non-empty subset of `rwm`.
    pub access: String,
}

impl DeviceNode {
    /// The device cgroup (v1) rule that lets the container use it, e.g. `c 10:200 rw`.
    pub fn cgroup_rule(&self) -> String {
        format!(
            "{} {}:{} {}",
            self.kind, self.major, self.minor, self.access
        )
    }
}

/// An image's file system (or a path in it) mounted read-only into the container: the
/// image's layers as a lower-only overlay, made inside the container's mount namespace so
/// it goes away with the container and never shows on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageVolume {
    /// Layer directories, topmost first; at least two (overlayfs without an upper layer
    /// needs two: an image with one layer gets an empty one below it).
    pub layers: Vec<PathBuf>,
    /// A relative path inside the image to mount instead of its root; resolved inside the
    /// image, so a symlink in it cannot lead out.
    pub sub_path: Option<PathBuf>,
    /// Absolute path inside the container.
    pub destination: PathBuf,
}

/// A user namespace a container joins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespace {
    /// The pinned namespace, e.g. `<state>/pods/<id>/ns/user`.
    pub path: PathBuf,
    /// The host IDs of the container's root user and group: the owner of its writable
    /// layer, so files the container creates there belong to it.
    pub root_uid: u32,
    pub root_gid: u32,
}

/// An overlay of read-only image layers under a per-container writable layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rootfs {
    /// Layer directories, topmost first (overlayfs `lowerdir=` order).
    pub lower: Vec<PathBuf>,
    /// Writable layer and overlayfs work dir; created if missing, removed with the container.
    pub upper: PathBuf,
    pub work: PathBuf,
    pub readonly: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Process {
    /// argv; `args[0]` is looked up in the container's `PATH` unless it contains a `/`.
    pub args: Vec<String>,
    /// `NAME=value` entries.
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privs: bool,
    /// Capability names without the `CAP_` prefix (as the CRI sends them).
    pub capabilities: Vec<String>,
    pub oom_score_adj: Option<i32>,
    /// Apply berth's RuntimeDefault seccomp profile.
    pub seccomp_default: bool,
    /// A custom seccomp profile (CRI `Localhost`); wins over `seccomp_default`.
    #[serde(default)]
    pub seccomp_profile: Option<super::seccomp::Profile>,
    /// Give the process a stdin pipe that attach clients write into (else /dev/null).
    #[serde(default)]
    pub stdin: bool,
    /// Close that stdin when the first attach client is done with it.
    #[serde(default)]
    pub stdin_once: bool,
    /// Run the daemon binary's registered entry point (`set_self_entry`) in the container
    /// process, with `args` as its argv, instead of exec'ing `args[0]` from the container:
    /// how a Wasm guest runs inside a container's isolation.
    #[serde(default)]
    pub exec_self: bool,
    /// Host files opened before pivot_root and handed to the process as fds 3, 4, … in
    /// order (e.g. a precompiled module, a marker the daemon reads after the exit).
    #[serde(default)]
    pub pass_files: Vec<PassFile>,
    /// A terminal as stdio and controlling tty; its output is logged as stdout.
    #[serde(default)]
    pub tty: bool,
}

/// A host file the container process receives as an open descriptor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PassFile {
    pub path: PathBuf,
    /// Opened for writing (the file must exist) rather than reading.
    pub writable: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rlimit {
    /// `RLIMIT_*` resource number, e.g. `libc::RLIMIT_NOFILE`.
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// For each namespace kind: make a new one, join an existing one (e.g. the pod's pinned
/// `<state>/pods/<id>/ns/net`), or stay in the host's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Namespace {
    New,
    Join(PathBuf),
    Host,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Namespaces {
    pub net: Namespace,
    pub ipc: Namespace,
    pub uts: Namespace,
    pub pid: Namespace,
    /// Always `New`: the rootfs is mounted inside it, so it disappears with the container.
    pub mnt: Namespace,
    pub cgroup: Namespace,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self {
            net: Namespace::New,
            ipc: Namespace::New,
            uts: Namespace::New,
            pid: Namespace::New,
            mnt: Namespace::New,
            cgroup: Namespace::New,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    Private,
    /// Host → container (`rslave`).
    HostToContainer,
    /// Both ways (`rshared`).
    Bidirectional,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindMount {
    /// Host path; a symlink is resolved on the host.
    pub source: PathBuf,
    /// Absolute path inside the container; resolved inside the container's root.
    pub destination: PathBuf,
    pub readonly: bool,
    /// Every mount below the source read-only too, not just the top one (needs `readonly`
    /// and private propagation: a read-only flag cannot follow mounts that propagate in).
    #[serde(default)]
    pub recursive_readonly: bool,
    pub propagation: Propagation,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CgroupSpec {
    /// Relative to each hierarchy root, e.g. `kubepods/pod<uid>/<container id>`.
    pub path: PathBuf,
    pub resources: Resources,
}

/// containerd's default masked paths (`pkg/oci/spec.go`).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// containerd's default read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Why a spec cannot be run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("process args are empty")]
    NoArgs,
    #[error("env entry {0:?} is not NAME=value")]
    EnvNotKeyValue(String),
    #[error("env entry {0:?} contains a NUL byte, which execve cannot pass")]
    EnvNul(String),
    #[error("env entry {0:?}: HOME must not contain a newline")]
    HomeNewline(String),
    #[error("{what} {value} is out of range (must be below 2^31)")]
    IdOutOfRange { what: &'static str, value: u32 },
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("{what} path {path:?} must be absolute")]
    NotAbsolute { what: &'static str, path: PathBuf },
    #[error("{what} path {path:?} must not contain '..'")]
    DotDot { what: &'static str, path: PathBuf },
    #[error("the mount namespace must be New")]
    MountNamespaceNotNew,
    #[error("the rootfs has no layers")]
    NoLayers,
    #[error("argument {0:?} contains a NUL byte")]
    ArgNul(String),
    #[error("hostname {0:?} is invalid")]
    BadHostname(String),
    #[error("image volume at {0:?}: {1}")]
    BadImageVolume(PathBuf, &'static str),
    #[error("device {0:?}: {1}")]
    BadDevice(PathBuf, &'static str),
    #[error("recursive read-only mount at {0:?} must also be read-only")]
    RecursiveReadOnlyNotReadOnly(PathBuf),
    #[error(
        "recursive read-only mount at {0:?} must have private propagation (mounts propagated \
         from the host later would be writable)"
    )]
    RecursiveReadOnlyPropagates(PathBuf),
    #[error("rlimit {resource}: soft limit {soft} exceeds hard limit {hard}")]
    RlimitSoftAboveHard { resource: u32, soft: u64, hard: u64 },
}

impl ContainerSpec {
    /// Checks everything that can be checked without touching the system.
    pub fn validate(&self) -> Result<(), SpecError> {
        let p = &self.process;
        if p.args.is_empty() {
            return Err(SpecError::NoArgs);
        }
        if let Some(a) = p.args.iter().find(|a| a.contains('\0')) {
            return Err(SpecError::ArgNul(a.clone()));
        }
        for e in &p.env {
            validate_env(e)?;
        }
        // UIDs above i32::MAX wrap to negative numbers in tools that parse them as int32
        // (CVE-2024-40635: a wrapped uid can become 0).
        check_id("uid", p.uid)?;
        check_id("gid", p.gid)?;
        for g in &p.additional_gids {
            check_id("additional gid", *g)?;
        }
        CapSet::from_names(&p.capabilities)?;
        for r in &p.rlimits {
            if r.soft > r.hard {
                return Err(SpecError::RlimitSoftAboveHard {
                    resource: r.resource,
                    soft: r.soft,
                    hard: r.hard,
                });
            }
        }
        container_path("cwd", &p.cwd)?;
        if self.namespaces.mnt != Namespace::New {
            return Err(SpecError::MountNamespaceNotNew);
        }
        if self.rootfs.lower.is_empty() {
            return Err(SpecError::NoLayers);
        }
        if let Some(h) = &self.hostname
            && (h.is_empty() || h.len() > 64 || h.contains(['\0', '\n', '/']))
        {
            return Err(SpecError::BadHostname(h.clone()));
        }
        for m in &self.mounts {
            host_path("mount source", &m.source)?;
            container_path("mount destination", &m.destination)?;
            if m.recursive_readonly && !m.readonly {
                return Err(SpecError::RecursiveReadOnlyNotReadOnly(
                    m.destination.clone(),
                ));
            }
            if m.recursive_readonly && m.propagation != Propagation::Private {
                return Err(SpecError::RecursiveReadOnlyPropagates(
                    m.destination.clone(),
                ));
            }
        }
        for v in &self.image_volumes {
            container_path("image volume destination", &v.destination)?;
            let bad = |why| SpecError::BadImageVolume(v.destination.clone(), why);
            if v.layers.len() < 2 {
                return Err(bad("an overlay without an upper layer needs two layers"));
            }
            for l in &v.layers {
                host_path("image volume layer", l)?;
                if l.to_string_lossy().contains([':', ',']) {
                    return Err(bad("a layer path contains ':' or ','"));
                }
            }
            if let Some(sub) = &v.sub_path
                && (sub.is_absolute()
                    || sub
                        .components()
                        .any(|c| c == std::path::Component::ParentDir))
            {
                return Err(bad("the sub-path must be relative and without '..'"));
            }
        }
        for d in &self.devices {
            container_path("device", &d.path)?;
            let bad = |why| SpecError::BadDevice(d.path.clone(), why);
            if d.kind != 'c' && d.kind != 'b' {
                return Err(bad("the type must be c (character) or b (block)"));
            }
            if d.access.is_empty() || !d.access.chars().all(|c| "rwm".contains(c)) {
                return Err(bad("the permissions must be a non-empty subset of \"rwm\""));
            }
            if !d.path.starts_with("/dev") {
                return Err(bad("device nodes go under /dev"));
            }
        }
        for path in self.masked_paths.iter().chain(&self.readonly_paths) {
            container_path("masked or read-only", path)?;
        }
        host_path("log", &self.log_path)?;
        Ok(())
    }
}

/// NUL cannot pass through execve. Newlines are fine in values (Secrets consumed as env
/// carry them; runc and containerd pass them), except in `HOME`, which tools copy into
/// `/etc/passwd`-style files where a newline forges an extra entry (CVE-2022-4318).
fn validate_env(entry: &str) -> Result<(), SpecError> {
    if entry.contains('\0') {
        return Err(SpecError::EnvNul(entry.to_owned()));
    }
    match entry.split_once('=') {
        Some(("HOME", home)) if home.contains(['\n', '\r']) => {
            Err(SpecError::HomeNewline(entry.to_owned()))
        }
        Some((name, _)) if !name.is_empty() => Ok(()),
        _ => Err(SpecError::EnvNotKeyValue(entry.to_owned())),
    }
}

fn check_id(what: &'static str, value: u32) -> Result<(), SpecError> {
    if value > i32::MAX as u32 {
        return Err(SpecError::IdOutOfRange { what, value });
    }
    Ok(())
}

fn host_path(what: &'static str, path: &Path) -> Result<(), SpecError> {
    if !path.is_absolute() {
        return Err(SpecError::NotAbsolute {
            what,
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn container_path(what: &'static str, path: &Path) -> Result<(), SpecError> {
    host_path(what, path)?;
    if path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(SpecError::DotDot {
            what,
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn minimal() -> ContainerSpec {
        ContainerSpec {
            image_volumes: Vec::new(),
            devices: Vec::new(),
            rootfs: Rootfs {
                lower: vec!["/layers/a".into()],
                upper: "/c/upper".into(),
                work: "/c/work".into(),
                readonly: false,
            },
            process: Process {
                args: vec!["sh".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                rlimits: vec![],
                no_new_privs: true,
                capabilities: vec!["CHOWN".into()],
                oom_score_adj: None,
                seccomp_default: false,
                seccomp_profile: None,
                stdin: false,
                stdin_once: false,
                exec_self: false,
                pass_files: Vec::new(),
                tty: false,
            },
            namespaces: Namespaces::default(),
            hostname: None,
            shm: None,
            mounts: vec![],
            masked_paths: vec![],
            readonly_paths: vec![],
            cgroup: None,
            log_path: "/logs/0.log".into(),
            privileged: false,
            user_namespace: None,
        }
    }

    #[test]
    fn a_minimal_spec_is_valid() {
        minimal().validate().unwrap();
    }

    #[test]
    fn env_values_may_hold_newlines_but_not_nul_and_home_no_newline() {
        for entry in ["SECRET_DATA=value-1\n", "A=b\r\nc"] {
            let mut s = minimal();
            s.process.env.push(entry.into());
            assert_eq!(s.validate(), Ok(()), "{entry:?}");
        }
        let mut s = minimal();
        s.process.env.push("X=\0".into());
        assert_eq!(s.validate(), Err(SpecError::EnvNul("X=\0".into())));
        for entry in ["HOME=/root\nevil:x:0:0::/:/bin/sh", "HOME=/r\r"] {
            let mut s = minimal();
            s.process.env.push(entry.into());
            assert_eq!(s.validate(), Err(SpecError::HomeNewline(entry.into())));
        }
        let mut s = minimal();
        s.process.env.push("=novalue".into());
        assert!(matches!(s.validate(), Err(SpecError::EnvNotKeyValue(_))));
    }

    #[test]
    fn rejects_ids_that_overflow_int32() {
        let mut s = minimal();
        s.process.uid = 1 << 31;
        assert!(matches!(
            s.validate(),
            Err(SpecError::IdOutOfRange { what: "uid", .. })
        ));
        let mut s = minimal();
        s.process.additional_gids = vec![u32::MAX];
        assert!(matches!(s.validate(), Err(SpecError::IdOutOfRange { .. })));
        let mut s = minimal();
        s.process.uid = i32::MAX as u32;
        s.validate().unwrap();
    }

    #[test]
    fn rejects_unknown_capabilities() {
        let mut s = minimal();
        s.process.capabilities = vec!["NET_ADMIN".into(), "FLY".into()];
        assert_eq!(
            s.validate(),
            Err(SpecError::UnknownCapability("FLY".into()))
        );
    }

    #[test]
    fn rejects_relative_and_escaping_container_paths() {
        let mut s = minimal();
        s.mounts.push(BindMount {
            source: "/host".into(),
            destination: "/data/../../etc".into(),
            readonly: false,
            recursive_readonly: false,
            propagation: Propagation::Private,
        });
        assert!(matches!(s.validate(), Err(SpecError::DotDot { .. })));
        let mut s = minimal();
        s.process.cwd = "work".into();
        assert!(matches!(s.validate(), Err(SpecError::NotAbsolute { .. })));
    }

    #[test]
    fn recursive_readonly_needs_readonly_and_private_propagation() {
        let rro = |readonly, propagation| {
            let mut s = minimal();
            s.mounts.push(BindMount {
                source: "/host".into(),
                destination: "/mnt".into(),
                readonly,
                recursive_readonly: true,
                propagation,
            });
            s.validate()
        };
        rro(true, Propagation::Private).unwrap();
        assert_eq!(
            rro(false, Propagation::Private),
            Err(SpecError::RecursiveReadOnlyNotReadOnly("/mnt".into()))
        );
        for p in [Propagation::HostToContainer, Propagation::Bidirectional] {
            assert_eq!(
                rro(true, p),
                Err(SpecError::RecursiveReadOnlyPropagates("/mnt".into()))
            );
        }
    }

    #[test]
    fn rejects_a_shared_mount_namespace() {
        let mut s = minimal();
        s.namespaces.mnt = Namespace::Host;
        assert_eq!(s.validate(), Err(SpecError::MountNamespaceNotNew));
    }
}
