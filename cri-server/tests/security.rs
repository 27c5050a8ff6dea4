//! Mount and identity isolation through the daemon: recursive read-only volumes (a host
//! dir with a tmpfs under it) and the requests CreateContainer must refuse.

mod common;

use std::path::{Path, PathBuf};

use common::Daemon;
use k8s_cri::v1 as cri;
use tonic::transport::Channel;

const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

type Runtime = cri::runtime_service_client::RuntimeServiceClient<Channel>;

fn daemon() -> Daemon {
    Daemon::start_with_config(&format!(
        "{}{}",
        common::stand_in_registry(),
        common::cni_config()
    ))
}

async fn pull(d: &Daemon) {
    d.images()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
}

fn pod_config(name: &str, log_dir: &Path) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(cri::DnsConfig::default()),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

async fn run_pod(rt: &mut Runtime, cfg: &cri::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .pod_sandbox_id
}

async fn remove_pod(rt: &mut Runtime, pod_id: &str) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.into(),
    })
    .await
    .unwrap();
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
async fn status_advertises_recursive_read_only_mounts_for_every_handler() {
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
        assert!(f.recursive_read_only_mounts, "{h:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_read_only_volume_makes_submounts_read_only() {
    let d = daemon();
    pull(&d).await;
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
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();

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
    let d = daemon();
    pull(&d).await;
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
