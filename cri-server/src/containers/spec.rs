//! CreateContainer's translation: a CRI `ContainerConfig`, the pod it joins and the image it
//! runs become a `sandbox::container::ContainerSpec`. Pure logic (plus reads of the image's
//! account files), so every rule here is unit-tested without a kernel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cri_api::v1 as cri;
use sandbox::container::ContainerSpec;
use sandbox::container::caps;
use sandbox::container::cgroup::Resources;
use sandbox::container::spec::{
    BindMount, CgroupSpec, DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, Namespace, Namespaces,
    Process, Propagation, Rootfs, UserNamespace,
};
use sandbox::pod::{NamespaceMode, PodView};

use super::user::{self, ResolvedUser, UserRequest};
use crate::error::{CriError, CriResult};

/// What CreateContainer needs to know about the image.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: String,
    /// Unpacked layer directories, topmost first.
    pub layers: Vec<PathBuf>,
}

impl ImageFacts {
    /// Reads the parts of an OCI image config that shape the process.
    pub fn from_config(config: &serde_json::Value, layers: Vec<PathBuf>) -> ImageFacts {
        let c = &config["config"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let string = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        ImageFacts {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            working_dir: string(&c["WorkingDir"]),
            user: string(&c["User"]),
            stop_signal: string(&c["StopSignal"]),
            layers,
        }
    }
}

/// Where the container's own files go.
#[derive(Debug, Clone)]
pub struct ContainerDirs {
    /// Writable layer and overlayfs work dir.
    pub upper: PathBuf,
    pub work: PathBuf,
    /// Where the CRI log goes when the request names none.
    pub fallback_log: PathBuf,
}

/// The spec plus facts the status needs later.
#[derive(Debug, Clone)]
pub struct BuiltSpec {
    pub spec: ContainerSpec,
    pub user: ResolvedUser,
    /// The log path as reported (empty when the request named none).
    pub log_path: String,
    /// An AppArmor profile that was asked for but not applied (the host has none).
    pub apparmor_not_applied: Option<String>,
}

/// The AppArmor profile a container asks for, if any besides unconfined.
// The deprecated `apparmor_profile` is still what older kubelets send.
#[allow(deprecated)]
fn apparmor_request(sc: Option<&cri::LinuxContainerSecurityContext>) -> Option<String> {
    use cri::security_profile::ProfileType;
    let sc = sc?;
    if let Some(p) = &sc.apparmor {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::Unconfined) => None,
            Ok(ProfileType::Localhost) => Some(format!("localhost/{}", p.localhost_ref)),
            _ => Some("runtime/default".into()),
        };
    }
    match sc.apparmor_profile.as_str() {
        "" | "unconfined" => None,
        other => Some(other.to_string()),
    }
}

/// Whether the kernel enforces AppArmor here.
fn host_has_apparmor() -> bool {
    std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .is_ok_and(|v| v.starts_with('Y'))
}

