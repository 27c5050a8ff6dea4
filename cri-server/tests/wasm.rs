//! Wasm containers through the CRI: the per-container decision (annotations, Wasm images,
//! the entrypoint's header), Wasm and native containers side by side in one pod, the
//! guest's output in the CRI log, its exit code, stop, the memory limit, and exec.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{BUSYBOX, pull, start, wait_exited};
use cri_api::v1 as cri;
use tonic::transport::Channel;

const REGISTRY: &str = "127.0.0.1:5000/berth-test";

type Runtime = cri::runtime_service_client::RuntimeServiceClient<Channel>;

struct Pod {
    id: String,
    config: cri::PodSandboxConfig,
    logs: tempfile::TempDir,
}

async fn run_pod(rt: &mut Runtime, name: &str, annotations: &[(&str, &str)]) -> Pod {
    run_pod_with(rt, name, annotations, "").await
}

async fn run_pod_with(
    rt: &mut Runtime,
    name: &str,
    annotations: &[(&str, &str)],
    handler: &str,
) -> Pod {
    let logs = tempfile::tempdir().unwrap();
    let config = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        log_directory: logs.path().display().to_string(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        linux: Some(cri::LinuxPodSandboxConfig::default()),
        ..Default::default()
    };
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    Pod { id, config, logs }
}

struct Ctr<'a> {
    name: &'a str,
    image: &'a str,
    command: &'a [&'a str],
    args: &'a [&'a str],
    memory_limit: i64,
}

