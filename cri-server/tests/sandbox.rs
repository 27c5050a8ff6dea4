//! Pod sandboxes through the real daemon and CRI client: real namespaces, real CNI plugins
//! (/usr/lib/cni bridge, host-local, portmap), real cgroups. Each test uses its own CNI
//! network name, bridge and subnet so tests running side by side cannot see each other's
//! leases, veths or rules; the harness removes every pod when the daemon is dropped, so
//! nothing is left even when a test fails.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Daemon;
use cri_api::v1 as cri;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

const DEPLOY_CONFLIST: &str = include_str!("../../deploy/cni/10-berth-bridge.conflist");

/// A test's own network: the shipped conflist with another name, bridge and subnet.
struct TestNet {
    name: String,
    bridge: String,
    conf_dir: tempfile::TempDir,
    bin_dir: tempfile::TempDir,
    cgroup_parent: String,
}

impl TestNet {
    fn new(tag: &str, subnet: &str) -> TestNet {
        Self::with_extra_plugin(tag, subnet, None)
    }

    /// `extra`: a plugin (a shell script body) appended to the list after portmap.
    fn with_extra_plugin(tag: &str, subnet: &str, extra: Option<&str>) -> TestNet {
        let name = format!("berth-test-{tag}");
        let bridge = format!("bt-{tag}");
        assert!(bridge.len() <= 15, "bridge name too long: {bridge}");
        let mut list: serde_json::Value = serde_json::from_str(DEPLOY_CONFLIST).unwrap();
        list["name"] = name.clone().into();
        list["plugins"][0]["bridge"] = bridge.clone().into();
        list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] = subnet.into();
        let conf_dir = tempfile::tempdir().unwrap();
        let bin_dir = tempfile::tempdir().unwrap();
        if let Some(body) = extra {
            use std::os::unix::fs::PermissionsExt;
            let p = bin_dir.path().join("berth-test-plugin");
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            list["plugins"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({"type": "berth-test-plugin"}));
        }
        std::fs::write(
            conf_dir.path().join("10-test.conflist"),
            serde_json::to_vec_pretty(&list).unwrap(),
        )
        .unwrap();
        TestNet {
            cgroup_parent: format!("/berth-test-{tag}"),
            name,
            bridge,
            conf_dir,
            bin_dir,
        }
    }

    fn daemon_toml(&self) -> String {
        format!(
            "[cni]\nconf_dir = {:?}\nbin_dirs = [{:?}, \"/usr/lib/cni\"]\n",
            self.conf_dir.path(),
            self.bin_dir.path()
        )
    }

    fn start(&self) -> Daemon {
        Daemon::start_with_config(&self.daemon_toml())
    }

    /// host-local lease files (one per IP in use) of this network.
    fn leases(&self) -> Vec<String> {
        let dir = Path::new("/var/lib/cni/networks").join(&self.name);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.parse::<IpAddr>().is_ok())
            .collect()
    }

    /// Host interfaces enslaved to this test's bridge (the pods' veth ends).
    fn veths(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(format!("/sys/class/net/{}/brif", self.bridge)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect()
    }

    /// Pod cgroup directories left under this test's cgroup parent, in any hierarchy.
    fn cgroups(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for h in cgroup_hierarchies() {
            let parent = h.join(self.cgroup_parent.trim_start_matches('/'));
            if let Ok(entries) = std::fs::read_dir(&parent) {
                out.extend(
                    entries
                        .filter_map(|e| e.ok())
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
        out
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        let _ = std::fs::remove_dir_all(Path::new("/var/lib/cni/networks").join(&self.name));
        for h in cgroup_hierarchies() {
            let _ = std::fs::remove_dir(h.join(self.cgroup_parent.trim_start_matches('/')));
        }
    }
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fs = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            (fs == "cgroup" || fs == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|mp| mp.starts_with(&dir))
        .collect()
}

fn iptables_rules_mentioning(id: &str) -> Vec<String> {
    let out = Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(id))
        .map(str::to_string)
        .collect()
}

fn pod_config(name: &str, net: Option<&TestNet>) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-tests".into(),
            attempt: 0,
        }),
        hostname: format!("{name}-host"),
        log_directory: format!("/tmp/berth-test-logs/{name}"),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: net.map(|n| n.cgroup_parent.clone()).unwrap_or_default(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn host_namespaces(config: &mut cri::PodSandboxConfig, network: bool, pid: bool, ipc: bool) {
    let mode = |host: bool| {
        if host {
            cri::NamespaceMode::Node as i32
        } else {
            cri::NamespaceMode::Pod as i32
        }
    };
    config.linux.get_or_insert_default().security_context =
        Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: mode(network),
                pid: mode(pid),
                ipc: mode(ipc),
                ..Default::default()
            }),
            ..Default::default()
        });
}

