//! Native containers through the daemon: the stand-in busybox image pulled through the
//! mirror, a pod on the repo's CNI network, and the container lifecycle, logs, exec,
//! stop/remove idempotence and surviving a daemon crash.

mod common;

use std::time::{Duration, Instant};

use common::{BUSYBOX, pod_config, pull, remove_pod, run_pod, status, wait_exited};
use cri_api::v1 as cri;
use tonic::transport::Channel;

type Runtime = cri::runtime_service_client::RuntimeServiceClient<Channel>;

async fn create(
    rt: &mut Runtime,
    pod_id: &str,
    pod: &cri::PodSandboxConfig,
    name: &str,
    cmd: &[&str],
) -> Result<String, tonic::Status> {
    rt.create_container(cri::CreateContainerRequest {
        pod_sandbox_id: pod_id.into(),
        config: Some(cri::ContainerConfig {
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
            linux: Some(cri::LinuxContainerConfig::default()),
            labels: [("app".to_string(), name.to_string())].into(),
            ..Default::default()
        }),
        sandbox_config: Some(pod.clone()),
    })
    .await
    .map(|r| r.into_inner().container_id)
}

#[tokio::test(flavor = "multi_thread")]
async fn run_to_completion_with_logs_and_exit_code() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let pod = pod_config("ctr-exit", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let id = create(
        &mut rt,
        &pod_id,
        &pod,
        "exit3",
        &["sh", "-c", "echo hello; echo oops >&2; exit 3"],
    )
    .await
    .unwrap();
    let s = status(&mut rt, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerCreated as i32);
    assert_eq!(
        s.log_path,
        logs.path().join("exit3.log").display().to_string()
    );

    let mut events = d
        .runtime()
        .await
        .get_container_events(cri::GetEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    let s = wait_exited(&mut rt, &id, Duration::from_secs(30)).await;
    assert_eq!(s.exit_code, 3);
    // The kubelet's evented PLEG hears of the start and of the exit, which nobody asked for.
    let mut seen = Vec::new();
    while !seen.contains(&(cri::ContainerEventType::ContainerStoppedEvent as i32)) {
        let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .unwrap_or_else(|_| panic!("no CONTAINER_STOPPED event within 10 s; seen {seen:?}"))
            .unwrap()
            .unwrap();
        if ev.container_id == id {
            seen.push(ev.container_event_type);
        }
    }
    assert_eq!(
        seen,
        [
            cri::ContainerEventType::ContainerStartedEvent as i32,
            cri::ContainerEventType::ContainerStoppedEvent as i32
        ]
    );
    assert_eq!(s.reason, "Error");
    assert!(s.started_at > 0 && s.finished_at >= s.started_at, "{s:?}");

    let log = std::fs::read_to_string(logs.path().join("exit3.log")).unwrap();
    let records: Vec<(&str, &str)> = log
        .lines()
        .map(|l| {
            let mut f = l.splitn(4, ' ');
            let _ts = f.next().unwrap();
            let stream = f.next().unwrap();
            assert_eq!(f.next().unwrap(), "F");
            (stream, f.next().unwrap())
        })
        .collect();
    assert!(records.contains(&("stdout", "hello")), "{log}");
    assert!(records.contains(&("stderr", "oops")), "{log}");

    // Starting it again is refused; stop and remove are idempotent.
    assert!(
        rt.start_container(cri::StartContainerRequest {
            container_id: id.clone()
        })
        .await
        .is_err()
    );
    for _ in 0..2 {
        rt.stop_container(cri::StopContainerRequest {
            container_id: id.clone(),
            timeout: 1,
        })
        .await
        .unwrap();
    }
    for _ in 0..2 {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
    }
    let e = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_stop_and_list() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let pod = pod_config("ctr-exec", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let id = create(&mut rt, &pod_id, &pod, "top", &["top"])
        .await
        .unwrap();
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .unwrap();
    assert_eq!(
        status(&mut rt, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );

    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sh".into(), "-c".into(), "echo hi; hostname; exit 4".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\nctr-exec\n");
    assert_eq!(out.exit_code, 4);

    // The timeout is enforced by killing the command.
    let start = Instant::now();
    let e = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e:?}");
    assert!(start.elapsed() < Duration::from_secs(10));
    let out = rt
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["pgrep".into(), "sleep".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    if out.exit_code == 0 {
        let ps = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["ps".into(), "-o".into(), "pid,ppid,comm,args".into()],
                timeout: 10,
            })
            .await
            .unwrap()
            .into_inner();
        panic!(
            "the timed-out sleep survived:\n{}",
            String::from_utf8_lossy(&ps.stdout)
        );
    }

    let listed = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                label_selector: [("app".to_string(), "top".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);

    let stats = rt
        .container_stats(cri::ContainerStatsRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let attrs = stats.attributes.unwrap();
    assert_eq!(attrs.id, id);
    assert_eq!(attrs.metadata.unwrap().name, "top");
    let cpu = stats.cpu.unwrap();
    assert!(cpu.timestamp > 0);
    assert!(cpu.usage_core_nano_seconds.unwrap().value > 0);
    let mem = stats.memory.unwrap();
    assert!(mem.timestamp > 0 && mem.working_set_bytes.unwrap().value > 0);
    let listed = rt
        .list_container_stats(cri::ListContainerStatsRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert!(
        listed
            .iter()
            .any(|s| s.attributes.as_ref().unwrap().id == id)
    );
    let pod_stats = rt
        .pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!(pod_stats.linux.unwrap().containers.len(), 1);

    let start = Instant::now();
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 10,
    })
    .await
    .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "top ignores SIGTERM?"
    );
    let s = status(&mut rt, &id).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 143, "{s:?}");

    // Unknown ids: stop and remove succeed, status is NOT_FOUND.
    rt.stop_container(cri::StopContainerRequest {
        container_id: "0".repeat(64),
        timeout: 0,
    })
    .await
    .unwrap();
    rt.remove_container(cri::RemoveContainerRequest {
        container_id: "0".repeat(64),
    })
    .await
    .unwrap();
    remove_pod(&mut rt, &pod_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn containers_survive_a_daemon_crash() {
    let mut d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let pod = pod_config("ctr-crash", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await;
    let id = create(
        &mut rt,
        &pod_id,
        &pod,
        "ticker",
        &["sh", "-c", "while true; do echo tick; sleep 0.1; done"],
    )
    .await
    .unwrap();
    let short = create(
        &mut rt,
        &pod_id,
        &pod,
        "short",
        &["sh", "-c", "sleep 1; exit 7"],
    )
    .await
    .unwrap();
    for c in [&id, &short] {
        rt.start_container(cri::StartContainerRequest {
            container_id: c.to_string(),
        })
        .await
        .unwrap();
    }
    drop(rt);
    d.kill9();
    // While berth is down, one container exits and the other keeps logging.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = logs.path().join("ticker.log");
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = std::fs::read_to_string(&log).unwrap().lines().count();
    assert!(
        after > before,
        "the container stopped logging while berth was down"
    );

    d.spawn();
    let mut rt = d.runtime().await;
    assert_eq!(
        status(&mut rt, &id).await.state,
        cri::ContainerState::ContainerRunning as i32
    );
    let s = wait_exited(&mut rt, &short, Duration::from_secs(30)).await;
    assert_eq!(s.exit_code, 7);
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 2,
    })
    .await
    .unwrap();
    for c in [&id, &short] {
        rt.remove_container(cri::RemoveContainerRequest {
            container_id: c.to_string(),
        })
        .await
        .unwrap();
    }
    remove_pod(&mut rt, &pod_id).await;
}