/// AppArmor: berth loads no profiles. On a host without AppArmor a requested profile is
/// accepted and reported as not applied (as containerd does there); on a host that has
/// AppArmor, running unconfined while a profile was asked for would be a silent
/// downgrade, so it is refused.
fn apparmor(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<Option<String>, CriError> {
    let Some(profile) = apparmor_request(sc) else {
        return Ok(None);
    };
    if host_has_apparmor() {
        return Err(CriError::FailedPrecondition(format!(
            "AppArmor profile {profile:?} requested, but berth does not apply AppArmor profiles"
        )));
    }
    Ok(Some(format!(
        "AppArmor profile {profile:?} not applied: AppArmor is not enabled on this host"
    )))
}

fn invalid(msg: impl Into<String>) -> CriError {
    CriError::InvalidArgument(msg.into())
}

/// The argv: the request's command replaces the image's Entrypoint, its args replace Cmd
/// (Kubernetes' rule).
pub fn process_args(cfg: &cri::ContainerConfig, image: &ImageFacts) -> Vec<String> {
    let (entry, args) = if !cfg.command.is_empty() {
        (cfg.command.clone(), cfg.args.clone())
    } else if !cfg.args.is_empty() {
        (image.entrypoint.clone(), cfg.args.clone())
    } else {
        (image.entrypoint.clone(), image.cmd.clone())
    };
    entry.into_iter().chain(args).collect()
}

/// The request's working dir, else the image's, else `/`.
pub fn working_dir(cfg: &cri::ContainerConfig, image: &ImageFacts) -> PathBuf {
    if !cfg.working_dir.is_empty() {
        cfg.working_dir.clone().into()
    } else if !image.working_dir.is_empty() {
        image.working_dir.clone().into()
    } else {
        "/".into()
    }
}

/// The image's env, overridden key by key by the request's.
pub fn merge_env(image_env: &[String], req: &[cri::KeyValue]) -> CriResult<Vec<String>> {
    let mut order: Vec<String> = Vec::new();
    let mut values: BTreeMap<String, String> = BTreeMap::new();
    let requested = req
        .iter()
        .map(env_entry)
        .collect::<CriResult<Vec<(String, String)>>>()?;
    let entries = image_env
        .iter()
        .map(|e| match e.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (e.clone(), String::new()),
        })
        .chain(requested);
    for (k, v) in entries {
        if !values.contains_key(&k) {
            order.push(k.clone());
        }
        values.insert(k, v);
    }
    Ok(order
        .into_iter()
        .map(|k| format!("{k}={}", values[&k]))
        .collect())
}

/// Sets each `KEY=value` of `extra` in `env`, replacing an entry of the same key (CDI's
/// env edits come last and win, as in the OCI spec they edit).
pub fn override_env(env: &mut Vec<String>, extra: &[String]) {
    for e in extra {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        let same = |x: &String| x.split_once('=').map_or(x.as_str(), |(k, _)| k) == key;
        match env.iter_mut().find(|x| same(x)) {
            Some(slot) => slot.clone_from(e),
            None => env.push(e.clone()),
        }
    }
}

/// One requested variable. Since Kubernetes 1.37 the CRI carries values as bytes; execve
/// cannot pass a NUL, and berth keeps the environment as text.
fn env_entry(kv: &cri::KeyValue) -> CriResult<(String, String)> {
    if kv.key.is_empty() || kv.key.contains(['=', '\0']) {
        return Err(invalid(format!(
            "envs: the name {:?} is empty or holds '=' or NUL",
            kv.key
        )));
    }
    if kv.value.contains(&0) {
        return Err(invalid(format!(
            "envs: the value of {} contains a NUL byte, which execve cannot pass",
            kv.key
        )));
    }
    let value = String::from_utf8(kv.value.clone()).map_err(|_| {
        invalid(format!(
            "envs: the value of {} is not UTF-8, which berth needs for environment values",
            kv.key
        ))
    })?;
    Ok((kv.key.clone(), value))
}