async fn run(
    rt: &mut RuntimeServiceClient<Channel>,
    config: cri::PodSandboxConfig,
) -> Result<String, tonic::Status> {
    rt.run_pod_sandbox(cri::RunPodSandboxRequest {
        config: Some(config),
        runtime_handler: String::new(),
    })
    .await
    .map(|r| r.into_inner().pod_sandbox_id)
}

async fn status(
    rt: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> (cri::PodSandboxStatus, serde_json::Value) {
    let r = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let info: serde_json::Value =
        serde_json::from_str(&r.info["info"]).expect("verbose info is JSON");
    (r.status.unwrap(), info)
}

async fn stop(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("StopPodSandbox");
}

async fn remove(rt: &mut RuntimeServiceClient<Channel>, id: &str) {
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: id.into(),
    })
    .await
    .expect("RemovePodSandbox");
}

/// Runs `f` on a fresh thread that has joined the namespace pinned at `pin`.
fn in_namespace<T: Send + 'static>(pin: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::empty()).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A TCP server inside the pod's network namespace that answers every connection with
/// `reply`; it lives as long as the test process (the pod's removal closes its netns).
fn serve_in_pod(netns: &Path, port: u16, reply: &'static str) {
    let listener = in_namespace(netns, move || {
        TcpListener::bind(("0.0.0.0", port)).expect("bind in pod")
    });
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(reply.as_bytes());
        }
    });
}

fn fetch(addr: (IpAddr, u16)) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

fn pin(info: &serde_json::Value, kind: &str) -> PathBuf {
    PathBuf::from(info["pod"]["paths"]["ns_dir"].as_str().unwrap()).join(kind)
}

