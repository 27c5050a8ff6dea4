//! The CRI → domain translation on arbitrary requests: RunPodSandbox's `pod_spec`, then
//! CreateContainer's pure part (`ImageFacts::from_config`, `process_args`, `merge_env`,
//! `working_dir`, the Wasm-or-native `wasm::plan`, `spec::build` with user resolution
//! against the image's /etc/passwd and /etc/group, and `wasm::apply`), exactly as
//! `create_container` chains them, minus everything that touches the system (no
//! namespaces, mounts, cgroups, processes; the only files read are the fixture's).
//!
//! Input: `[flags: u8][n: u16 LE][image config JSON: n bytes][m: u16 LE][account files:
//! m bytes, /etc/passwd NUL /etc/group][CreateContainerRequest, protobuf]`. Its
//! `sandbox_config` is the pod's RunPodSandbox config; when that is not a valid pod, a
//! default pod shaped by the flags is used, so the container side is always exercised.
//! flags: bits 0-1 the runtime handler ("", "wasm", "", unknown), bit 2 a PID-target
//! namespace, bit 3 a Wasm-artifact image (a Wasm layer blob, no rootfs layers), bits 4-6
//! the default pod (host network, host PID, own user namespace), bit 7 a privileged pod.
//!
//! Errors are expected; panics, hangs and unbounded allocation are bugs, and so is a
//! built spec that breaks a rule `build` promises (see `check_built`).
#![no_main]

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use cri_server::containers::spec::{self, ContainerDirs, ImageFacts};
use cri_server::containers::{parse_signal, wasm};
use cri_server::runtime::sandbox_run::pod_spec;
use image_store::{ImageRecord, LayerFormat, LayerRecord, Platform};
use cri_api::v1 as cri;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use sandbox::pod::files;
use sandbox::pod::{
    IdMapping, NamespaceMode, NamespaceModes, PodPaths, PodRecord, PodSpec, PodView,
    UserNamespaceSpec, cgroup, sysctl,
};

const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Files the translation may read, created once per process under $TMPDIR and removed at
/// exit (deploy/fuzz.sh also points $TMPDIR at a directory it removes).
struct Fixture {
    dir: PathBuf,
    /// Rewritten per input: the account files the input carries (topmost layer).
    upper: PathBuf,
    base: PathBuf,
    empty: PathBuf,
    blob: PathBuf,
    pod: PodPaths,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("berth-fuzz-spec-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let w = |rel: &str, data: &[u8]| {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        };
        let wasm_module = b"\0asm\x01\0\0\0";
        w(
            "base/etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n\
              nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        );
        w(
            "base/etc/group",
            b"root:x:0:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n",
        );
        w("base/bin/sh", b"\x7fELF\x02\x01\x01\0");
        w("base/app.wasm", wasm_module);
        w("base/usr/bin/component.wasm", b"\0asm\x0d\0\x01\0");
        std::os::unix::fs::symlink("/app.wasm", dir.join("base/bin/wasm")).unwrap();
        std::os::unix::fs::symlink("../loop", dir.join("base/loop")).unwrap();
        std::fs::create_dir_all(dir.join("upper/etc")).unwrap();
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        w("blob.wasm", wasm_module);
        w("artifact.cwasm", b"precompiled");
        w(
            "profiles/default.json",
            br#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#,
        );
        w("profiles/bad.json", b"{\"defaultAction\":");
        let pod_dir = dir.join("pod");
        for f in ["resolv.conf", "hosts", "hostname"] {
            w(&format!("pod/{f}"), b"");
        }
        // SAFETY: registers a plain extern "C" function with no captured state.
        unsafe { libc::atexit(remove_fixture) };
        Fixture {
            upper: dir.join("upper"),
            base: dir.join("base"),
            empty: dir.join("empty"),
            blob: dir.join("blob.wasm"),
            pod: PodPaths {
                ns_dir: pod_dir.join("ns"),
                resolv_conf: pod_dir.join("resolv.conf"),
                hosts: pod_dir.join("hosts"),
                hostname: pod_dir.join("hostname"),
                shm: pod_dir.join("shm"),
                dir: pod_dir,
            },
            dir,
        }
    })
}

