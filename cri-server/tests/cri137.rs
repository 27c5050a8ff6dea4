//! What the CRI of Kubernetes 1.33-1.37 added, through the daemon: the metrics RPCs
//! (cAdvisor's series, pod network), pod network stats, in-place pod resize
//! (UpdatePodSandboxResources), image volumes with sub-paths, and the 1.36 image-id rule.

mod common;

use common::{BUSYBOX, pod_config, pull, remove_pod, run_pod};
use cri_api::v1 as cri;
use tonic::transport::Channel;

type Runtime = cri::runtime_service_client::RuntimeServiceClient<Channel>;

fn container(name: &str, cmd: &[&str], mounts: Vec<cri::Mount>) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(cri::ImageSpec {
            image: BUSYBOX.into(),
            ..Default::default()
        }),
        command: cmd.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        mounts,
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

async fn create_and_start(
    rt: &mut Runtime,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    cfg: cri::ContainerConfig,
) -> Result<String, tonic::Status> {
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(cfg),
            sandbox_config: Some(pod.clone()),
        })
        .await?
        .into_inner()
        .container_id;
    common::start(rt, &id).await;
    Ok(id)
}

async fn exec(rt: &mut Runtime, id: &str, cmd: &[&str]) -> (i32, String) {
    let r = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr),
    )
}

/// A pod under a cgroup parent of the test's own, as the kubelet gives one per pod.
fn pod_with_parent(name: &str, logs: &std::path::Path) -> (cri::PodSandboxConfig, String) {
    let mut pod = pod_config(name, logs);
    let parent = format!("/berth-test-{name}-{}", std::process::id());
    pod.linux.get_or_insert_default().cgroup_parent = parent.clone();
    (pod, parent)
}