fn pod_file(info: &serde_json::Value, which: &str) -> String {
    let p = info["pod"]["paths"][which].as_str().unwrap();
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[tokio::test]
async fn a_pod_gets_an_ip_a_host_port_dns_and_a_hostname() {
    let net = TestNet::new("net", "10.89.1.0/24");
    let daemon = net.start();
    let mut rt = daemon.runtime().await;

    let mut config = pod_config("web", Some(&net));
    config.dns_config = Some(cri::DnsConfig {
        servers: vec!["10.10.10.10".into()],
        searches: vec!["google.com".into()],
        options: vec!["ndots:8".into()],
    });
    // Not critest's 12000: a critest run on this host at the same time must not collide.
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 12100,
        host_ip: String::new(),
    }];
    config.labels.insert("app".into(), "web".into());
    config.annotations.insert("note".into(), "hello".into());
    let started = Instant::now();
    let id = run(&mut rt, config).await.expect("RunPodSandbox");
    eprintln!(
        "RunPodSandbox with bridge+portmap took {:?}",
        started.elapsed()
    );

    let (st, info) = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.labels["app"], "web");
    assert_eq!(st.annotations["note"], "hello");
    assert!(st.created_at > 0);
    let ip: IpAddr = st.network.unwrap().ip.parse().expect("pod IP");
    assert!(ip.to_string().starts_with("10.89.1."), "{ip}");
    assert_eq!(net.leases(), [ip.to_string()]);

    let netns = pin(&info, "net");
    serve_in_pod(&netns, 80, "hello from the pod");
    assert_eq!(
        fetch((ip, 80)).expect("pod IP from the host"),
        "hello from the pod"
    );
    assert_eq!(
        fetch(("127.0.0.1".parse().unwrap(), 12100)).expect("hostPort on 127.0.0.1"),
        "hello from the pod"
    );

    assert_eq!(
        pod_file(&info, "resolv_conf"),
        "search google.com\nnameserver 10.10.10.10\noptions ndots:8\n"
    );
    assert_eq!(pod_file(&info, "hostname"), "web-host\n");
    assert!(pod_file(&info, "hosts").contains(&format!("{ip}\tweb-host\n")));
    let uts_name = in_namespace(&pin(&info, "uts"), || nix::unistd::gethostname().unwrap());
    assert_eq!(uts_name, "web-host");
    let lo_up = in_namespace(&netns, || {
        std::fs::read_to_string("/sys/class/net/lo/operstate").ok()
    });
    // /sys shows the mounting namespace's devices; check lo by connecting to it instead.
    let _ = lo_up;
    let lo_works = in_namespace(&netns, || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        TcpStream::connect(l.local_addr().unwrap()).is_ok()
    });
    assert!(lo_works, "lo is up in the pod");
    let shm = info["pod"]["paths"]["shm"].as_str().unwrap().to_string();
    assert!(
        mounts_under(Path::new(&shm)).contains(&shm),
        "pod shm is mounted"
    );
    assert!(
        !iptables_rules_mentioning(&id).is_empty(),
        "portmap rules exist"
    );

    stop(&mut rt, &id).await;
    let (st, _) = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxNotready as i32);
    assert!(net.leases().is_empty(), "stop releases the IP");
    assert!(
        iptables_rules_mentioning(&id).is_empty(),
        "stop removes the portmap rules"
    );
    assert!(fetch(("127.0.0.1".parse().unwrap(), 12100)).is_err());

    remove(&mut rt, &id).await;
    assert!(
        mounts_under(&daemon.state).is_empty(),
        "{:?}",
        mounts_under(&daemon.state)
    );
    assert!(!daemon.state.join("pods").join(&id).exists());
    assert!(net.veths().is_empty(), "{:?}", net.veths());
    assert!(net.cgroups().is_empty(), "{:?}", net.cgroups());
    let e = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn sysctls_land_in_the_pod_namespaces_and_bad_ones_are_refused() {
    let net = TestNet::new("sysctl", "10.89.2.0/24");
    let daemon = net.start();
    let mut rt = daemon.runtime().await;

    let mut config = pod_config("sysctl", Some(&net));
    let sysctls = &mut config.linux.as_mut().unwrap().sysctls;
    sysctls.insert("kernel.shm_rmid_forced".into(), "1".into());
    sysctls.insert("fs.mqueue.msg_max".into(), "100".into());
    sysctls.insert("net.ipv4.ip_unprivileged_port_start".into(), "0".into());
    let id = run(&mut rt, config).await.expect("RunPodSandbox");
    let (_, info) = status(&mut rt, &id).await;
    let read = |p: &'static str| move || std::fs::read_to_string(p).unwrap().trim().to_string();
    assert_eq!(
        in_namespace(&pin(&info, "ipc"), read("/proc/sys/kernel/shm_rmid_forced")),
        "1"
    );
    assert_eq!(
        in_namespace(&pin(&info, "ipc"), read("/proc/sys/fs/mqueue/msg_max")),
        "100"
    );
    assert_eq!(
        in_namespace(
            &pin(&info, "net"),
            read("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        ),
        "0"
    );
    // The host is untouched.
    assert_ne!(read("/proc/sys/fs/mqueue/msg_max")(), "100");
    remove(&mut rt, &id).await;

    let bad = |name: &str, value: &str, host_net: bool| {
        let mut c = pod_config(&format!("bad-{}", name.len()), Some(&net));
        if host_net {
            host_namespaces(&mut c, true, false, false);
        }
        c.linux
            .as_mut()
            .unwrap()
            .sysctls
            .insert(name.into(), value.into());
        c
    };
    for (name, value, host_net, why) in [
        ("kernel.core_pattern", "|/bin/sh", false, "not namespaced"),
        (
            "kernel.shm_rmid_forced",
            "1+kernel.core_pattern=/tmp/x",
            false,
            "forbidden character",
        ),
        ("net/ipv4/ip_forward", "1", false, "malformed"),
        ("net.ipv4.ip_forward", "1", true, "host networking"),
    ] {
        let e = run(&mut rt, bad(name, value, host_net)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{name}: {e:?}");
        assert!(e.message().contains(why), "{name}: {}", e.message());
    }
    // A namespaced sysctl the kernel does not have fails the pod and leaves nothing.
    let e = run(&mut rt, bad("net.ipv4.no_such_knob", "1", false))
        .await
        .unwrap_err();
    assert!(e.message().contains("does not exist"), "{}", e.message());
    assert!(mounts_under(&daemon.state).is_empty());
    assert!(net.cgroups().is_empty());
}

#[tokio::test]
async fn host_namespaces_make_no_network_and_no_init() {
    // No CNI config at all: a host-network pod must not need one.
    let empty = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_config(&format!("[cni]\nconf_dir = {:?}\n", empty.path()));
    let mut rt = daemon.runtime().await;

    let mut config = pod_config("hostns", None);
    host_namespaces(&mut config, true, true, true);
    config.hostname = String::new();
    let started = Instant::now();
    let id = run(&mut rt, config).await.expect("RunPodSandbox");
    eprintln!(
        "RunPodSandbox with host namespaces took {:?}",
        started.elapsed()
    );
    let (st, info) = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(st.network.unwrap_or_default().ip, "");
    let ns = st.linux.unwrap().namespaces.unwrap().options.unwrap();
    assert_eq!(ns.network, cri::NamespaceMode::Node as i32);
    assert_eq!(ns.pid, cri::NamespaceMode::Node as i32);
    assert_eq!(ns.ipc, cri::NamespaceMode::Node as i32);
    assert!(
        info["pod"]["record"]["init"].is_null(),
        "no pod init with host PID"
    );
    for kind in ["net", "uts", "ipc", "pid"] {
        assert!(!pin(&info, kind).exists(), "{kind} must not be pinned");
    }
    assert!(!Path::new(info["pod"]["paths"]["shm"].as_str().unwrap()).exists());
    let host_name = nix::unistd::gethostname().unwrap().into_string().unwrap();
    assert_eq!(pod_file(&info, "hostname"), format!("{host_name}\n"));
    assert_eq!(
        pod_file(&info, "resolv_conf"),
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    );

    // A pod network without any CNI config is refused, naming the cause.
    let e = run(&mut rt, pod_config("needs-net", None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message().contains("no CNI network config"),
        "{}",
        e.message()
    );

    remove(&mut rt, &id).await;
    assert!(mounts_under(&daemon.state).is_empty());
}

#[tokio::test]
async fn the_pod_init_holds_the_pid_namespace_and_outlives_the_daemon() {
    let net = TestNet::new("init", "10.89.3.0/24");
    let mut daemon = net.start();
    let mut rt = daemon.runtime().await;

    let mut config = pod_config("init", Some(&net));
    host_namespaces(&mut config, true, false, false);
    let id = run(&mut rt, config).await.expect("RunPodSandbox");
    let (_, info) = status(&mut rt, &id).await;
    let pid = info["pod"]["record"]["init"]["pid"]
        .as_i64()
        .expect("init pid");
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    assert_eq!(
        std::fs::read_to_string(proc_dir.join("comm")).unwrap(),
        "berth-pod-init\n"
    );
    let cmdline = std::fs::read_to_string(proc_dir.join("cmdline")).unwrap();
    assert!(cmdline.starts_with("berth-pod-init\0"), "{cmdline:?}");
    // CVE-2019-5736: its executable is a sealed memfd, not berth on disk.
    let exe = std::fs::read_link(proc_dir.join("exe")).unwrap();
    assert!(
        exe.to_string_lossy().starts_with("/memfd:berth"),
        "{}",
        exe.display()
    );
    let w = std::fs::OpenOptions::new()
        .write(true)
        .open(proc_dir.join("exe"));
    assert!(w.is_err(), "the init's executable must not be writable");
    // It is PID 1 of the pinned PID namespace, and sits in the pod cgroup.
    let pinned = std::fs::metadata(pin(&info, "pid")).unwrap();
    let its = std::fs::metadata(proc_dir.join("ns/pid")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((pinned.dev(), pinned.ino()), (its.dev(), its.ino()));
    let status_text = std::fs::read_to_string(proc_dir.join("status")).unwrap();
    let nspid = status_text
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .unwrap();
    assert!(nspid.trim_end().ends_with("\t1"), "{nspid}");
    // It joins the pod cgroup itself, just after it reports ready.
    let in_pod_cgroup = || {
        let cgroups = std::fs::read_to_string(proc_dir.join("cgroup")).unwrap();
        cgroups.contains(&format!("{}/{id}", net.cgroup_parent))
    };
    assert!(
        eventually(Duration::from_secs(5), in_pod_cgroup).await,
        "the pod init is not in the pod cgroup"
    );
    // It shares the host network (NODE) but not the host IPC namespace.
    let host_ipc = std::fs::read_link("/proc/self/ns/ipc").unwrap();
    assert_ne!(
        std::fs::read_link(proc_dir.join("ns/ipc")).unwrap(),
        host_ipc
    );

    // The init keeps running when the daemon stops; a restarted daemon finds the pod.
    daemon.stop();
    assert!(proc_dir.exists(), "the pod init died with the daemon");
    daemon.spawn();
    let mut rt = daemon.runtime().await;
    let (st, _) = status(&mut rt, &id).await;
    assert_eq!(st.state, cri::PodSandboxState::SandboxReady as i32);

    // The init exits on SIGTERM, and a dead init makes the pod NOTREADY.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (st, _) = status(&mut rt, &id).await;
        if st.state == cri::PodSandboxState::SandboxNotready as i32 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pod still READY after its init died"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    remove(&mut rt, &id).await;
    assert!(net.cgroups().is_empty(), "{:?}", net.cgroups());
    assert!(mounts_under(&daemon.state).is_empty());
}

#[tokio::test]
async fn stop_and_remove_are_idempotent_and_list_filters() {
    let net = TestNet::new("idem", "10.89.4.0/24");
    let daemon = net.start();
    let mut rt = daemon.runtime().await;

    let unknown = "0".repeat(64);
    stop(&mut rt, &unknown).await;
    remove(&mut rt, &unknown).await;

    let mut a = pod_config("a", Some(&net));
    a.labels.insert("tier".into(), "front".into());
    let mut b = pod_config("b", Some(&net));
    b.labels.insert("tier".into(), "back".into());
    host_namespaces(&mut b, true, false, false);
    let a_id = run(&mut rt, a.clone()).await.unwrap();
    let b_id = run(&mut rt, b).await.unwrap();

    // The same pod twice is refused.
    let e = run(&mut rt, a).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);

    let e = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_config("handler", Some(&net))),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("\"kata\""), "{}", e.message());

    stop(&mut rt, &b_id).await;
    stop(&mut rt, &b_id).await;

    let lister = rt.clone();
    let list = |filter: cri::PodSandboxFilter| {
        let mut rt = lister.clone();
        async move {
            let mut ids: Vec<String> = rt
                .list_pod_sandbox(cri::ListPodSandboxRequest {
                    filter: Some(filter),
                })
                .await
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|p| p.id)
                .collect();
            ids.sort();
            ids
        }
    };
    let mut both = vec![a_id.clone(), b_id.clone()];
    both.sort();
    assert_eq!(list(Default::default()).await, both);
    assert_eq!(
        list(cri::PodSandboxFilter {
            id: a_id[..12].into(),
            ..Default::default()
        })
        .await,
        vec![a_id.clone()]
    );
    let ready = cri::PodSandboxStateValue {
        state: cri::PodSandboxState::SandboxReady as i32,
    };
    assert_eq!(
        list(cri::PodSandboxFilter {
            state: Some(ready),
            ..Default::default()
        })
        .await,
        vec![a_id.clone()]
    );
    let mut sel = std::collections::HashMap::new();
    sel.insert("tier".to_string(), "back".to_string());
    assert_eq!(
        list(cri::PodSandboxFilter {
            label_selector: sel,
            ..Default::default()
        })
        .await,
        vec![b_id.clone()]
    );

    // crictl sees them too.
    let out = daemon.crictl(&["pods", "-q"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);

    for id in [&a_id, &b_id] {
        remove(&mut rt, id).await;
        remove(&mut rt, id).await;
        stop(&mut rt, id).await;
    }
    assert!(list(Default::default()).await.is_empty());
    // A removed pod's name is free again.
    let again = run(&mut rt, pod_config("a", Some(&net))).await.unwrap();
    remove(&mut rt, &again).await;
    assert!(net.leases().is_empty());
    assert!(mounts_under(&daemon.state).is_empty());
}

#[tokio::test]
async fn a_failing_cni_plugin_fails_the_pod_and_leaves_nothing_behind() {
    let net = TestNet::with_extra_plugin(
        "fail",
        "10.89.5.0/24",
        Some(
            "cat >/dev/null\n\
             if [ \"$CNI_COMMAND\" = ADD ]; then\n\
               echo '{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"injected failure\"}'\n\
               exit 1\n\
             fi\n\
             exit 0",
        ),
    );
    let daemon = net.start();
    let mut rt = daemon.runtime().await;
    let mut config = pod_config("doomed", Some(&net));
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 12099,
        host_ip: String::new(),
    }];
    let e = run(&mut rt, config).await.unwrap_err();
    assert!(e.message().contains("injected failure"), "{}", e.message());

    let pods_dir = daemon.state.join("pods");
    let left: Vec<_> = std::fs::read_dir(&pods_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    assert!(
        mounts_under(&daemon.state).is_empty(),
        "{:?}",
        mounts_under(&daemon.state)
    );
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    assert!(net.veths().is_empty(), "{:?}", net.veths());
    assert!(net.cgroups().is_empty(), "{:?}", net.cgroups());
    let rules: Vec<String> = iptables_rules_mentioning("12099");
    assert!(rules.is_empty(), "{rules:?}");
    let cache: Vec<_> = std::fs::read_dir(daemon.root.join("cni-results"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(cache.is_empty(), "CNI cache entries left: {}", cache.len());
    let list = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
        .await
        .unwrap();
    assert!(list.into_inner().items.is_empty());
}

/// RemovePodSandbox holds the pod's network namespace open for a moment (its teardown would
/// stall the next pod's CNI DEL) and lets it go once pod networks are quiet.
#[tokio::test]
async fn a_removed_pods_network_namespace_is_released() {
    use std::os::unix::fs::MetadataExt;
    let net = TestNet::new("retire", "10.89.9.0/24");
    let daemon = net.start();
    let mut rt = daemon.runtime().await;
    let id = run(&mut rt, pod_config("retire", Some(&net)))
        .await
        .expect("RunPodSandbox");
    let (_, info) = status(&mut rt, &id).await;
    let ns = std::fs::metadata(pin(&info, "net")).unwrap();
    let netns = (ns.dev(), ns.ino());
    // The pin is a bind mount: the daemon holds no fd of the namespace while the pod exists.
    assert_eq!(fds_of(daemon.pid(), netns), 0);
    stop(&mut rt, &id).await;
    remove(&mut rt, &id).await;
    assert!(
        eventually(Duration::from_secs(5), || fds_of(daemon.pid(), netns) == 0).await,
        "the daemon still holds the removed pod's network namespace"
    );
}

/// How many of `pid`'s fds refer to the file `(dev, ino)` (a namespace here).
fn fds_of(pid: u32, (dev, ino): (u64, u64)) -> usize {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter(|fd| {
                    std::fs::metadata(fd.path()).is_ok_and(|m| m.dev() == dev && m.ino() == ino)
                })
                .count()
        })
        .unwrap_or(0)
}

/// 100 create/remove cycles leak nothing: no netns pins, veths, mounts, leases, iptables
/// rules, cgroups or pod inits.
#[tokio::test]
async fn a_hundred_cycles_leak_nothing() {
    let net = TestNet::new("cycle", "10.89.6.0/24");
    let daemon = net.start();
    let mut rt = daemon.runtime().await;
    let started = Instant::now();
    for i in 0..100 {
        let mut config = pod_config(&format!("cycle-{i}"), Some(&net));
        config.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 80,
            host_port: 12098,
            host_ip: String::new(),
        }];
        let id = run(&mut rt, config).await.expect("RunPodSandbox");
        stop(&mut rt, &id).await;
        remove(&mut rt, &id).await;
        assert!(iptables_rules_mentioning(&id).is_empty());
    }
    eprintln!("100 run/stop/remove cycles took {:?}", started.elapsed());
    assert!(mounts_under(&daemon.state).is_empty());
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    assert!(net.veths().is_empty(), "{:?}", net.veths());
    assert!(net.cgroups().is_empty(), "{:?}", net.cgroups());
    assert!(iptables_rules_mentioning("12098").is_empty());
    assert_eq!(count_pod_inits(&net.cgroup_parent), 0, "pod inits leaked");
}