/// containerd's capability rules: defaults, ALL in add or drop, then the named ones.
pub fn capabilities(sc: Option<&cri::LinuxContainerSecurityContext>) -> Vec<String> {
    let all = || {
        caps::ALL_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let Some(sc) = sc else {
        return caps::DEFAULT_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .collect();
    };
    if sc.privileged {
        return all();
    }
    let norm = |s: &String| s.trim_start_matches("CAP_").to_uppercase();
    let (add, drop): (Vec<String>, Vec<String>) = match &sc.capabilities {
        Some(c) => (
            c.add_capabilities.iter().map(norm).collect(),
            c.drop_capabilities.iter().map(norm).collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    let mut set: Vec<String> = if add.iter().any(|c| c == "ALL") {
        all()
    } else {
        caps::DEFAULT_CAPABILITIES
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    if drop.iter().any(|c| c == "ALL") {
        set.clear();
    }
    for c in add.iter().filter(|c| *c != "ALL") {
        if !set.contains(c) {
            set.push(c.clone());
        }
    }
    set.retain(|c| !drop.contains(c));
    set
}

fn propagation(p: i32) -> Propagation {
    match cri::MountPropagation::try_from(p).unwrap_or(cri::MountPropagation::PropagationPrivate) {
        cri::MountPropagation::PropagationPrivate => Propagation::Private,
        cri::MountPropagation::PropagationHostToContainer => Propagation::HostToContainer,
        cri::MountPropagation::PropagationBidirectional => Propagation::Bidirectional,
    }
}

/// A recursively read-only mount must be read-only, and nothing may propagate into it
/// (a mount arriving later from the host would be writable).
fn check_recursive_read_only(m: &cri::Mount) -> Result<(), CriError> {
    if !m.recursive_read_only {
        return Ok(());
    }
    if !m.readonly {
        return Err(invalid(format!(
            "mount at {:?}: recursive_read_only needs readonly = true",
            m.container_path
        )));
    }
    if propagation(m.propagation) != Propagation::Private {
        return Err(invalid(format!(
            "mount at {:?}: recursive_read_only needs PROPAGATION_PRIVATE, not {}",
            m.container_path,
            cri::MountPropagation::try_from(m.propagation)
                .map(|p| p.as_str_name())
                .unwrap_or("an unknown propagation")
        )));
    }
    Ok(())
}

/// The pod's user namespace, which every container of the pod shares; the container may
/// repeat the pod's options but not ask for others. Its user and groups must be mapped.
fn user_namespace(
    pod: &PodView,
    sc: Option<&cri::LinuxContainerSecurityContext>,
    user: &ResolvedUser,
) -> Result<Option<UserNamespace>, CriError> {
    let asked = sc
        .and_then(|s| s.namespace_options.as_ref())
        .and_then(|n| n.userns_options.as_ref());
    let pod_userns = pod.record.spec.user_namespace;
    if let Some(asked) = asked {
        let asked = crate::runtime::sandbox_run::user_namespace(Some(asked))?;
        if asked != pod_userns {
            return Err(invalid(
                "the container's user namespace options differ from its pod's: containers \
                 share the pod's user namespace",
            ));
        }
    }
    let Some(userns) = pod_userns else {
        return Ok(None);
    };
    let unmapped = |what: &str, id: u32, m: sandbox::pod::IdMapping| {
        m.host_of(id).is_none().then(|| {
            invalid(format!(
                "{what} {id} is outside the pod's user namespace ({}+{})",
                m.container_id, m.length
            ))
        })
    };
    let ids = [
        ("uid", user.uid, userns.uids),
        ("gid", user.gid, userns.gids),
    ]
    .into_iter()
    .chain(
        user.additional_gids
            .iter()
            .map(|g| ("group", *g, userns.gids)),
    );
    for (what, id, m) in ids {
        if let Some(e) = unmapped(what, id, m) {
            return Err(e);
        }
    }
    let root = |what: &str, m: sandbox::pod::IdMapping| {
        m.host_of(0)
            .ok_or_else(|| invalid(format!("the pod's user namespace maps no {what} 0")))
    };
    Ok(Some(UserNamespace {
        path: pod.paths.namespace("user"),
        root_uid: root("uid", userns.uids)?,
        root_gid: root("gid", userns.gids)?,
    }))
}

fn mode(
    ns: Option<&cri::NamespaceOption>,
    pick: fn(&cri::NamespaceOption) -> i32,
) -> cri::NamespaceMode {
    ns.and_then(|n| cri::NamespaceMode::try_from(pick(n)).ok())
        .unwrap_or(cri::NamespaceMode::Pod)
}

/// The container's namespaces: the pod's pinned ones, its own, or the host's.
fn namespaces(
    pod: &PodView,
    sc: Option<&cri::LinuxContainerSecurityContext>,
    target_pid_ns: Option<PathBuf>,
) -> Result<Namespaces, CriError> {
    let ns_opts = sc.and_then(|s| s.namespace_options.as_ref());
    let modes = &pod.record.spec.namespaces;
    let pinned = |kind: &str| Namespace::Join(pod.paths.namespace(kind));
    let net = if modes.network == NamespaceMode::Node {
        Namespace::Host
    } else {
        pinned("net")
    };
    let ipc = if modes.ipc == NamespaceMode::Node {
        Namespace::Host
    } else {
        pinned("ipc")
    };
    // A host-network pod also uses the host's UTS namespace, as containerd does.
    let uts = if modes.network == NamespaceMode::Node {
        Namespace::Host
    } else {
        pinned("uts")
    };
    let pid = match mode(ns_opts, |n| n.pid) {
        cri::NamespaceMode::Node => Namespace::Host,
        cri::NamespaceMode::Container => Namespace::New,
        cri::NamespaceMode::Target => Namespace::Join(target_pid_ns.ok_or_else(|| {
            invalid("PID namespace mode TARGET needs a running target container")
        })?),
        cri::NamespaceMode::Pod => match modes.pid {
            NamespaceMode::Node => Namespace::Host,
            _ => pinned("pid"),
        },
    };
    Ok(Namespaces {
        net,
        ipc,
        uts,
        pid,
        mnt: Namespace::New,
        cgroup: Namespace::New,
    })
}

pub fn resources(r: Option<&cri::LinuxContainerResources>) -> Resources {
    let Some(r) = r else {
        return Resources::default();
    };
    let pos = |v: i64| (v > 0).then_some(v);
    Resources {
        cpu_shares: (r.cpu_shares > 0).then_some(r.cpu_shares as u64),
        cpu_quota_us: pos(r.cpu_quota),
        cpu_period_us: (r.cpu_period > 0).then_some(r.cpu_period as u64),
        memory_limit_bytes: pos(r.memory_limit_in_bytes),
        memory_swap_limit_bytes: pos(r.memory_swap_limit_in_bytes),
        pids_limit: None,
    }
}

/// Builds the spec of container `id` in `pod` from the request and the image.
pub fn build(
    id: &str,
    cfg: &cri::ContainerConfig,
    pod: &PodView,
    image: &ImageFacts,
    dirs: &ContainerDirs,
    target_pid_ns: Option<PathBuf>,
) -> Result<BuiltSpec, CriError> {
    let linux = cfg.linux.as_ref();
    let sc = linux.and_then(|l| l.security_context.as_ref());
    let args = process_args(cfg, image);
    if args.is_empty() {
        return Err(invalid(
            "no command: the request has no command or args and the image has no Entrypoint or Cmd",
        ));
    }
    if image.layers.is_empty() {
        return Err(invalid(
            "the image has no filesystem layers to run natively",
        ));
    }

    let user_req = UserRequest {
        run_as_user: sc.and_then(|s| s.run_as_user.as_ref()).map(|v| v.value),
        run_as_username: sc.map(|s| s.run_as_username.clone()).unwrap_or_default(),
        run_as_group: sc.and_then(|s| s.run_as_group.as_ref()).map(|v| v.value),
        supplemental_groups: sc
            .map(|s| s.supplemental_groups.clone())
            .unwrap_or_default(),
        image_user: image.user.clone(),
        strict_groups: sc.is_some_and(|s| {
            s.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32
        }),
    };
    let user = user::resolve(&user_req, &image.layers).map_err(invalid)?;

    let mut env = merge_env(&image.env, &cfg.envs)?;
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home.as_deref().unwrap_or("/")));
    }

    let privileged = sc.is_some_and(|s| s.privileged);
    if privileged && !pod.record.spec.privileged {
        return Err(invalid(
            "a privileged container needs a privileged pod sandbox",
        ));
    }
    let (seccomp_default, seccomp_profile) = if privileged {
        (false, None)
    } else {
        match seccomp(sc)? {
            Seccomp::None => (false, None),
            Seccomp::RuntimeDefault => (true, None),
            Seccomp::Profile(p) => (false, Some(p)),
        }
    };
    let no_new_privs = sc.is_some_and(|s| s.no_new_privs);

    let mut mounts = Vec::new();
    let requested: Vec<&str> = cfg
        .mounts
        .iter()
        .map(|m| m.container_path.as_str())
        .collect();
    for (dest, source) in [
        ("/etc/hostname", &pod.paths.hostname),
        ("/etc/hosts", &pod.paths.hosts),
        ("/etc/resolv.conf", &pod.paths.resolv_conf),
    ] {
        if !requested.contains(&dest) && source.exists() {
            mounts.push(BindMount {
                source: source.clone(),
                destination: dest.into(),
                readonly: sc.is_some_and(|s| s.readonly_rootfs),
                recursive_readonly: false,
                propagation: Propagation::Private,
            });
        }
    }
    for m in &cfg.mounts {
        if m.container_path.is_empty() || !Path::new(&m.container_path).is_absolute() {
            return Err(invalid(format!(
                "mount container path {:?} must be absolute",
                m.container_path
            )));
        }
        // Made by `image_volumes` and mounted after the host paths.
        if super::image_volumes::is_image_volume(m) {
            continue;
        }
        if m.host_path.is_empty() {
            return Err(invalid(format!(
                "mount at {:?} has no host path",
                m.container_path
            )));
        }
        check_recursive_read_only(m)?;
        mounts.push(BindMount {
            source: m.host_path.clone().into(),
            destination: m.container_path.clone().into(),
            readonly: m.readonly,
            recursive_readonly: m.recursive_read_only,
            propagation: propagation(m.propagation),
        });
    }

    let (masked_paths, readonly_paths) = if privileged {
        (Vec::new(), Vec::new())
    } else {
        let pick = |req: Option<&Vec<String>>, default: &[&str]| -> Vec<PathBuf> {
            match req {
                Some(p) if !p.is_empty() => p.iter().map(PathBuf::from).collect(),
                _ => default.iter().map(PathBuf::from).collect(),
            }
        };
        (
            pick(sc.map(|s| &s.masked_paths), DEFAULT_MASKED_PATHS),
            pick(sc.map(|s| &s.readonly_paths), DEFAULT_READONLY_PATHS),
        )
    };

    let shm = if pod.record.spec.namespaces.ipc == NamespaceMode::Node {
        Some(PathBuf::from("/dev/shm"))
    } else {
        Some(pod.paths.shm.clone())
    };

    let cgroup_parent =
        sandbox::pod::cgroup::relative_path(&pod.record.spec.cgroup_parent, id).map_err(invalid)?;

    let log_dir = &pod.record.spec.log_directory;
    let log_path = if !log_dir.is_empty() && !cfg.log_path.is_empty() {
        Path::new(log_dir).join(&cfg.log_path).display().to_string()
    } else {
        String::new()
    };

    let user_namespace = user_namespace(pod, sc, &user)?;

    let res = linux.and_then(|l| l.resources.as_ref());
    let spec = ContainerSpec {
        image_volumes: Vec::new(),
        devices: Vec::new(),
        rootfs: Rootfs {
            lower: image.layers.clone(),
            upper: dirs.upper.clone(),
            work: dirs.work.clone(),
            readonly: sc.is_some_and(|s| s.readonly_rootfs),
        },
        process: Process {
            args,
            env,
            cwd: working_dir(cfg, image),
            uid: user.uid,
            gid: user.gid,
            additional_gids: user.additional_gids.clone(),
            rlimits: Vec::new(),
            no_new_privs,
            capabilities: capabilities(sc),
            oom_score_adj: res.map(|r| r.oom_score_adj as i32).filter(|v| *v != 0),
            seccomp_default,
            seccomp_profile,
            exec_self: false,
            pass_files: Vec::new(),
            stdin: cfg.stdin,
            stdin_once: cfg.stdin_once,
            tty: cfg.tty,
        },
        namespaces: namespaces(pod, sc, target_pid_ns)?,
        hostname: None,
        shm,
        mounts,
        masked_paths,
        readonly_paths,
        cgroup: Some(CgroupSpec {
            path: cgroup_parent,
            resources: resources(res),
        }),
        privileged,
        user_namespace,
        log_path: if log_path.is_empty() {
            dirs.fallback_log.clone()
        } else {
            log_path.clone().into()
        },
    };
    spec.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(BuiltSpec {
        spec,
        user,
        log_path,
        apparmor_not_applied: apparmor(sc)?,
    })
}

/// Which seccomp filter a container gets.
#[derive(Debug)]
enum Seccomp {
    None,
    RuntimeDefault,
    /// A Localhost profile, read from the host and parsed.
    Profile(sandbox::container::seccomp::Profile),
}

/// A Localhost profile file larger than this is refused.
const MAX_SECCOMP_PROFILE: u64 = 1 << 20;

fn localhost_profile(path: &str) -> Result<Seccomp, CriError> {
    let path = path.strip_prefix("localhost/").unwrap_or(path);
    if !Path::new(path).is_absolute() {
        return Err(invalid(format!(
            "seccomp profile path {path:?} must be absolute"
        )));
    }
    let text = read_profile(Path::new(path))
        .map_err(|e| invalid(format!("seccomp profile {path:?}: {e}")))?;
    let profile = sandbox::container::seccomp::Profile::from_oci_json(&text)
        .map_err(|e| invalid(format!("seccomp profile {path:?}: {e}")))?;
    Ok(Seccomp::Profile(profile))
}

/// Reads a profile file without ever blocking: opened non-blocking (a FIFO or a device
/// would otherwise hang the call until someone writes to it), a regular file only, and no
/// more than `MAX_SECCOMP_PROFILE` bytes read whatever its size says.
fn read_profile(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_SECCOMP_PROFILE {
        return Err(format!(
            "{} bytes, more than the {MAX_SECCOMP_PROFILE} allowed",
            meta.len()
        ));
    }
    let mut text = String::new();
    file.take(MAX_SECCOMP_PROFILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    if text.len() as u64 > MAX_SECCOMP_PROFILE {
        return Err(format!("more than the {MAX_SECCOMP_PROFILE} bytes allowed"));
    }
    Ok(text)
}

/// RuntimeDefault → berth's profile; Localhost → the named file; Unconfined or unset →
/// none.
// The deprecated `seccomp_profile_path` is still what older kubelets and crictl send.
#[allow(deprecated)]
fn seccomp(sc: Option<&cri::LinuxContainerSecurityContext>) -> Result<Seccomp, CriError> {
    use cri::security_profile::ProfileType;
    let Some(sc) = sc else {
        return Ok(Seccomp::None);
    };
    if let Some(p) = &sc.seccomp {
        return match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => Ok(Seccomp::RuntimeDefault),
            Ok(ProfileType::Unconfined) => Ok(Seccomp::None),
            Ok(ProfileType::Localhost) => localhost_profile(&p.localhost_ref),
            Err(_) => Err(invalid(format!(
                "unknown seccomp profile type {}",
                p.profile_type
            ))),
        };
    }
    match sc.seccomp_profile_path.as_str() {
        "runtime/default" | "docker/default" => Ok(Seccomp::RuntimeDefault),
        "" | "unconfined" => Ok(Seccomp::None),
        p if p.starts_with("localhost/") => localhost_profile(p),
        other => Err(invalid(format!("unknown seccomp profile {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> cri::ContainerConfig {
        cri::ContainerConfig::default()
    }

    fn image() -> ImageFacts {
        ImageFacts {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["a".into(), "b".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            ..Default::default()
        }
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let img = image();
        assert_eq!(process_args(&cfg(), &img), ["/entry", "a", "b"]);
        let mut c = cfg();
        c.args = vec!["x".into()];
        assert_eq!(process_args(&c, &img), ["/entry", "x"]);
        c.command = vec!["sh".into()];
        assert_eq!(process_args(&c, &img), ["sh", "x"]);
        c.args.clear();
        assert_eq!(process_args(&c, &img), ["sh"]);
    }

    #[test]
    fn request_env_overrides_image_env_in_place() {
        let env = merge_env(
            &image().env,
            &[
                cri::KeyValue {
                    key: "A".into(),
                    value: "2".into(),
                },
                cri::KeyValue {
                    key: "B".into(),
                    value: "3".into(),
                },
            ],
        )
        .unwrap();
        assert_eq!(env, ["PATH=/bin", "A=2", "B=3"]);
    }

    /// 1.37's env values are bytes: newlines pass, NUL and non-UTF-8 are refused by name.
    #[test]
    fn env_values_are_bytes_checked_for_execve() {
        let kv = |k: &str, v: &[u8]| cri::KeyValue {
            key: k.into(),
            value: v.to_vec(),
        };
        let env = merge_env(&[], &[kv("SECRET", b"line-1\nline-2\n")]).unwrap();
        assert_eq!(env, ["SECRET=line-1\nline-2\n"]);
        for (entry, says) in [
            (kv("NUL", b"a\0b"), "NUL"),
            (kv("LATIN1", b"caf\xe9"), "not UTF-8"),
            (kv("A=B", b"x"), "'='"),
        ] {
            let e = merge_env(&[], &[entry]).unwrap_err();
            assert!(
                matches!(&e, CriError::InvalidArgument(m) if m.starts_with("envs:") && m.contains(says)),
                "{e}"
            );
        }
    }

    fn sc_caps(add: &[&str], drop: &[&str]) -> cri::LinuxContainerSecurityContext {
        cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: add.iter().map(|s| s.to_string()).collect(),
                drop_capabilities: drop.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn capability_rules() {
        let default = capabilities(None);
        assert!(default.contains(&"NET_RAW".to_string()));
        assert!(!default.contains(&"SYS_ADMIN".to_string()));
        let c = capabilities(Some(&sc_caps(&["SYS_ADMIN"], &["NET_RAW"])));
        assert!(c.contains(&"SYS_ADMIN".to_string()) && !c.contains(&"NET_RAW".to_string()));
        let c = capabilities(Some(&sc_caps(&["ALL"], &[])));
        assert_eq!(c.len(), caps::ALL_CAPABILITIES.len());
        let c = capabilities(Some(&sc_caps(&["NET_ADMIN"], &["ALL"])));
        assert_eq!(c, ["NET_ADMIN"]);
        let c = capabilities(Some(&sc_caps(&["CAP_SYS_TIME"], &[])));
        assert!(c.contains(&"SYS_TIME".to_string()));
    }

    /// A FIFO would block the open (and the call) until someone writes to it; /dev/zero
    /// would be read forever. Both are refused at once, as is a file over the cap.
    #[test]
    fn seccomp_profile_files_that_are_not_small_regular_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let big = dir.path().join("big.json");
        std::fs::write(&big, vec![b' '; MAX_SECCOMP_PROFILE as usize + 1]).unwrap();
        let started = std::time::Instant::now();
        for (path, says) in [
            (fifo.as_path(), "not a regular file"),
            (Path::new("/dev/zero"), "not a regular file"),
            (big.as_path(), "allowed"),
        ] {
            let e = localhost_profile(&path.display().to_string()).unwrap_err();
            assert!(
                matches!(&e, CriError::InvalidArgument(m) if m.contains(says)),
                "{path:?}: {e}"
            );
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn seccomp_profiles() {
        let with = |t: cri::security_profile::ProfileType| cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: String::new(),
            }),
            ..Default::default()
        };
        use cri::security_profile::ProfileType::*;
        assert!(matches!(
            seccomp(Some(&with(RuntimeDefault))).unwrap(),
            Seccomp::RuntimeDefault
        ));
        assert!(matches!(
            seccomp(Some(&with(Unconfined))).unwrap(),
            Seccomp::None
        ));
        assert!(matches!(seccomp(None).unwrap(), Seccomp::None));
        // Localhost needs an absolute path to a readable, valid profile.
        let e = seccomp(Some(&with(Localhost))).unwrap_err();
        assert!(matches!(e, CriError::InvalidArgument(_)), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(&f, "not json").unwrap();
        let mut sc = with(Localhost);
        sc.seccomp.as_mut().unwrap().localhost_ref = f.display().to_string();
        assert!(matches!(
            seccomp(Some(&sc)),
            Err(CriError::InvalidArgument(_))
        ));
        std::fs::write(
            &f,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        assert!(matches!(seccomp(Some(&sc)).unwrap(), Seccomp::Profile(_)));
    }

    #[test]
    fn recursive_read_only_rules() {
        let mount = |readonly, propagation: cri::MountPropagation| cri::Mount {
            container_path: "/mnt".into(),
            host_path: "/tmp/x".into(),
            readonly,
            recursive_read_only: true,
            selinux_relabel: true,
            propagation: propagation as i32,
            ..Default::default()
        };
        use cri::MountPropagation::*;
        check_recursive_read_only(&mount(true, PropagationPrivate)).unwrap();
        for (readonly, p, says) in [
            (false, PropagationPrivate, "readonly = true"),
            (
                true,
                PropagationHostToContainer,
                "PROPAGATION_HOST_TO_CONTAINER",
            ),
            (true, PropagationBidirectional, "PROPAGATION_BIDIRECTIONAL"),
        ] {
            match check_recursive_read_only(&mount(readonly, p)) {
                Err(CriError::InvalidArgument(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{other:?}"),
            }
        }
        let plain = cri::Mount {
            recursive_read_only: false,
            ..mount(false, PropagationBidirectional)
        };
        check_recursive_read_only(&plain).unwrap();
    }

    #[test]
    fn apparmor_profiles_are_reported_where_the_host_has_none() {
        use cri::security_profile::ProfileType;
        let with = |t: ProfileType, r: &str| cri::LinuxContainerSecurityContext {
            apparmor: Some(cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            ..Default::default()
        };
        assert_eq!(apparmor_request(None), None);
        assert_eq!(
            apparmor_request(Some(&with(ProfileType::Unconfined, ""))),
            None
        );
        assert_eq!(
            apparmor_request(Some(&with(ProfileType::Localhost, "deny-write"))).as_deref(),
            Some("localhost/deny-write")
        );
        let sc = with(ProfileType::RuntimeDefault, "");
        match (host_has_apparmor(), apparmor(Some(&sc))) {
            (false, Ok(Some(msg))) => assert!(msg.contains("not applied"), "{msg}"),
            (true, Err(CriError::FailedPrecondition(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn image_facts_from_config() {
        let cfg = serde_json::json!({"config": {"Entrypoint": ["/pause"], "Cmd": null,
            "Env": ["PATH=/bin"], "WorkingDir": "/w", "User": "1000", "StopSignal": "SIGQUIT"}});
        let f = ImageFacts::from_config(&cfg, vec![]);
        assert_eq!(f.entrypoint, ["/pause"]);
        assert!(f.cmd.is_empty());
        assert_eq!(f.working_dir, "/w");
        assert_eq!(f.user, "1000");
        assert_eq!(f.stop_signal, "SIGQUIT");
    }
}
