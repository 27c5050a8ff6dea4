//! The daemon itself: serving on its socket, Version/Status/RuntimeConfig through a tonic
//! client and through the real crictl, config errors, socket ownership, and shutdown.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::Command;

use common::{Daemon, berth_bin};
use cri_api::v1 as cri;

#[tokio::test(flavor = "multi_thread")]
async fn version_names_berth_and_cri_v1() {
    let d = Daemon::start();
    let v = d
        .runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reports_both_conditions_and_the_config() {
    // No CNI config at all: the network is not ready, and says why.
    let empty = tempfile::tempdir().unwrap();
    let d = Daemon::start_with_config(&format!(
        "[cni]\nconf_dir = {:?}\nbin_dirs = [{:?}]\n",
        empty.path(),
        empty.path()
    ));
    let s = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let conds = s.status.unwrap().conditions;
    let runtime = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    assert!(runtime.status);
    let net = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(
        net.message.contains("no CNI network config"),
        "{}",
        net.message
    );

    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["socket"], d.socket.to_str().unwrap());
    assert_eq!(config["cgroup_driver"], "cgroupfs");
    let handlers: Vec<_> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(handlers, ["", "wasm"]);

    // Not verbose: no info.
    let s = d
        .runtime()
        .await
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(s.info.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn network_is_ready_with_a_conflist_and_its_plugins() {
    let conf = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    std::fs::write(
        conf.path().join("10-test.conflist"),
        r#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
    )
    .unwrap();
    for p in ["bridge", "portmap", "loopback"] {
        let f = bin.path().join(p);
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let d = Daemon::start_with_config(&format!(
        "[cni]\nconf_dir = {:?}\nbin_dirs = [{:?}]\n",
        conf.path(),
        bin.path()
    ));
    let s = d
        .runtime()
        .await
        .status(cri::StatusRequest::default())
        .await
        .unwrap()
        .into_inner();
    let conds = s.status.unwrap().conditions;
    assert!(conds.iter().all(|c| c.status), "{conds:?}");
}

/// The kubelet's pod CIDR: kept and shown by Status, rendered into the pod network from
/// the configured template (the network is then ready), and a bad one refused by name.
#[tokio::test(flavor = "multi_thread")]
async fn update_runtime_config_renders_the_pod_cidr_into_the_network() {
    let conf = tempfile::tempdir().unwrap();
    let bin = tempfile::tempdir().unwrap();
    let template = bin.path().join("template.json");
    std::fs::write(
        &template,
        r#"{"cniVersion":"1.0.0","name":"t","plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"{{.PodCIDR}}"}]]}}]}"#,
    )
    .unwrap();
    for p in ["bridge", "loopback"] {
        let f = bin.path().join(p);
        std::fs::write(&f, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let d = Daemon::start_with_config(&format!(
        "[cni]\nconf_dir = {:?}\nbin_dirs = [{:?}]\nconf_template = {:?}\n",
        conf.path(),
        bin.path(),
        template
    ));
    let mut rt = d.runtime().await;
    let update = |cidr: &str| cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig {
                pod_cidr: cidr.into(),
            }),
        }),
    };
    let e = rt
        .update_runtime_config(update("10.77.0.0/33"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    rt.update_runtime_config(update("10.77.0.0/24"))
        .await
        .unwrap();
    let rendered: serde_json::Value =
        serde_json::from_slice(&std::fs::read(conf.path().join("10-berth-net.conflist")).unwrap())
            .unwrap();
    assert_eq!(
        rendered["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
        "10.77.0.0/24"
    );
    let s = rt
        .status(cri::StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.info["podCIDR"], "10.77.0.0/24");
    assert!(
        s.status.unwrap().conditions.iter().all(|c| c.status),
        "the rendered network should be ready"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_config_reports_cgroupfs() {
    let d = Daemon::start();
    let r = d
        .runtime()
        .await
        .runtime_config(cri::RuntimeConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.linux.unwrap().cgroup_driver,
        cri::CgroupDriver::Cgroupfs as i32
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rpcs_not_done_yet_answer_unimplemented_by_name() {
    let d = Daemon::start();
    let mut rt = d.runtime().await;
    let answers = [
        (
            "CheckpointContainer",
            rt.checkpoint_container(cri::CheckpointContainerRequest::default())
                .await
                .map(|_| ()),
        ),
        (
            "CheckpointPod",
            rt.checkpoint_pod(cri::CheckpointPodRequest::default())
                .await
                .map(|_| ()),
        ),
        (
            "RestorePod",
            rt.restore_pod(cri::RestorePodRequest::default())
                .await
                .map(|_| ()),
        ),
    ];
    for (rpc, answer) in answers {
        let e = answer.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unimplemented, "{rpc}");
        assert!(e.message().contains(rpc), "{rpc}: {}", e.message());
    }
    // Refusals are logged at warn, with the RPC's name.
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("RestorePod")),
        "{}",
        d.log()
    );
}

/// Extra RuntimeClass handlers from the config (node e2e's `test-handler`) are listed by
/// Status and accepted by RunPodSandbox; others stay unknown.
#[tokio::test(flavor = "multi_thread")]
async fn configured_runtime_handlers_are_served() {
    let d = Daemon::start_with_config("extra_runtime_handlers = [\"test-handler\"]\n");
    let mut rt = d.runtime().await;
    let status = rt
        .status(cri::StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = status
        .runtime_handlers
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    assert_eq!(names, ["", "wasm", "test-handler"]);
    let logs = tempfile::tempdir().unwrap();
    let cfg = common::host_network_pod("handler", logs.path());
    let run = |handler: &str| cri::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: handler.into(),
    };
    let e = rt.run_pod_sandbox(run("kata")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    let id = rt
        .run_pod_sandbox(run("test-handler"))
        .await
        .unwrap()
        .into_inner()
        .pod_sandbox_id;
    common::remove_pod(&mut rt, &id).await;
}

/// The streaming list RPCs (Kubernetes 1.36) answer what the List calls answer, each
/// object once, in messages of bounded size.
#[tokio::test(flavor = "multi_thread")]
async fn streaming_lists_answer_what_the_lists_answer() {
    let d = Daemon::start();
    let mut rt = d.runtime().await;
    let logs = tempfile::tempdir().unwrap();
    let mut made = Vec::new();
    for i in 0..3 {
        let cfg = common::host_network_pod(&format!("stream-list-{i}"), logs.path());
        made.push(
            rt.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg),
                runtime_handler: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .pod_sandbox_id,
        );
    }
    let mut stream = rt
        .stream_pod_sandboxes(cri::StreamPodSandboxesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        streamed.extend(m.pod_sandboxes.into_iter().map(|p| p.id));
    }
    streamed.sort();
    made.sort();
    assert_eq!(streamed, made);
    let mut containers = rt
        .stream_containers(cri::StreamContainersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = containers.message().await.unwrap().unwrap();
    assert!(first.containers.is_empty());
    assert!(containers.message().await.unwrap().is_none());
    for id in made {
        common::remove_pod(&mut rt, &id).await;
    }
}

#[test]
fn crictl_version_and_info() {
    let d = Daemon::start();
    let out = d.crictl(&["version"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("RuntimeName:  berth"), "{stdout}");
    assert!(stdout.contains("RuntimeApiVersion:  v1"), "{stdout}");

    let out = d.crictl(&["info"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let conds = info["status"]["conditions"].as_array().unwrap();
    let types: Vec<_> = conds.iter().map(|c| c["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["RuntimeReady", "NetworkReady"]);
    assert!(info["config"].is_object(), "{info}");
}

#[test]
fn socket_and_directory_modes() {
    let d = Daemon::start();
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let dir = std::fs::metadata(d.socket.parent().unwrap()).unwrap();
    assert_eq!(dir.permissions().mode() & 0o777, 0o750);
    let root = std::fs::metadata(&d.root).unwrap();
    assert_eq!(root.permissions().mode() & 0o777, 0o700);
}

#[test]
fn a_second_daemon_on_a_live_socket_refuses_to_start() {
    let d = Daemon::start();
    let other = tempfile::tempdir().unwrap();
    let out = Command::new(berth_bin())
        .args(["serve", "--socket"])
        .arg(&d.socket)
        .arg("--root")
        .arg(other.path().join("root"))
        .arg("--state")
        .arg(other.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("berth") && err.contains("already answers"),
        "{err}"
    );
    // The first daemon is unharmed.
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_ok());
}

#[test]
fn a_stale_socket_is_replaced_after_kill_9() {
    let mut d = Daemon::start();
    d.kill9();
    assert!(d.socket.exists(), "kill -9 leaves the socket file behind");
    d.spawn();
    let out = d.crictl(&["version"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sigterm_stops_gracefully_and_removes_the_socket() {
    let mut d = Daemon::start();
    let status = d.stop();
    assert!(status.success(), "{status}");
    assert!(!d.socket.exists());
    assert!(d.log().contains("shutting down"), "{}", d.log());
}

#[test]
fn unknown_config_key_stops_the_daemon_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[cni]\nconf_dirr = \"/etc/cni/net.d\"\n").unwrap();
    let out = Command::new(berth_bin())
        .args(["serve", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("conf_dirr"), "{err}");
    assert!(err.contains(f.to_str().unwrap()), "{err}");
}

#[test]
fn bad_value_stops_the_daemon_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    std::fs::write(&f, "[streaming]\naddress = \"nowhere\"\n").unwrap();
    let out = Command::new(berth_bin())
        .args(["serve", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("streaming.address"), "{err}");
}

#[test]
fn config_default_prints_parseable_defaults() {
    let out = Command::new(berth_bin())
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let c = cri_server::config::Config::parse(&text).unwrap();
    assert_eq!(c, cri_server::config::Config::default());
}

#[test]
fn json_logs_with_a_flag() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let child = Command::new(berth_bin())
        .args([
            "serve",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--socket",
        ])
        .arg(&socket)
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(dir.path().join("state"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(std::time::Instant::now() < deadline, "berth did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stderr).unwrap();
    let mut lines = 0;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert!(v["level"].is_string(), "{line}");
        lines += 1;
    }
    assert!(lines >= 2, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn each_rpc_is_logged_with_its_duration_at_debug() {
    let d = Daemon::start();
    d.runtime()
        .await
        .version(cri::VersionRequest::default())
        .await
        .unwrap();
    // The log line is written when the response completes; give it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let log = d.log();
        if log
            .lines()
            .any(|l| l.contains("rpc=\"Version\"") && l.contains("elapsed_us="))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no RPC log line:\n{log}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