/// Polls `cond` every 10 ms until it holds or `within` has passed; whether it held.
async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

/// Live pod inits (not zombies: after a daemon restart the host's init reaps them) in pods
/// under `cgroup_parent` (other tests and daemons have their own).
fn count_pod_inits(cgroup_parent: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c == "berth-pod-init\n")
                && std::fs::read_to_string(e.path().join("stat"))
                    .is_ok_and(|st| !st.contains(") Z "))
                && std::fs::read_to_string(e.path().join("cgroup"))
                    .is_ok_and(|c| c.contains(&format!("{cgroup_parent}/")))
        })
        .count()
}

/// After a crash (SIGKILL) the restarted daemon lists the pod as it is and tears its
/// network down from the cached CNI result: lease, veth and portmap rules all go.
#[tokio::test]
async fn a_crashed_daemon_recovers_its_pods_and_their_networks() {
    let net = TestNet::new("crash", "10.89.7.0/24");
    let mut daemon = net.start();
    let mut rt = daemon.runtime().await;
    let mut config = pod_config("crash", Some(&net));
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 12101,
        host_ip: String::new(),
    }];
    let id = run(&mut rt, config).await.expect("RunPodSandbox");
    let (before, _) = status(&mut rt, &id).await;

    daemon.kill9();
    daemon.spawn();
    let mut rt = daemon.runtime().await;
    let (after, info) = status(&mut rt, &id).await;
    assert_eq!(after.state, cri::PodSandboxState::SandboxReady as i32);
    assert_eq!(after.network, before.network);
    assert_eq!(after.created_at, before.created_at);
    assert!(pin(&info, "net").exists());
    assert_eq!(net.leases().len(), 1);

    stop(&mut rt, &id).await;
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    assert!(net.veths().is_empty(), "{:?}", net.veths());
    assert!(iptables_rules_mentioning(&id).is_empty());
    remove(&mut rt, &id).await;
    assert!(mounts_under(&daemon.state).is_empty());
    assert!(net.cgroups().is_empty(), "{:?}", net.cgroups());
    assert_eq!(count_pod_inits(&net.cgroup_parent), 0);
}

