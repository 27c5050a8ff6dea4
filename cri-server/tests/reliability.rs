//! Bad input and crashes: what a daemon killed inside CreateContainer leaves is removed at
//! the next start, ExecSync output fits the gRPC message limit, profile files cannot hang a
//! call, metadata is bounded, pod ids resolve by prefix, names the CNI plugins cannot take
//! are refused before any plugin runs, and a failed or raced CreateContainer leaves nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{BUSYBOX, Daemon, host_network_pod, pod_config, pull, remove_pod};
use cri_api::v1 as cri;
use tonic::Code;
use tonic::transport::Channel;

type Runtime = cri::runtime_service_client::RuntimeServiceClient<Channel>;

async fn run_pod(rt: &mut Runtime, cfg: &cri::PodSandboxConfig) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

fn container_config(name: &str, cmd: &[&str]) -> cri::ContainerConfig {
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
        linux: Some(cri::LinuxContainerConfig::default()),
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

/// The directories of `<parent>/<id>` in every mounted cgroup hierarchy that exist.
fn cgroup_dirs(parent: &str, id: &str) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            (fstype == "cgroup" || fstype == "cgroup2").then(|| left.split_whitespace().nth(4))?
        })
        .map(|mp| Path::new(mp).join(parent.trim_start_matches('/')).join(id))
        .filter(|p| p.exists())
        .collect()
}

/// Processes whose command line mentions `needle` (monitors name their state dir).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Entries of `dir`, trash and the empty layer aside.
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "empty-layer")
                .collect()
        })
        .unwrap_or_default()
}