extern "C" fn remove_fixture() {
    if let Some(f) = FIXTURE_DIR.get() {
        let _ = std::fs::remove_dir_all(f);
    }
}
static FIXTURE_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Splits off a u16-LE-length-prefixed section.
fn section(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u16::from_le_bytes(data.get(..2)?.try_into().unwrap()) as usize;
    let rest = &data[2..];
    (rest.len() >= n).then(|| rest.split_at(n))
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    FIXTURE_DIR.get_or_init(|| fx.dir.clone());
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let Some((config_json, data)) = section(data) else {
        return;
    };
    let Some((accounts, data)) = section(data) else {
        return;
    };
    let Ok(req) = cri::CreateContainerRequest::decode(data) else {
        return;
    };
    write_accounts(fx, accounts);

    // RunPodSandbox.
    let handler = match flags & 3 {
        1 => wasm_exec::decision::WASM_RUNTIME_HANDLER,
        3 => "unknown-handler",
        _ => "",
    };
    let from_request = pod_spec(cri::RunPodSandboxRequest {
        config: req.sandbox_config.clone(),
        runtime_handler: handler.into(),
    });
    let pod_spec = match from_request {
        Ok(s) if pod_is_valid(&s) => s,
        // A pod the daemon would have refused never exists: the default pod instead.
        _ => default_pod(flags, if flags & 3 == 3 { "" } else { handler }),
    };
    let pod = PodView {
        record: PodRecord {
            id: "fuzzpod".into(),
            spec: pod_spec,
            created_at_ns: 0,
            stopped: false,
            init: None,
            cgroup_dirs: Vec::new(),
            ips: Vec::new(),
            network_attached: true,
        },
        ready: true,
        paths: fx.pod.clone(),
    };

    // CreateContainer, as create_container chains it.
    let Some(mut cfg) = req.config else {
        return;
    };
    if cfg.metadata.as_ref().is_none_or(|m| m.name.is_empty()) {
        return;
    }
    confine_seccomp_profiles(fx, &mut cfg);
    let config: serde_json::Value = serde_json::from_slice(config_json).unwrap_or_default();
    let artifact_image = flags & 8 != 0;
    let layers = if artifact_image {
        Vec::new()
    } else {
        vec![fx.upper.clone(), fx.base.clone()]
    };
    let mut facts = ImageFacts::from_config(&config, layers);
    let _ = parse_signal(&facts.stop_signal);
    let image = image_record(&config, artifact_image);
    let argv = spec::process_args(&cfg, &facts);
    // Refusing a value (NUL, not UTF-8) is a clear error, not a bug.
    let Ok(env) = spec::merge_env(&facts.env, &cfg.envs) else {
        return;
    };
    let mut keys: Vec<&str> = env.iter().map(|e| e.split('=').next().unwrap()).collect();
    let n = keys.len();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), n, "merge_env repeated a key: {env:?}");
    let cwd = spec::working_dir(&cfg, &facts);
    let pod_annotations: HashMap<String, String> = pod
        .record
        .spec
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let Ok((_decision, plan)) = wasm::plan(&wasm::PlanInput {
        pod_annotations: &pod_annotations,
        container_annotations: &cfg.annotations,
        runtime_handler: &pod.record.spec.runtime_handler,
        image: &image,
        wasm_blob: artifact_image.then(|| fx.blob.clone()),
        layers: &facts.layers,
        argv: &argv,
        env: &env,
        cwd: &cwd,
    }) else {
        return;
    };
    if plan.is_some() && facts.layers.is_empty() {
        facts.layers = vec![fx.empty.clone()];
    }
    let target_pid_ns = (flags & 4 != 0).then(|| PathBuf::from("/proc/1/ns/pid"));
    let dirs = ContainerDirs {
        upper: fx.dir.join("ctr/upper"),
        work: fx.dir.join("ctr/work"),
        fallback_log: fx.dir.join("ctr/container.log"),
    };
    let Ok(mut built) = spec::build(ID, &cfg, &pod, &facts, &dirs, target_pid_ns) else {
        return;
    };
    check_built(&built.spec, &pod, &argv, &cfg);
    if let Some(plan) = &plan {
        let artifact = wasm_exec::Artifact {
            path: fx.dir.join("artifact.cwasm"),
            sha256: "0".repeat(64),
            kind: wasm_exec::WasmKind::Module,
            compiled: false,
        };
        let memory_limit = cfg
            .linux
            .as_ref()
            .and_then(|l| l.resources.as_ref())
            .map(|r| r.memory_limit_in_bytes)
            .filter(|m| *m > 0)
            .map(|m| m as u64);
        wasm::apply(
            plan,
            &mut built.spec,
            &wasm::RunnerFiles {
                artifact: &artifact,
                oom_marker: &fx.dir.join("ctr/oom"),
                termination_log: &fx.dir.join("ctr/termination-log"),
            },
            memory_limit,
        );
        let _ = built.spec.validate();
    }
});