/// A crash after the pod was built but before its record was committed leaves a pod the
/// store does not know: the next start removes all of it (init, pins, shm, cgroup, lease,
/// veth, portmap rules).
#[tokio::test]
async fn a_pod_without_a_record_is_cleaned_up_at_start() {
    let net = TestNet::new("orphan", "10.89.8.0/24");
    let mut daemon = net.start();
    let mut rt = daemon.runtime().await;
    let mut config = pod_config("orphan", Some(&net));
    config.port_mappings = vec![cri::PortMapping {
        protocol: cri::Protocol::Tcp as i32,
        container_port: 80,
        host_port: 12102,
        host_ip: String::new(),
    }];
    let id = run(&mut rt, config).await.expect("RunPodSandbox");
    // The init joins the pod cgroup just after it reports ready.
    eventually(Duration::from_secs(5), || {
        count_pod_inits(&net.cgroup_parent) > 0
    })
    .await;
    assert_eq!(count_pod_inits(&net.cgroup_parent), 1);

    daemon.kill9();
    {
        let store = meta_store::MetaStore::open(&daemon.root.join("meta.redb")).unwrap();
        assert!(store.delete::<sandbox::pod::PodRecord>(&id).unwrap());
    }
    daemon.spawn();
    let mut rt = daemon.runtime().await;
    let e = rt
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(
        mounts_under(&daemon.state).is_empty(),
        "{:?}",
        mounts_under(&daemon.state)
    );
    assert!(!daemon.state.join("pods").join(&id).exists());
    assert_eq!(count_pod_inits(&net.cgroup_parent), 0);
    assert!(net.cgroups().is_empty(), "{:?}", net.cgroups());
    assert!(net.leases().is_empty(), "{:?}", net.leases());
    assert!(net.veths().is_empty(), "{:?}", net.veths());
    assert!(iptables_rules_mentioning(&id).is_empty());
}
