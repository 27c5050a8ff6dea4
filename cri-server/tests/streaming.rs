//! Exec and PortForward through the real daemon and the real crictl, over both of
//! crictl's transports (SPDY/3.1 and WebSocket): a busybox container in a pod on the
//! repo's CNI network, and a TCP server inside the pod's network namespace.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BUSYBOX, Daemon, pod_config};
use cri_api::v1 as cri;
use tonic::Code;
use tonic::transport::Channel;

const TRANSPORTS: [&str; 2] = ["spdy", "websocket"];

type Runtime = cri::runtime_service_client::RuntimeServiceClient<Channel>;

/// Stops and removes the pod when dropped, even when the test fails.
struct Pod<'a> {
    daemon: &'a Daemon,
    id: String,
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let _ = self.daemon.crictl(&["stopp", &self.id]);
        let _ = self.daemon.crictl(&["rmp", "-f", &self.id]);
    }
}

async fn run_pod<'a>(
    d: &'a Daemon,
    rt: &mut Runtime,
    name: &str,
) -> (Pod<'a>, cri::PodSandboxConfig) {
    let cfg = pod_config(name, &d.dir.path().join("logs"));
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    (Pod { daemon: d, id }, cfg)
}

async fn sleeping_container(
    d: &Daemon,
    rt: &mut Runtime,
    pod: &Pod<'_>,
    cfg: &cri::PodSandboxConfig,
) -> String {
    container(d, rt, pod, cfg, "sleeper", &["sleep", "3600"], false).await
}

