//! The integration-test harness: starts the real `berth serve` binary on a temporary
//! socket, root and state dir, hands out CRI clients, runs the real crictl against it,
//! and stops it (SIGTERM) and removes its directories when dropped.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cri_api::v1::image_service_client::ImageServiceClient;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
}

/// The `berth` binary cargo built for these tests.
pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

impl Daemon {
    /// Starts berth with an otherwise default configuration.
    pub fn start() -> Daemon {
        Self::start_with_config("")
    }

    /// Starts berth with `extra_toml` appended to a generated config that names the temp
    /// socket, root and state dirs. `extra_toml` may set any other key, e.g. `[cni]` or
    /// `[registry.hosts."..."]` tables.
    pub fn start_with_config(extra_toml: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("run/berth.sock");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let config_path = dir.path().join("config.toml");
        let log_path = dir.path().join("berth.log");
        let config = format!(
            "socket = {socket:?}\nroot_dir = {root:?}\nstate_dir = {state:?}\n{extra_toml}\n[log]\nlevel = \"debug\"\n"
        );
        std::fs::write(&config_path, config).expect("write config");
        let mut d = Daemon {
            dir,
            socket,
            root,
            state,
            config_path,
            log_path,
            child: None,
        };
        d.spawn();
        d
    }

    /// (Re)starts the daemon process on the same dirs and waits until it answers.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "berth is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let child = Command::new(berth_bin())
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("starting berth");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("berth exited with {status} before serving:\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("berth did not serve within 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the daemon with SIGTERM and waits for it; returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("berth is not running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_with_timeout(&mut child, Duration::from_secs(20))
    }

    /// Kills the daemon with SIGKILL (a crash), leaving everything it left behind.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("berth is not running");
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("berth is not running").id()
    }