async fn create(rt: &mut Runtime, pod: &Pod, c: Ctr<'_>) -> Result<String, tonic::Status> {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod.id.clone(),
        config: Some(cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: c.name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: c.image.into(),
                ..Default::default()
            }),
            command: strings(c.command),
            args: strings(c.args),
            log_path: format!("{}.log", c.name),
            linux: Some(cri::LinuxContainerConfig {
                resources: Some(cri::LinuxContainerResources {
                    memory_limit_in_bytes: c.memory_limit,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        sandbox_config: Some(pod.config.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

async fn status(rt: &mut Runtime, id: &str) -> (cri::ContainerStatus, HashMap<String, String>) {
    let r = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.into(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    (r.status.unwrap(), r.info)
}

fn log_of(pod: &Pod, name: &str) -> String {
    std::fs::read_to_string(pod.logs.path().join(format!("{name}.log"))).unwrap_or_default()
}

async fn wait_for_log(pod: &Pod, name: &str, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log_of(pod, name).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{needle:?} never reached the log:\n{}",
            log_of(pod, name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn runtime_of(info: &HashMap<String, String>) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(&info["info"]).unwrap();
    (
        v["runtime"].as_str().unwrap().to_string(),
        v["runtimeReason"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_pod_runs_wasm_and_native_side_by_side() {
    let d = common::cri_daemon();
    let hello = format!("{REGISTRY}/wasm-hello:compat-smart");
    pull(&d, &hello).await;
    pull(&d, BUSYBOX).await;
    let mut rt = d.runtime().await;
    let pod = run_pod(
        &mut rt,
        "wasm-mixed",
        &[("module.wasm.image/variant", "compat-smart")],
    )
    .await;
    let wasm_id = create(
        &mut rt,
        &pod,
        Ctr {
            name: "app",
            image: &hello,
            command: &[],
            args: &["a", "b"],
            memory_limit: 0,
        },
    )
    .await
    .unwrap();
    let native_id = create(
        &mut rt,
        &pod,
        Ctr {
            name: "sidecar",
            image: BUSYBOX,
            command: &["sh", "-c", "echo native; cat /proc/self/comm"],
            args: &[],
            memory_limit: 0,
        },
    )
    .await
    .unwrap();
    start(&mut rt, &wasm_id).await;
    start(&mut rt, &native_id).await;

    let s = wait_exited(&mut rt, &wasm_id, Duration::from_secs(20)).await;
    assert_eq!((s.exit_code, s.reason.as_str()), (0, "Completed"), "{s:?}");
    assert!(
        log_of(&pod, "app").contains(" stdout F hello from wasm a b"),
        "{}",
        log_of(&pod, "app")
    );
    let (_, info) = status(&mut rt, &wasm_id).await;
    let (runtime, reason) = runtime_of(&info);
    assert_eq!(runtime, "wasm");
    assert!(reason.contains("compat-smart"), "{reason}");

    let s = wait_exited(&mut rt, &native_id, Duration::from_secs(20)).await;
    assert_eq!(s.exit_code, 0, "{s:?}");
    let log = log_of(&pod, "sidecar");
    assert!(log.contains(" stdout F native"), "{log}");
    let (_, info) = status(&mut rt, &native_id).await;
    assert_eq!(runtime_of(&info).0, "native");
}

#[tokio::test(flavor = "multi_thread")]
async fn compat_refuses_a_native_entrypoint_clearly() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let mut rt = d.runtime().await;
    let pod = run_pod(
        &mut rt,
        "wasm-compat",
        &[("module.wasm.image/variant", "compat")],
    )
    .await;
    let e = create(
        &mut rt,
        &pod,
        Ctr {
            name: "sh",
            image: BUSYBOX,
            command: &["sh", "-c", "true"],
            args: &[],
            memory_limit: 0,
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(
        e.message().contains("module.wasm.image/variant=compat")
            && e.message().contains("not a WebAssembly module"),
        "{}",
        e.message()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn oci_wasm_artifact_runs_without_a_rootfs() {
    let d = common::cri_daemon();
    let hello = format!("{REGISTRY}/wasm-hello:oci");
    pull(&d, &hello).await;
    let mut rt = d.runtime().await;
    let pod = run_pod(&mut rt, "wasm-oci", &[]).await;
    let id = create(
        &mut rt,
        &pod,
        Ctr {
            name: "artifact",
            image: &hello,
            command: &[],
            args: &["oci"],
            memory_limit: 0,
        },
    )
    .await
    .unwrap();
    start(&mut rt, &id).await;
    let s = wait_exited(&mut rt, &id, Duration::from_secs(20)).await;
    assert_eq!(s.exit_code, 0, "{s:?}");
    assert!(log_of(&pod, "artifact").contains("hello from wasm oci"));
}

#[tokio::test(flavor = "multi_thread")]
async fn looping_guest_stops_and_exec_runs_wasi_tools() {
    let d = common::cri_daemon();
    let image = format!("{REGISTRY}/wasm-loop:compat");
    pull(&d, &image).await;
    let mut rt = d.runtime().await;
    let pod = run_pod(&mut rt, "wasm-loop", &[]).await;
    let id = create(
        &mut rt,
        &pod,
        Ctr {
            name: "loop",
            image: &image,
            command: &[],
            args: &[],
            memory_limit: 0,
        },
    )
    .await
    .unwrap();
    start(&mut rt, &id).await;
    wait_for_log(&pod, "loop", "wasm loop started").await;

    // Exec runs another WASI module from the container's rootfs …
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["/hello.wasm".into(), "exec".into()],
            timeout: 20,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from wasm exec\n"
    );
    assert_eq!(out.exit_code, 0);
    // … and refuses anything that is not one, saying why.
    let e = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into()],
            timeout: 5,
        })
        .await
        .unwrap_err();
    assert!(e.message().contains("runs WebAssembly"), "{}", e.message());

    let started = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 30,
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the guest ignored SIGTERM for {:?}",
        started.elapsed()
    );
    let (s, _) = status(&mut rt, &id).await;
    assert_eq!(s.exit_code, 143, "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_over_its_memory_limit_is_oom_killed() {
    let d = common::cri_daemon();
    let image = format!("{REGISTRY}/wasm-memhog:compat");
    pull(&d, &image).await;
    let mut rt = d.runtime().await;
    let pod = run_pod(&mut rt, "wasm-oom", &[]).await;
    let id = create(
        &mut rt,
        &pod,
        Ctr {
            name: "memhog",
            image: &image,
            command: &[],
            args: &[],
            memory_limit: 64 << 20,
        },
    )
    .await
    .unwrap();
    start(&mut rt, &id).await;
    let s = wait_exited(&mut rt, &id, Duration::from_secs(60)).await;
    assert_eq!(
        (s.exit_code, s.reason.as_str()),
        (137, "OOMKilled"),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_runtime_handler_detects_per_container() {
    let d = common::cri_daemon();
    // The compat image, but the decision comes from the handler: its label says compat,
    // so use the plain module file of a busybox-free image through the handler alone.
    let hello = format!("{REGISTRY}/wasm-hello:compat-smart");
    pull(&d, &hello).await;
    pull(&d, BUSYBOX).await;
    let mut rt = d.runtime().await;
    let pod = run_pod_with(&mut rt, "wasm-handler", &[], "wasm").await;
    let wasm_id = create(
        &mut rt,
        &pod,
        Ctr {
            name: "app",
            image: &hello,
            command: &[],
            args: &["handler"],
            memory_limit: 0,
        },
    )
    .await
    .unwrap();
    let native_id = create(
        &mut rt,
        &pod,
        Ctr {
            name: "native",
            image: BUSYBOX,
            command: &["echo", "still native"],
            args: &[],
            memory_limit: 0,
        },
    )
    .await
    .unwrap();
    for id in [&wasm_id, &native_id] {
        start(&mut rt, id).await;
    }
    for id in [&wasm_id, &native_id] {
        let s = wait_exited(&mut rt, id, Duration::from_secs(20)).await;
        assert_eq!(s.exit_code, 0, "{s:?}");
    }
    assert!(log_of(&pod, "app").contains("hello from wasm handler"));
    assert!(log_of(&pod, "native").contains("still native"));
    let (_, info) = status(&mut rt, &native_id).await;
    assert_eq!(runtime_of(&info).0, "native");
}