async fn container(
    d: &Daemon,
    rt: &mut Runtime,
    pod: &Pod<'_>,
    cfg: &cri::PodSandboxConfig,
    name: &str,
    cmd: &[&str],
    stdin_once: bool,
) -> String {
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
        .expect("PullImage");
    let id = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: BUSYBOX.into(),
                    ..Default::default()
                }),
                command: cmd.iter().map(|c| c.to_string()).collect(),
                stdin: stdin_once,
                stdin_once,
                linux: Some(cri::LinuxContainerConfig::default()),
                ..Default::default()
            }),
            sandbox_config: Some(cfg.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    rt.start_container(cri::StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    id
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs crictl with `input` on its stdin.
fn crictl_with_input(d: &Daemon, args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = d
        .crictl_command()
        .arg("--timeout=30s")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crictl");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_validated_before_a_url_is_minted() {
    let d = Daemon::start();
    let mut rt = d.runtime().await;
    let exec = |tty, stdin, stdout, stderr| cri::ExecRequest {
        container_id: "nope".into(),
        cmd: vec!["true".into()],
        tty,
        stdin,
        stdout,
        stderr,
    };
    let code = |r: Result<tonic::Response<cri::ExecResponse>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(rt.exec(exec(true, false, true, true)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(rt.exec(exec(false, false, false, false)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(rt.exec(exec(false, false, true, true)).await),
        Code::NotFound
    );
    let attach = rt
        .attach(cri::AttachRequest {
            container_id: "nope".into(),
            stdout: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(attach.code(), Code::NotFound);
    let attach = rt
        .attach(cri::AttachRequest {
            container_id: "nope".into(),
            tty: true,
            stderr: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(attach.code(), Code::InvalidArgument);
    let pf = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "nope".into(),
            port: vec![80],
        })
        .await
        .unwrap_err();
    assert_eq!(pf.code(), Code::NotFound);
}

/// A raw HTTP request; returns the status line.
fn http_status(url: &str, extra: &str) -> String {
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn urls_are_single_use_and_negotiation_failures_name_what_we_speak() {
    let d = common::cri_daemon();
    let mut rt = d.runtime().await;
    let (pod, _) = run_pod(&d, &mut rt, "stream-urls").await;
    let url = |rt: &mut Runtime| {
        let mut rt = rt.clone();
        let id = pod.id.clone();
        async move {
            rt.port_forward(cri::PortForwardRequest {
                pod_sandbox_id: id,
                port: vec![80],
            })
            .await
            .unwrap()
            .into_inner()
            .url
        }
    };
    let first = url(&mut rt).await;
    assert!(first.starts_with("http://127.0.0.1:"), "{first}");
    assert!(first.contains("/portforward/"), "{first}");
    // No upgrade: refused, and the token is spent.
    assert!(http_status(&first, "").contains(" 400 "));
    assert!(http_status(&first, "").contains(" 404 "));
    let base = first.rsplit_once('/').unwrap().0;
    assert!(http_status(&format!("{base}/0123456789abcdef"), "").contains(" 404 "));
    // A protocol we do not speak: 403 naming the ones we do.
    let second = url(&mut rt).await;
    let rest = second.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: portforward.k8s.io/v9\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(
        out.contains("X-Accepted-Stream-Protocol-Versions: portforward.k8s.io"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_over_spdy_and_websocket() {
    let d = common::cri_daemon();
    let mut rt = d.runtime().await;
    let (pod, cfg) = run_pod(&d, &mut rt, "stream-exec").await;
    let cid = sleeping_container(&d, &mut rt, &pod, &cfg).await;
    for transport in TRANSPORTS {
        let t = format!("--transport={transport}");
        let out = d.crictl(&["exec", &t, &cid, "echo", "-n", "hello"]);
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hello", "{transport}");

        let out = d.crictl(&[
            "exec",
            &t,
            &cid,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 3",
        ]);
        // crictl itself exits 1 and names the exit code the status message carried.
        assert!(!out.status.success(), "{transport}");
        assert!(
            text(&out.stderr).contains("command terminated with exit code 3"),
            "{transport}: {}",
            text(&out.stderr)
        );
        assert_eq!(text(&out.stdout), "out\n", "{transport}");
        assert!(
            text(&out.stderr).contains("err\n"),
            "{transport}: {}",
            text(&out.stderr)
        );

        // Far more than one 64 KiB window: a Go client never sends WINDOW_UPDATE.
        let out = d.crictl(&["exec", &t, &cid, "head", "-c", "3000000", "/dev/zero"]);
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(out.stdout.len(), 3_000_000, "{transport}");

        // stdin to the process, and its EOF.
        let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let out = crictl_with_input(&d, &["exec", "-i", &t, &cid, "cat"], &input);
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(out.stdout.len(), input.len(), "{transport}");
        assert!(out.stdout == input, "{transport}: stdin came back altered");
    }
}

/// Where the daemon pins the pod's network namespace.
fn netns_of(d: &Daemon, pod_id: &str) -> PathBuf {
    d.state.join("pods").join(pod_id).join("ns/net")
}

/// A TCP server on 127.0.0.1:`port` inside the namespace: it reads the request to EOF,
/// then answers with `reply_len` bytes followed by how many bytes it read.
fn serve_in_netns(netns: &Path, port: u16, reply_len: usize) {
    let ns = std::fs::File::open(netns).unwrap();
    let listener = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        TcpListener::bind(("127.0.0.1", port)).expect("bind in the pod")
    })
    .join()
    .unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let _ = conn.read_to_end(&mut got);
                let _ = conn.write_all(&vec![b'x'; reply_len]);
                let _ = write!(conn, "|read {}", got.len());
            });
        }
    });
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One round trip through a forwarded local port.
fn round_trip(local: u16, send: usize) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", local))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.write_all(&vec![b'a'; send])?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_port_forward_reaches_localhost_in_the_pod() {
    let d = common::cri_daemon();
    let mut rt = d.runtime().await;
    let (pod, _) = run_pod(&d, &mut rt, "stream-pf").await;
    let pod_port = 18080;
    // Only inside the pod: the host's loopback has nothing on this port.
    serve_in_netns(&netns_of(&d, &pod.id), pod_port, 1_000_000);
    for transport in TRANSPORTS {
        let local = free_port();
        let mut crictl = d
            .crictl_command()
            .args(["port-forward", &format!("--transport={transport}"), &pod.id])
            .arg(format!("{local}:{pod_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        let first = loop {
            match round_trip(local, 10) {
                Ok(out) => break out,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("{transport}: port-forward never answered: {e}"),
            }
        };
        let tail = |out: &[u8]| text(&out[out.len().saturating_sub(20)..]);
        assert_eq!(first.len(), 1_000_000 + "|read 10".len(), "{transport}");
        assert!(tail(&first).ends_with("|read 10"), "{transport}");
        // Several connections at once, each with a large upload.
        let uploads: Vec<_> = (0..4)
            .map(|i| std::thread::spawn(move || round_trip(local, 300_000 + i)))
            .collect();
        for (i, u) in uploads.into_iter().enumerate() {
            let out = u.join().unwrap().unwrap();
            assert!(
                tail(&out).ends_with(&format!("|read {}", 300_000 + i)),
                "{transport}"
            );
        }
        let _ = crictl.kill();
        let _ = crictl.wait();
    }
    // A port nobody listens on: the error comes back to the client, the forward stays up.
    let local = free_port();
    let mut crictl = d
        .crictl_command()
        .args(["port-forward", &pod.id])
        .arg(format!("{local}:1"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let out = round_trip(local, 1).unwrap_or_default();
    assert!(out.is_empty());
    let _ = crictl.kill();
    let mut err = String::new();
    let _ = crictl.stderr.take().unwrap().read_to_string(&mut err);
    let _ = crictl.wait();
    assert!(err.contains("error forwarding port 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_attach_with_stdin_once_over_spdy_and_websocket() {
    let d = common::cri_daemon();
    let mut rt = d.runtime().await;
    let (pod, cfg) = run_pod(&d, &mut rt, "stream-attach").await;
    for transport in TRANSPORTS {
        // As critest does: sh reading its stdin, attached once; closing stdin ends it.
        let name = format!("shell-{transport}");
        let cid = container(&d, &mut rt, &pod, &cfg, &name, &["/bin/sh"], true).await;
        let t = format!("--transport={transport}");
        let out = crictl_with_input(&d, &["attach", "-i", &t, &cid], b"echo -n hello\n");
        assert!(out.status.success(), "{transport}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hello", "{transport}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_exec_with_a_terminal_sees_the_clients_size_and_its_own_tty() {
    let d = common::cri_daemon();
    let mut rt = d.runtime().await;
    let (pod, cfg) = run_pod(&d, &mut rt, "stream-tty").await;
    let cid = sleeping_container(&d, &mut rt, &pod, &cfg).await;
    for transport in TRANSPORTS {
        // `script` gives crictl a terminal of a known size; crictl sends it as a resize,
        // which races with the process's start (as with every runtime): hence the sleep.
        let inner = format!(
            "stty rows 37 cols 101; crictl {} exec -it --transport={transport} {cid} sh -c 'sleep 0.5; stty size; test -e \"$(tty)\" && echo tty=$(tty)'",
            d.crictl_endpoints().join(" ")
        );
        let out = Command::new("script")
            .args(["-qec", &inner, "/dev/null"])
            .stdin(Stdio::piped())
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "{transport}: {stdout} {}",
            text(&out.stderr)
        );
        assert!(stdout.contains("37 101"), "{transport}: {stdout:?}");
        // The terminal is one of the container's own devpts, so it has a name in there.
        assert!(stdout.contains("tty=/dev/pts/"), "{transport}: {stdout:?}");
    }
}