/// A daemon killed between making a container (state dir, writable layer, cgroup, a
/// monitor holding the process before execve) and committing its record: the next start
/// removes all of it and says so, and leaves a committed container alone.
#[tokio::test(flavor = "multi_thread")]
async fn a_container_whose_record_never_committed_is_removed_at_the_next_start() {
    let mut d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let pod = host_network_pod("rel-orphan", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await.unwrap();
    let kept = create(
        &mut rt,
        &pod_id,
        &pod,
        container_config("kept", &["sleep", "3600"]),
    )
    .await
    .unwrap();
    common::start(&mut rt, &kept).await;
    let orphan = create(
        &mut rt,
        &pod_id,
        &pod,
        container_config("orphan", &["sleep", "3600"]),
    )
    .await
    .unwrap();
    let orphan_state = d.state.join("containers").join(&orphan);
    let orphan_layer = d.root.join("containers").join(&orphan);
    assert!(!cgroup_dirs("/berth", &orphan).is_empty());
    assert!(!processes_mentioning(&orphan).is_empty());

    // As if the daemon had died right before the commit: everything made, no record.
    d.kill9();
    let meta = meta_store::MetaStore::open(&d.root.join("meta.redb")).unwrap();
    assert!(
        meta.delete::<cri_server::containers::ContainerRecord>(&orphan)
            .unwrap()
    );
    drop(meta);
    d.spawn();

    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && (orphan_state.exists()
            || orphan_layer.exists()
            || !processes_mentioning(&orphan).is_empty())
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!orphan_state.exists(), "state dir left: {orphan_state:?}");
    assert!(!orphan_layer.exists(), "layer dir left: {orphan_layer:?}");
    assert_eq!(cgroup_dirs("/berth", &orphan), Vec::<PathBuf>::new());
    assert_eq!(processes_mentioning(&orphan), Vec::<i32>::new());
    assert!(
        d.log()
            .contains("removed what a crash left of a container being created"),
        "{}",
        d.log()
    );

    // The committed one is untouched and still running.
    let mut rt = d.runtime().await;
    let s = rt
        .container_status(cri::ContainerStatusRequest {
            container_id: kept.clone(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    remove_pod(&mut rt, &pod_id).await;
}

/// A writable layer dir with no state dir and no record (the Wasm runner's files are made
/// before the state dir) goes at start as well.
#[tokio::test(flavor = "multi_thread")]
async fn an_unowned_writable_layer_is_removed_at_start() {
    let mut d = Daemon::start();
    d.kill9();
    let stray = d.root.join("containers").join("ab".repeat(32));
    std::fs::create_dir_all(stray.join("wasm")).unwrap();
    std::fs::write(stray.join("wasm/oom"), "").unwrap();
    d.spawn();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stray.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!stray.exists());
    assert_eq!(entries(&d.root.join("containers")), Vec::<String>::new());
}

/// ExecSync keeps at most 15 MiB of stdout and stderr together, so the response always
/// fits the 16 MiB message limit of the kubelet and crictl.
#[tokio::test(flavor = "multi_thread")]
async fn exec_sync_output_is_capped_to_fit_the_message_limit() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let pod = host_network_pod("rel-exec", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await.unwrap();
    let id = create(
        &mut rt,
        &pod_id,
        &pod,
        container_config("big", &["sleep", "3600"]),
    )
    .await
    .unwrap();
    common::start(&mut rt, &id).await;
    const CAP: usize = 15 << 20;
    for (cmd, expect_out, expect_err) in [
        ("head -c 20000000 /dev/zero", CAP, 0),
        (
            "head -c 50000000 /dev/zero & head -c 50000000 /dev/zero >&2; wait",
            usize::MAX,
            usize::MAX,
        ),
    ] {
        let r = rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sh".into(), "-c".into(), cmd.into()],
                timeout: 60,
            })
            .await
            .unwrap_or_else(|e| panic!("{cmd}: {e}"))
            .into_inner();
        assert_eq!(r.exit_code, 0);
        assert_eq!(r.stdout.len() + r.stderr.len(), CAP, "{cmd}");
        if expect_out != usize::MAX {
            assert_eq!((r.stdout.len(), r.stderr.len()), (expect_out, expect_err));
        }
    }
    // crictl (16 MiB receive limit) takes it too.
    let out = d.crictl(&["exec", "-s", &id, "sh", "-c", "head -c 20000000 /dev/zero"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // (crictl ends what it prints with a newline or two of its own.)
    assert!(
        (CAP..CAP + 4).contains(&out.stdout.len()),
        "{}",
        out.stdout.len()
    );
    remove_pod(&mut rt, &pod_id).await;
}

/// A Localhost seccomp profile that is a FIFO is refused at once, and the pod's other
/// calls go on as usual.
#[tokio::test(flavor = "multi_thread")]
async fn a_seccomp_profile_that_is_a_fifo_is_refused_without_hanging() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let fifo = logs.path().join("profile.json");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let pod = host_network_pod("rel-fifo", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await.unwrap();
    let mut cfg = container_config("fifo", &["true"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::Localhost as i32,
                localhost_ref: fifo.display().to_string(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let started = Instant::now();
    let e = create(&mut rt, &pod_id, &pod, cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("not a regular file"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The pod is not stuck.
    let ok = create(&mut rt, &pod_id, &pod, container_config("after", &["true"])).await;
    assert!(ok.is_ok(), "{ok:?}");
    remove_pod(&mut rt, &pod_id).await;
}

/// Labels and annotations: at most 256 KiB per object, and all pods together within a
/// budget, so ListPodSandbox stays under the message limit however many pods there are.
#[tokio::test(flavor = "multi_thread")]
async fn metadata_is_bounded_per_object_and_per_node() {
    let d = Daemon::start();
    let logs = tempfile::tempdir().unwrap();
    let mut rt = d.runtime().await;
    let mut too_big = host_network_pod("rel-meta-big", logs.path());
    too_big.annotations = [("a".to_string(), "x".repeat(9 << 20))].into();
    let e = run_pod(&mut rt, &too_big).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("labels and annotations"), "{e}");

    let mut made = Vec::new();
    let refused = loop {
        let mut cfg = host_network_pod(&format!("rel-meta-{}", made.len()), logs.path());
        cfg.annotations = [("a".to_string(), "x".repeat(250 << 10))].into();
        match run_pod(&mut rt, &cfg).await {
            Ok(id) => made.push(id),
            Err(e) => break e,
        }
        assert!(
            made.len() < 100,
            "no budget reached after 100 pods of 250 KiB"
        );
    };
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    // Every list still fits.
    let listed = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert_eq!(listed.len(), made.len());
    let out = d.crictl(&["pods", "-q"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in made {
        remove_pod(&mut rt, &id).await;
    }
}

/// crictl's short ids name pods as they name containers, and Stop/Remove of an unknown id
/// stay an idempotent OK.
#[tokio::test(flavor = "multi_thread")]
async fn pod_ids_resolve_by_unique_prefix() {
    let d = Daemon::start();
    let logs = tempfile::tempdir().unwrap();
    let mut rt = d.runtime().await;
    let id = run_pod(&mut rt, &host_network_pod("rel-prefix", logs.path()))
        .await
        .unwrap();
    let short = &id[..12];
    let out = d.crictl(&["stopp", short]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: short.into(),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .status
        .unwrap();
    assert_eq!(s.id, id);
    assert_eq!(s.state, cri::PodSandboxState::SandboxNotready as i32);

    // Stop and Remove of an id berth does not know are an idempotent OK, whatever its
    // form (critest's idempotence specs send UUIDs).
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "b281ef3a-b685-42b7-8f7c-e77ec0c0e649".into(),
    })
    .await
    .unwrap();
    for unknown_full in ["0".repeat(64), "f".repeat(64)] {
        if unknown_full != id {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: unknown_full.clone(),
            })
            .await
            .unwrap();
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: unknown_full,
            })
            .await
            .unwrap();
        }
    }
    let out = d.crictl(&["rmp", short]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        rt.list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .unwrap()
            .into_inner()
            .items
            .is_empty()
    );
}

/// A 1 MiB pod name or one with a NUL would fail inside the CNI plugins (and their
/// clean-up DEL with it, leaving a cached attachment forever): refused before they run.
#[tokio::test(flavor = "multi_thread")]
async fn names_the_cni_plugins_cannot_take_are_refused_first() {
    let d = common::cri_daemon();
    let logs = tempfile::tempdir().unwrap();
    let mut rt = d.runtime().await;
    let long = "p".repeat(1 << 20);
    for (field, name, namespace) in [
        ("name", long.as_str(), "ns"),
        ("name", "a\0b", "ns"),
        ("namespace", "ok", "n\0s"),
    ] {
        let mut cfg = pod_config(name, logs.path());
        cfg.hostname = "rel-names".into();
        cfg.metadata.as_mut().unwrap().namespace = namespace.into();
        let e = run_pod(&mut rt, &cfg).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        assert!(
            e.message().contains(&format!("pod's {field}")),
            "{}",
            e.message()
        );
    }
    assert_eq!(entries(&d.root.join("cni-results")), Vec::<String>::new());
    assert_eq!(entries(&d.state.join("pods")), Vec::<String>::new());
}

/// A CreateContainer that fails (here: its pod's log directory does not exist) leaves no
/// directory of the container behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_create_leaves_no_directories() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let pod = host_network_pod("rel-failed", &logs.path().join("missing"));
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await.unwrap();
    let e = create(&mut rt, &pod_id, &pod, container_config("nolog", &["true"]))
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert_eq!(entries(&d.root.join("containers")), Vec::<String>::new());
    assert_eq!(entries(&d.state.join("containers")), Vec::<String>::new());
    remove_pod(&mut rt, &pod_id).await;
}

/// CreateContainer racing StopPodSandbox either wins (and its container is then in the
/// stopped pod's list, not running) or is told the pod was stopped: never an internal
/// error, and no container is left running.
#[tokio::test(flavor = "multi_thread")]
async fn create_racing_a_pod_stop_is_failed_precondition() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let mut rt = d.runtime().await;
    for round in 0..8 {
        let mut pod = pod_config(&format!("rel-race-{round}"), logs.path());
        pod.hostname = "rel-race".into();
        let pod_id = run_pod(&mut rt, &pod).await.unwrap();
        let mut creator = d.runtime().await;
        let (pod2, id2) = (pod.clone(), pod_id.clone());
        let create = tokio::spawn(async move {
            create(
                &mut creator,
                &id2,
                &pod2,
                container_config("racer", &["sleep", "3600"]),
            )
            .await
        });
        // Spread the stop over the create's duration from round to round.
        tokio::time::sleep(Duration::from_millis(round * 2)).await;
        rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap();
        match create.await.unwrap() {
            Ok(id) => {
                let s = rt
                    .container_status(cri::ContainerStatusRequest {
                        container_id: id,
                        verbose: false,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .status
                    .unwrap();
                assert_ne!(s.state, cri::ContainerState::ContainerRunning as i32);
            }
            Err(e) => assert_eq!(e.code(), Code::FailedPrecondition, "round {round}: {e}"),
        }
        remove_pod(&mut rt, &pod_id).await;
    }
    assert_eq!(entries(&d.root.join("containers")), Vec::<String>::new());
}

/// The request's stop signal (Kubernetes 1.33+) is what StopContainer sends and what
/// ContainerStatus reports; a value the CRI does not define is refused.
#[tokio::test(flavor = "multi_thread")]
async fn the_requests_stop_signal_is_sent_and_reported() {
    let d = common::cri_daemon();
    pull(&d, BUSYBOX).await;
    let logs = tempfile::tempdir().unwrap();
    let pod = host_network_pod("rel-signal", logs.path());
    let mut rt = d.runtime().await;
    let pod_id = run_pod(&mut rt, &pod).await.unwrap();
    let mut cfg = container_config(
        "usr1",
        &[
            "sh",
            "-c",
            "trap 'exit 7' USR1; echo ready; while true; do sleep 0.05; done",
        ],
    );
    cfg.stop_signal = cri::Signal::Sigusr1 as i32;
    let id = create(&mut rt, &pod_id, &pod, cfg.clone()).await.unwrap();
    common::start(&mut rt, &id).await;
    let log = logs.path().join("usr1.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("ready")
    {
        assert!(Instant::now() < deadline, "the container never got ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rt.stop_container(cri::StopContainerRequest {
        container_id: id.clone(),
        timeout: 20,
    })
    .await
    .unwrap();
    let s = common::wait_exited(&mut rt, &id, Duration::from_secs(5)).await;
    assert_eq!(s.exit_code, 7, "the trap for SIGUSR1 did not run: {s:?}");
    assert_eq!(s.stop_signal, cri::Signal::Sigusr1 as i32);

    cfg.metadata.as_mut().unwrap().name = "bad-signal".into();
    cfg.stop_signal = 999;
    let e = create(&mut rt, &pod_id, &pod, cfg).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(e.message().contains("stop_signal"), "{e}");
    remove_pod(&mut rt, &pod_id).await;
}