    /// Everything the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        cri_server::client::connect(&self.socket)
            .await
            .expect("connecting to berth")
    }

    pub async fn runtime(&self) -> RuntimeServiceClient<Channel> {
        cri_server::client::runtime(self.channel().await)
    }

    pub async fn images(&self) -> ImageServiceClient<Channel> {
        cri_server::client::images(self.channel().await)
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The endpoint flags for crictl: both, always, or a node's /etc/crictl.yaml would
    /// send image calls to another runtime.
    pub fn crictl_endpoints(&self) -> [String; 4] {
        [
            "--runtime-endpoint".into(),
            self.endpoint(),
            "--image-endpoint".into(),
            self.endpoint(),
        ]
    }

    /// The real crictl, pointed at this daemon, to finish and run.
    pub fn crictl_command(&self) -> Command {
        let crictl = which("crictl").unwrap_or_else(|| {
            panic!("crictl not found on PATH: run deploy/install.sh (it installs cri-tools)")
        });
        let mut cmd = Command::new(crictl);
        cmd.args(self.crictl_endpoints());
        cmd
    }

    /// Runs the real crictl against this daemon.
    pub fn crictl(&self, args: &[&str]) -> Output {
        self.crictl_command()
            .args(["--timeout", "60s"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running crictl")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Pods and containers outlive the daemon by design (inits, pinned namespaces,
            // CNI leases, monitors): remove them first so no test leaves any behind, even
            // a failing one.
            let running = matches!(child.try_wait(), Ok(None));
            if running && which("crictl").is_some() {
                let _ = self.crictl(&["rm", "--all", "--force"]);
                let _ = self.crictl(&["rmp", "--all", "--force"]);
            }
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            wait_with_timeout(&mut child, Duration::from_secs(20));
        }
        if std::thread::panicking() {
            eprintln!("---- berth log ----\n{}", self.log());
        }
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("waiting for berth") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("waiting for berth");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The stand-in images critest uses, served by `critest/registry.sh` on 127.0.0.1:5000
/// (started and filled on first use; later calls find it running). Returns the config
/// lines that make berth pull registry.k8s.io, gcr.io, … through it.
pub fn stand_in_registry() -> String {
    static STARTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    STARTED.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../critest/registry.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg("start")
            .output()
            .expect("running critest/registry.sh");
        assert!(
            out.status.success(),
            "critest/registry.sh start failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
    [
        "registry.k8s.io",
        "gcr.io",
        "k8s.gcr.io",
        "public.ecr.aws",
        "docker.io",
    ]
    .iter()
    .map(|h| {
        format!(
            "[registry.hosts.\"{h}\"]\nmirrors = [\"http://127.0.0.1:5000\"]\nmirrors_only = true\n"
        )
    })
    .collect()
}

/// The CNI config of the repo (deploy/cni) with Debian's plugins, for pods with a network.
pub fn cni_config() -> String {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cni");
    format!(
        "[cni]\nconf_dir = {:?}\nbin_dirs = [\"/usr/lib/cni\", \"/opt/cni/bin\"]\n",
        conf.canonicalize().expect("deploy/cni")
    )
}

/// The stand-in busybox image (critest's default test image).
pub const BUSYBOX: &str = "registry.k8s.io/e2e-test-images/busybox:1.29-2";

/// A daemon that pulls the stand-in images through mirrors, reaches the local test
/// registry on 127.0.0.1:5000 directly, and networks pods with the repo's CNI config.
pub fn cri_daemon() -> Daemon {
    Daemon::start_with_config(&format!(
        "{}[registry.hosts.\"127.0.0.1:5000\"]\ninsecure = true\n{}",
        stand_in_registry(),
        cni_config()
    ))
}

pub async fn pull(d: &Daemon, image: &str) {
    d.images()
        .await
        .pull_image(cri_api::v1::PullImageRequest {
            image: Some(cri_api::v1::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("pulling {image}: {e}"));
}

/// A pod config with a name-derived uid, the hostname, a log directory and an empty DNS
/// config (valid, as the kubelet may send it).
pub fn pod_config(name: &str, log_dir: &Path) -> cri_api::v1::PodSandboxConfig {
    cri_api::v1::PodSandboxConfig {
        metadata: Some(cri_api::v1::PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "berth-test".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(cri_api::v1::DnsConfig::default()),
        linux: Some(cri_api::v1::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

type RuntimeClient = RuntimeServiceClient<Channel>;

pub async fn start(rt: &mut RuntimeClient, id: &str) {
    rt.start_container(cri_api::v1::StartContainerRequest {
        container_id: id.into(),
    })
    .await
    .unwrap_or_else(|e| panic!("starting {id}: {e}"));
}

/// Polls ContainerStatus until the container has exited; fails the test after `within`.
pub async fn wait_exited(
    rt: &mut RuntimeClient,
    id: &str,
    within: Duration,
) -> cri_api::v1::ContainerStatus {
    let deadline = Instant::now() + within;
    loop {
        let s = status(rt, id).await;
        if s.state == cri_api::v1::ContainerState::ContainerExited as i32 {
            return s;
        }
        assert!(Instant::now() < deadline, "container did not exit: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// StopPodSandbox then RemovePodSandbox, both of which must succeed.
pub async fn remove_pod(rt: &mut RuntimeClient, pod_id: &str) {
    rt.stop_pod_sandbox(cri_api::v1::StopPodSandboxRequest {
        pod_sandbox_id: pod_id.into(),
    })
    .await
    .unwrap();
    rt.remove_pod_sandbox(cri_api::v1::RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.into(),
    })
    .await
    .unwrap();
}

/// RunPodSandbox with the default handler; returns the pod id.
pub async fn run_pod(rt: &mut RuntimeClient, cfg: &cri_api::v1::PodSandboxConfig) -> String {
    rt.run_pod_sandbox(cri_api::v1::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    })
    .await
    .unwrap_or_else(|e| panic!("running pod: {e}"))
    .into_inner()
    .pod_sandbox_id
}

/// A pod on the host network: no CNI, so many of them are cheap.
pub fn host_network_pod(name: &str, log_dir: &Path) -> cri_api::v1::PodSandboxConfig {
    let mut cfg = pod_config(name, log_dir);
    cfg.linux = Some(cri_api::v1::LinuxPodSandboxConfig {
        security_context: Some(cri_api::v1::LinuxSandboxSecurityContext {
            namespace_options: Some(cri_api::v1::NamespaceOption {
                network: cri_api::v1::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    cfg
}

/// ContainerStatus (not verbose), which must succeed.
pub async fn status(rt: &mut RuntimeClient, id: &str) -> cri_api::v1::ContainerStatus {
    rt.container_status(cri_api::v1::ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .unwrap_or_else(|e| panic!("status of {id}: {e}"))
    .into_inner()
    .status
    .unwrap()
}