/// The image's account files: the input's, in the topmost layer, else the base layer's.
fn write_accounts(fx: &Fixture, accounts: &[u8]) {
    let passwd = fx.upper.join("etc/passwd");
    let group = fx.upper.join("etc/group");
    if accounts.is_empty() {
        let _ = std::fs::remove_file(passwd);
        let _ = std::fs::remove_file(group);
        return;
    }
    let (p, g) = match accounts.iter().position(|b| *b == 0) {
        Some(i) => (&accounts[..i], &accounts[i + 1..]),
        None => (accounts, &b""[..]),
    };
    std::fs::write(passwd, p).unwrap();
    std::fs::write(group, g).unwrap();
}

/// A Localhost seccomp profile is a host file: only the fixture's two profiles (one valid,
/// one not) or a missing one are ever read.
#[allow(deprecated)]
fn confine_seccomp_profiles(fx: &Fixture, cfg: &mut cri::ContainerConfig) {
    let confine = |r: &str| {
        let name = ["default.json", "bad.json", "missing.json"][r.len() % 3];
        fx.dir.join("profiles").join(name).display().to_string()
    };
    let Some(sc) = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()) else {
        return;
    };
    if let Some(p) = sc.seccomp.as_mut() {
        p.localhost_ref = confine(&p.localhost_ref);
    }
    if sc.seccomp_profile_path.starts_with("localhost/") {
        sc.seccomp_profile_path = format!("localhost/{}", confine(&sc.seccomp_profile_path));
    }
}

/// What `PodManager::run` checks before building a pod (sandbox::pod's private
/// `validate`), from the same public pieces, plus the pure parts of building it.
fn pod_is_valid(spec: &PodSpec) -> bool {
    if spec.name.is_empty() || spec.namespace.is_empty() {
        return false;
    }
    let ns = &spec.namespaces;
    let modes = [ns.network, ns.pid, ns.ipc];
    if modes.contains(&NamespaceMode::Target) {
        return false;
    }
    if let Some(u) = &spec.user_namespace {
        if modes.contains(&NamespaceMode::Node) {
            return false;
        }
        for m in [u.uids, u.gids] {
            if m.host_of(0).is_none() || m.host_id.checked_add(m.length).is_none() {
                return false;
            }
            let _ = m.map_line();
        }
    }
    if files::validate_hostname(&spec.hostname).is_err() || spec.dns.validate().is_err() {
        return false;
    }
    for (name, value) in &spec.sysctls {
        let host_net = ns.network == NamespaceMode::Node;
        let host_ipc = ns.ipc == NamespaceMode::Node;
        match sysctl::validate(name, value, host_net, host_ipc) {
            Ok(_) => {
                // Sysctls are written to this path under /proc/sys: it must stay there.
                let p = sysctl::proc_path(name);
                let rel = p.strip_prefix("/proc/sys").unwrap();
                assert!(
                    rel.components().all(|c| matches!(c, Component::Normal(_))),
                    "sysctl {name:?} validated, but its path is {p:?}"
                );
            }
            Err(_) => return false,
        }
    }
    if spec
        .port_mappings
        .iter()
        .any(|p| !matches!(p.protocol.as_str(), "tcp" | "udp" | "sctp"))
    {
        return false;
    }
    let Ok(rel) = cgroup::relative_path(&spec.cgroup_parent, "fuzzpod") else {
        return false;
    };
    assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
    let _ = files::render_resolv_conf(&spec.dns);
    let _ = files::render_hosts(Some([10, 88, 0, 5].into()), &spec.hostname);
    let _ = spec.reservation_key();
    true
}

