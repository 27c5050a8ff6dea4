//! Mount and identity isolation through the daemon: recursive read-only volumes (a host
//! dir with a tmpfs under it), pods with a user namespace of their own, and the requests
//! CreateContainer and RunPodSandbox must refuse.

mod common;

use std::path::{Path, PathBuf};

use common::{BUSYBOX, Daemon, pod_config, pull, remove_pod, start, wait_exited};
use cri_api::v1 as cri;
use tonic::transport::Channel;

type Runtime = cri::runtime_service_client::RuntimeServiceClient<Channel>;

/// The Wasm test images (critest/images) are served on the local registry.
const WASM_HELLO: &str = "127.0.0.1:5000/berth-test/wasm-hello:compat-smart";

async fn run_pod(rt: &mut Runtime, cfg: &cri::PodSandboxConfig) -> String {
    run_pod_with(rt, cfg, "").await
}

async fn run_pod_with(rt: &mut Runtime, cfg: &cri::PodSandboxConfig, handler: &str) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: handler.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

fn container_config(name: &str, mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        mounts,
        ..Default::default()
    }
}

async fn create(
    rt: &mut Runtime,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    config: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(config),
        sandbox_config: Some(pod.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

/// Runs `sh -c script` in the container; stdout and exit code.
async fn sh(rt: &mut Runtime, id: &str, script: &str) -> (String, i32) {
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    (String::from_utf8_lossy(&r.stdout).into_owned(), r.exit_code)
}

/// A host dir with a tmpfs mounted on its `tmpfs` subdir (critest's fixture); the tmpfs
/// is unmounted on drop.
struct DirWithSubmount {
    dir: tempfile::TempDir,
}

impl DirWithSubmount {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("tmpfs");
        std::fs::create_dir(&sub).unwrap();
        nix::mount::mount(
            Some("none"),
            &sub,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        Self { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for DirWithSubmount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(
            &self.dir.path().join("tmpfs"),
            nix::mount::MntFlags::MNT_DETACH,
        );
    }
}

fn volume(host: &Path, readonly: bool, rro: bool, p: cri::MountPropagation) -> cri::Mount {
    cri::Mount {
        container_path: "/mnt".into(),
        host_path: host.display().to_string(),
        readonly,
        recursive_read_only: rro,
        // critest sets it; berth has no SELinux to relabel for.
        selinux_relabel: true,
        propagation: p as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_advertises_rro_and_user_namespaces_for_every_handler() {
    let d = Daemon::start();
    let mut rt = d.runtime().await;
    let s = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["", "wasm"]);
    for h in &s.runtime_handlers {
        let f = h.features.as_ref().unwrap();
        assert!(f.recursive_read_only_mounts && f.user_namespaces, "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_read_only_volume_makes_submounts_read_only() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let host = DirWithSubmount::new();
    let pod = pod_config("rro", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;

    use cri::MountPropagation::PropagationPrivate as Private;
    let mut cfg = container_config("rro", vec![volume(&host.path(), true, true, Private)]);
    cfg.mounts.push(cri::Mount {
        container_path: "/plain".into(),
        ..volume(&host.path(), true, false, Private)
    });
    let id = create(&mut rt, &pod_id, &pod, cfg).await.unwrap();
    start(&mut rt, &id).await;

    let probe = "for f in /mnt/top /mnt/tmpfs/f /plain/top /plain/tmpfs/f; do \
                 touch $f 2>/dev/null && echo $f=rw || echo $f=ro; done";
    let (out, code) = sh(&mut rt, &id, probe).await;
    assert_eq!(code, 0);
    assert_eq!(
        out, "/mnt/top=ro\n/mnt/tmpfs/f=ro\n/plain/top=ro\n/plain/tmpfs/f=rw\n",
        "a plain read-only volume leaves its submounts writable; a recursive one does not"
    );
    // critest's check, verbatim.
    let (_, code) = sh(
        &mut rt,
        &id,
        r#"touch /mnt/tmpfs/foo 2>&1 | grep -q "Read-only file system""#,
    )
    .await;
    assert_eq!(code, 0);
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_read_only_needs_readonly_and_private_propagation() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let host = DirWithSubmount::new();
    let pod = pod_config("rro-bad", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;

    use cri::MountPropagation::*;
    for (i, (readonly, propagation, says)) in [
        (
            true,
            PropagationHostToContainer,
            "PROPAGATION_HOST_TO_CONTAINER",
        ),
        (true, PropagationBidirectional, "PROPAGATION_BIDIRECTIONAL"),
        (false, PropagationPrivate, "readonly = true"),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = container_config(
            &format!("bad{i}"),
            vec![volume(&host.path(), readonly, true, propagation)],
        );
        let err = create(&mut rt, &pod_id, &pod, cfg).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("recursive_read_only"), "{err:?}");
        assert!(err.message().contains(says), "{err:?}");
    }
    let listed = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert!(
        listed.is_empty(),
        "refused containers were kept: {listed:?}"
    );
    remove_pod(&mut rt, &pod_id).await;
}

fn userns_options(mode: cri::NamespaceMode, mappings: &[(u32, u32)]) -> cri::NamespaceOption {
    let ids: Vec<cri::IdMapping> = mappings
        .iter()
        .map(|&(container_id, host_id)| cri::IdMapping {
            container_id,
            host_id,
            length: 100000,
        })
        .collect();
    cri::NamespaceOption {
        userns_options: Some(cri::UserNamespace {
            mode: mode as i32,
            uids: ids.clone(),
            gids: ids,
        }),
        ..Default::default()
    }
}

fn with_namespaces(
    mut pod: cri::PodSandboxConfig,
    ns: cri::NamespaceOption,
) -> cri::PodSandboxConfig {
    pod.linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    pod
}

#[tokio::test(flavor = "multi_thread")]
async fn pod_user_namespace_maps_ids_and_idmaps_rootfs_and_volumes() {
    use std::os::unix::fs::MetadataExt;
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let vol = tempfile::tempdir().unwrap();
    std::fs::write(vol.path().join("host-file"), "x").unwrap();
    let ns = userns_options(cri::NamespaceMode::Pod, &[(0, 1000)]);
    let pod = with_namespaces(pod_config("userns", logs.path()), ns.clone());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let status = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod_id.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    let reported = status.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(reported.userns_options, ns.userns_options);

    // As critest asks: the container repeats the pod's options.
    let mut cfg = container_config(
        "userns",
        vec![volume(
            vol.path(),
            false,
            false,
            cri::MountPropagation::PropagationPrivate,
        )],
    );
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    // Ids the pod's user namespace does not map, and options of another namespace, are
    // refused before anything is made.
    let mut outside = cfg.clone();
    let sc = outside
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap();
    sc.run_as_user = Some(cri::Int64Value { value: 200000 });
    let other = userns_options(cri::NamespaceMode::Pod, &[(0, 5000)]);
    let mut differs = cfg.clone();
    differs
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(other);
    let mut host = cfg.clone();
    host.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(userns_options(cri::NamespaceMode::Node, &[]));
    for (bad, says) in [
        (outside, "uid 200000"),
        (differs, "differ"),
        (host, "differ"),
    ] {
        let err = create(&mut rt, &pod_id, &pod, bad).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(says), "{err:?}");
    }
    let id = create(&mut rt, &pod_id, &pod, cfg).await.unwrap();
    start(&mut rt, &id).await;
    let probe = "tr -s ' ' < /proc/self/uid_map | sed 's/^ //'; id -u; \
                 stat -c '%u:%g' /bin/busybox / /etc/hosts /mnt/host-file; \
                 touch /made /mnt/made && echo wrote";
    let (out, code) = sh(&mut rt, &id, probe).await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out, "0 1000 100000\n0\n0:0\n0:0\n0:0\n0:0\nwrote\n");
    // Through the idmapped volume, the container's root writes as host root.
    assert_eq!(vol.path().join("made").metadata().unwrap().uid(), 0);
    // The pod's network namespace belongs to the user namespace: its sysctls belong to the
    // container's root (with the host's, they would show as the overflow uid 65534).
    let (out, code) = sh(&mut rt, &id, "stat -c %u /proc/sys/net/ipv4/ip_forward").await;
    assert_eq!((out.as_str(), code), ("0\n", 0));
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_user_namespace_is_the_hosts() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let ns = userns_options(cri::NamespaceMode::Node, &[]);
    let pod = with_namespaces(pod_config("userns-node", logs.path()), ns);
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let id = create(&mut rt, &pod_id, &pod, container_config("node", vec![]))
        .await
        .unwrap();
    start(&mut rt, &id).await;
    let (out, _) = sh(&mut rt, &id, "cat /proc/self/uid_map").await;
    assert_eq!(out, std::fs::read_to_string("/proc/self/uid_map").unwrap());
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_pod_sandbox_refuses_unsupported_user_namespaces() {
    use cri::NamespaceMode::*;
    let d = Daemon::start();
    let logs = tempfile::tempdir().unwrap();
    let mut rt = d.runtime().await;
    for (ns, says) in [
        (userns_options(Pod, &[(0, 1000), (0, 2000)]), "exactly one"),
        (userns_options(Pod, &[(1, 1000)]), "container ID 0"),
        (userns_options(Container, &[]), "CONTAINER"),
        (userns_options(Target, &[]), "TARGET"),
    ] {
        let pod = with_namespaces(pod_config("userns-bad", logs.path()), ns);
        let err = rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(pod),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(says), "{err:?}");
    }
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "{pods:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn verbose_status_names_the_state_dir_as_critest_reads_it() {
    let d = Daemon::start();
    let mut rt = d.runtime().await;
    let s = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["stateDir"], d.state.display().to_string());
    assert_eq!(config["stateDir"], config["state_dir"]);
}

/// critest's "runtime should support NamespaceMode_POD", step by step: the log directory
/// is a fresh 0700 temp dir's subdir, the container only prints its uid_map and exits.
#[tokio::test(flavor = "multi_thread")]
async fn userns_pod_container_logs_its_uid_map_like_critest() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let host_logs = tempfile::Builder::new()
        .prefix("podLogTest")
        .tempdir()
        .unwrap();
    let pod_logs = host_logs.path().join("user-namespaces-pod");
    std::fs::create_dir_all(&pod_logs).unwrap();
    let ns = userns_options(cri::NamespaceMode::Pod, &[(0, 1000)]);
    let mut pod = with_namespaces(pod_config("user-namespaces-pod", &pod_logs), ns.clone());
    pod.hostname = String::new();
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let mut cfg = container_config("uid-map", vec![]);
    cfg.command = vec!["cat".into(), "/proc/self/uid_map".into()];
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(ns),
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create(&mut rt, &pod_id, &pod, cfg).await.unwrap();
    start(&mut rt, &id).await;
    assert_eq!(
        wait_exited(&mut rt, &id, std::time::Duration::from_secs(30))
            .await
            .exit_code,
        0
    );
    let text = std::fs::read_to_string(pod_logs.join("uid-map.log")).unwrap();
    let fields = text.split_whitespace().collect::<Vec<_>>();
    assert!(fields.ends_with(&["0", "1000", "100000"]), "{text}");
    remove_pod(&mut rt, &pod_id).await;
}

/// The `wasm` handler's pods get user namespaces too: the guest runs in the container's
/// isolation, inside the pod's user namespace.
#[tokio::test(flavor = "multi_thread")]
async fn wasm_guest_runs_in_a_pod_user_namespace() {
    let d = common::cri_daemon();
    pull(&d, WASM_HELLO).await;
    let logs = tempfile::tempdir().unwrap();
    let ns = userns_options(cri::NamespaceMode::Pod, &[(0, 1000)]);
    let pod = with_namespaces(pod_config("userns-wasm", logs.path()), ns);
    let mut rt = d.runtime().await;
    let pod_id = run_pod_with(&mut rt, &pod, "wasm").await;
    let mut cfg = container_config("guest", vec![]);
    cfg.image = Some(cri::ImageSpec {
        image: WASM_HELLO.into(),
        ..Default::default()
    });
    cfg.command = vec![];
    cfg.args = vec!["userns".into()];
    let id = create(&mut rt, &pod_id, &pod, cfg).await.unwrap();
    start(&mut rt, &id).await;
    let status = wait_exited(&mut rt, &id, std::time::Duration::from_secs(30)).await;
    let log = std::fs::read_to_string(logs.path().join("guest.log")).unwrap_or_default();
    assert_eq!(status.exit_code, 0, "{status:?} {log}");
    assert!(log.contains("hello from wasm userns"), "{log}");
    remove_pod(&mut rt, &pod_id).await;
}

/// Namespaced sysctls apply in a pod with a user namespace, network and IPC ones alike.
#[tokio::test(flavor = "multi_thread")]
async fn sysctls_apply_in_a_user_namespace_pod() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let ns = userns_options(cri::NamespaceMode::Pod, &[(0, 1000)]);
    let mut pod = with_namespaces(pod_config("userns-sysctl", logs.path()), ns);
    pod.linux.as_mut().unwrap().sysctls = [
        ("net.ipv4.ip_forward".to_string(), "1".to_string()),
        ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
    ]
    .into();
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let id = create(&mut rt, &pod_id, &pod, container_config("sysctl", vec![]))
        .await
        .unwrap();
    start(&mut rt, &id).await;
    let (out, _) = sh(
        &mut rt,
        &id,
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shm_rmid_forced",
    )
    .await;
    assert_eq!(out, "1\n1\n");
    remove_pod(&mut rt, &pod_id).await;
}