fn remove_cgroup_parent(parent: &str) {
    for h in [
        "memory",
        "cpu,cpuacct",
        "pids",
        "cpuset",
        "devices",
        "unified",
    ] {
        let _ = std::fs::remove_dir(
            std::path::Path::new("/sys/fs/cgroup")
                .join(h)
                .join(parent.trim_start_matches('/')),
        );
    }
    let _ = std::fs::remove_dir(std::path::Path::new("/sys/fs/cgroup").join(parent));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_describe_and_report_cadvisors_series_with_pod_network() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let (pod, parent) = pod_with_parent("metrics", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let mut app = container("app", &["sleep", "60"], vec![]);
    app.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 80_000_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = create_and_start(&mut rt, &pod_id, &pod, app).await.unwrap();

    let descriptors = rt
        .list_metric_descriptors(cri::ListMetricDescriptorsRequest {})
        .await
        .unwrap()
        .into_inner()
        .descriptors;
    let cpu = descriptors
        .iter()
        .find(|d| d.name == "container_cpu_usage_seconds_total")
        .expect("cpu usage descriptor");
    for label in ["container", "pod", "namespace"] {
        assert!(cpu.label_keys.iter().any(|k| k == label), "{cpu:?}");
    }

    let pods = rt
        .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner()
        .pod_metrics;
    let ours = pods
        .iter()
        .find(|p| p.pod_sandbox_id == pod_id)
        .expect("our pod's metrics");
    // Every series matches its descriptor's labels, or the kubelet drops it.
    let all = ours
        .metrics
        .iter()
        .chain(ours.container_metrics.iter().flat_map(|c| &c.metrics));
    for m in all {
        let d = descriptors
            .iter()
            .find(|d| d.name == m.name)
            .unwrap_or_else(|| panic!("{} has no descriptor", m.name));
        assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
    }
    let c = ours
        .container_metrics
        .iter()
        .find(|c| c.container_id == id)
        .expect("the running container's metrics");
    let labelled = |m: &cri::Metric, key: &str| {
        let d = descriptors.iter().find(|d| d.name == m.name).unwrap();
        let i = d.label_keys.iter().position(|k| k == key).unwrap();
        m.label_values[i].clone()
    };
    let ws = c
        .metrics
        .iter()
        .find(|m| m.name == "container_memory_working_set_bytes")
        .expect("working set");
    assert_eq!(labelled(ws, "container"), "app");
    assert_eq!(labelled(ws, "pod"), "metrics");
    assert_eq!(labelled(ws, "namespace"), "berth-test");
    assert!(ws.value.as_ref().unwrap().value > 0, "{ws:?}");
    let value = |name: &str| {
        c.metrics
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.value.as_ref())
            .map(|v| v.value)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(value("container_processes"), 1);
    // sleep holds stdin, stdout and stderr open.
    assert!(value("container_file_descriptors") >= 3);
    assert!(value("container_fs_inodes_total") > 0);
    assert!(value("container_fs_limit_bytes") > 0);
    // The limit as the kernel holds it: rounded down to whole pages, as cAdvisor shows it.
    assert_eq!(value("container_spec_memory_limit_bytes"), 79_998_976);
    let rx = ours
        .metrics
        .iter()
        .find(|m| m.name == "container_network_receive_bytes_total")
        .expect("the pod's network series");
    assert_eq!(labelled(rx, "interface"), "eth0");

    // The streaming form answers the same pods.
    let mut stream = rt
        .stream_pod_sandbox_metrics(cri::StreamPodSandboxMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        streamed.extend(r.pod_sandbox_metrics.into_iter().map(|p| p.pod_sandbox_id));
    }
    assert!(streamed.contains(&pod_id));

    // ListPodSandboxStats carries the pod's network too.
    let stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = stats.linux.unwrap();
    let net = linux.network.clone().expect("pod network stats");
    assert_eq!(net.default_interface.unwrap().name, "eth0");
    // Memory as the Summary API wants it: faults, and what is left under a limit.
    let c = linux
        .containers
        .iter()
        .find(|c| c.attributes.as_ref().unwrap().id == id)
        .unwrap();
    let memory = c.memory.unwrap();
    assert!(memory.page_faults.unwrap().value > 0, "{memory:?}");
    assert!(memory.major_page_faults.is_some(), "{memory:?}");
    let available = memory.available_bytes.unwrap().value;
    assert!(available > 0 && available < 80_000_000, "{memory:?}");

    remove_pod(&mut rt, &pod_id).await;
    remove_cgroup_parent(&parent);
}

#[tokio::test(flavor = "multi_thread")]
async fn update_pod_sandbox_resources_sets_the_pod_cgroup_limits() {
    let d = common::cri_daemon();
    let logs = tempfile::tempdir().unwrap();
    let (pod, parent) = pod_with_parent("resize", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let resources = cri::LinuxContainerResources {
        memory_limit_in_bytes: 200 << 20,
        cpu_quota: 50_000,
        cpu_period: 100_000,
        cpu_shares: 512,
        ..Default::default()
    };
    let overhead = cri::LinuxContainerResources {
        memory_limit_in_bytes: 20 << 20,
        ..Default::default()
    };
    rt.update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
        pod_sandbox_id: pod_id.clone(),
        overhead: Some(overhead),
        resources: Some(resources),
    })
    .await
    .unwrap();
    let read = |controller: &str, file: &str| {
        let root = std::path::Path::new("/sys/fs/cgroup");
        let v2 = root.join("cgroup.controllers").exists();
        let dir = if v2 {
            root.to_owned()
        } else {
            root.join(controller)
        };
        std::fs::read_to_string(dir.join(parent.trim_start_matches('/')).join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .trim()
            .to_string()
    };
    if std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(read("", "memory.max"), (220u64 << 20).to_string());
        assert_eq!(read("", "cpu.max"), "50000 100000");
    } else {
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (220u64 << 20).to_string()
        );
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.shares"), "512");
    }
    // An unknown pod is NotFound; a pod without a cgroup parent has no limits to set.
    let e = rt
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: "f".repeat(64),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    let plain = pod_config("resize-plain", logs.path());
    let plain_id = run_pod(&mut rt, &plain).await;
    let e = rt
        .update_pod_sandbox_resources(cri::UpdatePodSandboxResourcesRequest {
            pod_sandbox_id: plain_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
    remove_pod(&mut rt, &plain_id).await;
    remove_pod(&mut rt, &pod_id).await;
    remove_cgroup_parent(&parent);
}

fn image_mount(at: &str, image: &str, sub_path: &str) -> cri::Mount {
    cri::Mount {
        container_path: at.into(),
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        image_sub_path: sub_path.into(),
        readonly: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn image_volumes_mount_the_image_or_a_sub_path_read_only() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let image_id = d
        .images()
        .await
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap()
        .id;
    let logs = tempfile::tempdir().unwrap();
    let pod = pod_config("imgvol", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let id = create_and_start(
        &mut rt,
        &pod_id,
        &pod,
        container(
            "reader",
            &["sleep", "60"],
            vec![
                // The kubelet names the image by id.
                image_mount("/whole", &image_id, ""),
                image_mount("/etc-only", BUSYBOX, "/etc"),
            ],
        ),
    )
    .await
    .unwrap();
    let (code, out) = exec(
        &mut rt,
        &id,
        &["cat", "/whole/etc/passwd", "/etc-only/passwd"],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.matches("root:x:0:0").count(), 2, "{out}");
    let (code, out) = exec(&mut rt, &id, &["ls", "/etc-only/"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("bin"), "only the sub-path is mounted: {out}");
    let (code, out) = exec(&mut rt, &id, &["touch", "/whole/new"]).await;
    assert_ne!(code, 0, "an image volume must be read-only: {out}");
    // ContainerStatus names each image volume's image by the id PullImage gave.
    let status = common::status(&mut rt, &id).await;
    let whole = status
        .mounts
        .iter()
        .find(|m| m.container_path == "/whole")
        .unwrap();
    assert_eq!(whole.image.as_ref().unwrap().image_ref, image_id);
    let etc = status
        .mounts
        .iter()
        .find(|m| m.container_path == "/etc-only")
        .unwrap();
    assert_eq!(etc.image_sub_path, "/etc");
    // Nothing of it shows on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("image-volumes"), "{mounts}");

    for (mount, what) in [
        (
            image_mount("/x", "registry.k8s.io/not-pulled:1", ""),
            "not pulled",
        ),
        (image_mount("/x", BUSYBOX, "no/such/dir"), "does not exist"),
        (image_mount("/x", BUSYBOX, "../../etc"), ".."),
        (
            cri::Mount {
                readonly: false,
                ..image_mount("/x", BUSYBOX, "")
            },
            "read-only",
        ),
    ] {
        let e = rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(container("bad", &["true"], vec![mount])),
                sandbox_config: Some(pod.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains(what), "{e}");
    }
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_image_has_one_id_everywhere() {
    let d = common::cri_daemon();
    let pulled = d
        .images()
        .await
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: BUSYBOX.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    let listed = d
        .images()
        .await
        .list_images(cri::ListImagesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .images;
    let image = listed
        .iter()
        .find(|i| i.repo_tags.iter().any(|t| t == BUSYBOX))
        .unwrap();
    assert_eq!(image.id, pulled);
    let logs = tempfile::tempdir().unwrap();
    let pod = pod_config("imageid", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let id = create_and_start(
        &mut rt,
        &pod_id,
        &pod,
        container("c", &["sleep", "60"], vec![]),
    )
    .await
    .unwrap();
    let status = common::status(&mut rt, &id).await;
    assert_eq!(status.image_id, pulled);
    let listed = rt
        .list_containers(cri::ListContainersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .containers;
    let c = listed.iter().find(|c| c.id == id).unwrap();
    assert_eq!(c.image_id, pulled);
    remove_pod(&mut rt, &pod_id).await;
}

/// A CDI spec for a stand-in device (the host's /dev/null as `/dev/fake0`), with env, a
/// mount, and hooks that leave a trace on the host.
fn cdi_spec(trace: &std::path::Path) -> String {
    format!(
        r#"{{
  "cdiVersion": "0.6.0",
  "kind": "berth.test/fake",
  "containerEdits": {{ "env": ["FAKE_VENDOR=berth"] }},
  "devices": [{{
    "name": "dev0",
    "containerEdits": {{
      "env": ["FAKE_DEVICE=dev0"],
      "deviceNodes": [{{ "path": "/dev/fake0", "hostPath": "/dev/null", "permissions": "rw" }}],
      "mounts": [{{ "hostPath": "{trace}", "containerPath": "/run/fake", "options": ["ro", "bind"] }}],
      "hooks": [
        {{ "hookName": "createRuntime", "path": "/bin/sh",
           "args": ["sh", "-c", "cat > {trace}/created"] }},
        {{ "hookName": "poststop", "path": "/bin/sh",
           "args": ["sh", "-c", "touch {trace}/stopped"] }}
      ]
    }}
  }}]
}}"#,
        trace = trace.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn cdi_devices_bring_their_nodes_env_mounts_and_hooks() {
    let specs = tempfile::tempdir().unwrap();
    let trace = tempfile::tempdir().unwrap();
    std::fs::write(specs.path().join("fake.json"), cdi_spec(trace.path())).unwrap();
    let d = common::Daemon::start_with_config(&format!(
        "cdi_spec_dirs = [{:?}]\n{}[registry.hosts.\"127.0.0.1:5000\"]\ninsecure = true\n{}",
        specs.path(),
        common::stand_in_registry(),
        common::cni_config()
    ));
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let pod = pod_config("cdi", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let mut cfg = container("gpu-user", &["sleep", "60"], vec![]);
    cfg.cdi_devices = vec![cri::CdiDevice {
        name: "berth.test/fake=dev0".into(),
    }];
    // A plain CRI device beside it.
    cfg.devices = vec![cri::Device {
        container_path: "/dev/plain-zero".into(),
        host_path: "/dev/zero".into(),
        permissions: "r".into(),
    }];
    let id = create_and_start(&mut rt, &pod_id, &pod, cfg).await.unwrap();
    let created = std::fs::read_to_string(trace.path().join("created")).unwrap();
    assert!(
        created.contains(&id),
        "the hook reads the OCI state: {created}"
    );

    let (code, out) = exec(
        &mut rt,
        &id,
        &[
            "sh",
            "-c",
            "echo $FAKE_VENDOR $FAKE_DEVICE; echo x > /dev/fake0 && echo wrote; \
             head -c 4 /dev/plain-zero | wc -c; ls /run/fake",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("berth dev0"), "{out}");
    assert!(out.contains("wrote"), "{out}");
    assert!(out.contains("4"), "{out}");
    assert!(
        out.contains("created"),
        "the CDI mount shows the host dir: {out}"
    );

    // Unknown devices are refused by name, before anything is made.
    let mut bad = container("bad", &["true"], vec![]);
    bad.cdi_devices = vec![cri::CdiDevice {
        name: "berth.test/fake=dev9".into(),
    }];
    let e = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(bad),
            sandbox_config: Some(pod.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("dev9"), "{e}");

    remove_pod(&mut rt, &pod_id).await;
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    assert!(
        trace.path().join("stopped").exists(),
        "the poststop hook ran"
    );
}