fn default_pod(flags: u8, handler: &str) -> PodSpec {
    let mode = |host| {
        if host {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        }
    };
    let own_userns = flags & 0x40 != 0;
    let map = IdMapping {
        container_id: 0,
        host_id: 100_000,
        length: 65_536,
    };
    PodSpec {
        name: "pod".into(),
        namespace: "default".into(),
        uid: "uid".into(),
        log_directory: "/var/log/pods/default_pod_uid".into(),
        namespaces: NamespaceModes {
            network: mode(flags & 0x10 != 0 && !own_userns),
            pid: mode(flags & 0x20 != 0 && !own_userns),
            ipc: NamespaceMode::Pod,
        },
        runtime_handler: handler.into(),
        privileged: flags & 0x80 != 0,
        user_namespace: own_userns.then_some(UserNamespaceSpec {
            uids: map,
            gids: map,
        }),
        ..Default::default()
    }
}

fn image_record(config: &serde_json::Value, artifact_image: bool) -> ImageRecord {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let layer = |format| LayerRecord {
        digest: format!("sha256:{}", "1".repeat(64)),
        media_type: String::new(),
        size: 1,
        format,
        diff_id: format!("sha256:{}", "2".repeat(64)),
        chain_id: None,
        usage: Default::default(),
    };
    ImageRecord {
        id: format!("sha256:{}", "3".repeat(64)),
        repo_tags: vec!["docker.io/library/fuzz:latest".into()],
        repo_digests: Vec::new(),
        size: 1,
        user: image_store::parse_user(&s(&config["config"]["User"])),
        platform: Platform {
            os: s(&config["os"]),
            architecture: s(&config["architecture"]),
            variant: None,
        },
        manifest_digest: format!("sha256:{}", "4".repeat(64)),
        config: config.clone(),
        layers: vec![layer(if artifact_image {
            LayerFormat::Wasm
        } else {
            LayerFormat::Tar
        })],
    }
}

/// What a built spec promises, whatever the request said.
fn check_built(
    s: &sandbox::container::ContainerSpec,
    pod: &PodView,
    argv: &[String],
    cfg: &cri::ContainerConfig,
) {
    assert!(s.validate().is_ok());
    assert_eq!(s.process.args, argv);
    assert!(
        !s.privileged || pod.record.spec.privileged,
        "a privileged container in an unprivileged pod"
    );
    // The cgroup is a relative path below the parent, ending in the container's id.
    let cg = s.cgroup.as_ref().expect("no cgroup");
    assert!(
        cg.path
            .components()
            .all(|c| matches!(c, Component::Normal(_))),
        "cgroup path {:?}",
        cg.path
    );
    assert!(cg.path.ends_with(ID));
    for m in &s.mounts {
        assert!(m.destination.is_absolute(), "mount at {:?}", m.destination);
    }
    // Every requested mount is there, as asked.
    for m in &cfg.mounts {
        assert!(
            s.mounts
                .iter()
                .any(|b| b.destination == Path::new(&m.container_path)
                    && b.source == Path::new(&m.host_path)
                    && b.readonly == m.readonly)
        );
    }
    // A pod with its own user namespace never runs a container as an unmapped id.
    if let Some(u) = &pod.record.spec.user_namespace {
        assert!(s.user_namespace.is_some());
        assert!(u.uids.host_of(s.process.uid).is_some());
        assert!(u.gids.host_of(s.process.gid).is_some());
    }
}
