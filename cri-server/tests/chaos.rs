//! Chaos: four clients drive the whole pod and container lifecycle through the real daemon
//! while the test SIGKILLs it at random moments (aimed so that the kills land inside every
//! lifecycle RPC over the run) and restarts it. Before removing a container or pod, a
//! client checks that the daemon still knows it (Container/PodSandboxStatus); after one more
//! restart, every container and pod whose create answered OK and that nobody tried to
//! remove must still be listed. Once everything listed is stopped and removed, nothing may
//! be left: no state, layer, pod, CNI-cache or trash directory, no mount under the test's
//! directory, no cgroup, no monitor, container or pod-init process, no host-local lease,
//! veth or iptables rule of any pod or container id the test saw.
//!
//! The run is bounded: a fixed number of kills, at most `MAX_ITERATIONS` per client, a time
//! cap on the chaos phase and a timeout on every call. The seed of the kill schedule is
//! printed; `CHAOS_SEED=<n>` replays a schedule (the kills' timing against the RPCs still
//! varies with the machine's speed). The daemon's log is copied to
//! `$TMPDIR/berth-chaos-<seed>.log` when the test fails or `CHAOS_KEEP_LOG` is set.
//! Whatever happens, a guard kills what the test's daemon
//! left running, unmounts, and removes its cgroups, leases and veths, so a failing run does
//! not pollute the machine for other tests.
//!
//! Pods use their own cgroup parent (`/berth-chaos-<test pid>`, as the kubelet always sends
//! one), so every cgroup under it is this test's; the default parent `/berth` is searched
//! for the ids this test saw as well.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{BUSYBOX, pull};
use cri_api::v1 as cri;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

type Runtime = RuntimeServiceClient<Channel>;

/// Concurrent clients.
const WORKERS: usize = 4;
/// SIGKILLs of the daemon during the chaos phase (plus one before the final checks).
const KILLS: usize = 10;
/// Lifecycle iterations per client, at most.
const MAX_ITERATIONS: usize = 150;
/// Pods (with their running container) a client leaves in place, at most, so that live
/// containers cross restarts and reach the final checks.
const MAX_KEPT: usize = 2;
/// The chaos phase ends after this even if not all kills happened.
const CHAOS_CAP: Duration = Duration::from_secs(55);
/// Every client call.
const RPC_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the background removals (trash, released network namespaces) may take.
const SETTLE: Duration = Duration::from_secs(15);

/// The lifecycle RPCs the kills aim at, then the two status calls that check, before each
/// removal, that an acknowledged container or pod is still known.
const RPCS: [&str; 10] = [
    "RunPodSandbox",
    "CreateContainer",
    "StartContainer",
    "ExecSync",
    "StopContainer",
    "RemoveContainer",
    "StopPodSandbox",
    "RemovePodSandbox",
    "ContainerStatus",
    "PodSandboxStatus",
];
const LIFECYCLE: usize = 8;
const RUN_POD: usize = 0;
const CREATE: usize = 1;
const START: usize = 2;
const EXEC: usize = 3;
const STOP: usize = 4;
const REMOVE: usize = 5;
const STOP_POD: usize = 6;
const REMOVE_POD: usize = 7;
const CTR_STATUS: usize = 8;
const POD_STATUS: usize = 9;

/// The network of the repo's CNI config (deploy/cni/10-berth-bridge.conflist).
const NETWORK: &str = "berth";

/// xorshift64: enough randomness for a kill schedule, no extra crate.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// What the clients were told about one pod or container.
#[derive(Debug)]
struct Fate {
    name: String,
    pod: String,
    /// A Remove (of it, or of its pod) was sent: it may be gone whatever the answer.
    removal_attempted: bool,
    /// A Remove (of it, or of its pod) answered OK.
    removed: bool,
}

#[derive(Default)]
struct Ledger {
    pods: BTreeMap<String, Fate>,
    containers: BTreeMap<String, Fate>,
    ok: [u32; 10],
    failed: [u32; 10],
    /// Total time of the calls that answered OK, in µs, to aim kills inside calls.
    ok_us: [u64; 10],
    /// Acknowledged and not removed, yet a status call answered NOT_FOUND.
    not_found: Vec<String>,
    /// "RPC code" → (count, first message).
    errors: BTreeMap<String, (u32, String)>,
    iterations: usize,
    kept: usize,
}

impl Ledger {
    fn removing_pod(&mut self, pod: &str) {
        if let Some(p) = self.pods.get_mut(pod) {
            p.removal_attempted = true;
        }
        for c in self.containers.values_mut().filter(|c| c.pod == pod) {
            c.removal_attempted = true;
        }
    }
    fn removed_pod(&mut self, pod: &str) {
        if let Some(p) = self.pods.get_mut(pod) {
            p.removed = true;
        }
        for c in self.containers.values_mut().filter(|c| c.pod == pod) {
            c.removed = true;
        }
    }
}

struct Shared {
    socket: PathBuf,
    logs: PathBuf,
    cgroup_parent: String,
    stop: AtomicBool,
    deadline: Instant,
    /// Per client: 1 + the index in `RPCS` of the call in flight, 0 between calls.
    in_flight: [AtomicUsize; WORKERS],
    ledger: Mutex<Ledger>,
}

struct Worker {
    w: usize,
    shared: Arc<Shared>,
    rt: Option<Runtime>,
    rng: XorShift,
}

impl Worker {
    /// A client, reconnecting (while the daemon is down, until it is back).
    async fn client(&mut self) -> Option<Runtime> {
        loop {
            if let Some(rt) = &self.rt {
                return Some(rt.clone());
            }
            if Instant::now() > self.shared.deadline + Duration::from_secs(30) {
                return None;
            }
            match cri_server::client::connect(&self.shared.socket).await {
                Ok(ch) => self.rt = Some(cri_server::client::runtime(ch)),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// One call; errors (expected while the daemon is down) are counted and dropped, and
    /// the next call reconnects.
    async fn call<T, Fut>(&mut self, rpc: usize, f: impl FnOnce(Runtime) -> Fut) -> Option<T>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_code(rpc, f).await.ok()
    }

    /// `call`, with the error's code (`None` for a client-side timeout or no daemon).
    async fn call_code<T, Fut>(
        &mut self,
        rpc: usize,
        f: impl FnOnce(Runtime) -> Fut,
    ) -> Result<T, Option<tonic::Code>>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let rt = self.client().await.ok_or(None)?;
        self.shared.in_flight[self.w].store(rpc + 1, Ordering::SeqCst);
        let t0 = Instant::now();
        let r = tokio::time::timeout(RPC_TIMEOUT, f(rt)).await;
        self.shared.in_flight[self.w].store(0, Ordering::SeqCst);
        let mut l = self.shared.ledger.lock().unwrap();
        let (code, name, msg) = match r {
            Ok(Ok(resp)) => {
                l.ok[rpc] += 1;
                l.ok_us[rpc] += t0.elapsed().as_micros() as u64;
                return Ok(resp.into_inner());
            }
            Ok(Err(s)) => (
                Some(s.code()),
                format!("{:?}", s.code()),
                s.message().to_string(),
            ),
            Err(_) => (
                None,
                "client timeout".to_string(),
                format!("{RPC_TIMEOUT:?}"),
            ),
        };
        l.failed[rpc] += 1;
        l.errors
            .entry(format!("{} {name}", RPCS[rpc]))
            .or_insert((0, msg))
            .0 += 1;
        drop(l);
        self.rt = None;
        Err(code)
    }

    async fn run(mut self) {
        let mut kept = 0;
        for i in 0..MAX_ITERATIONS {
            if self.shared.stop.load(Ordering::SeqCst) || Instant::now() > self.shared.deadline {
                break;
            }
            self.shared.ledger.lock().unwrap().iterations += 1;
            let name = format!("chaos-w{}-i{i}", self.w);
            let mut pod = common::pod_config(&name, &self.shared.logs);
            pod.linux.get_or_insert_default().cgroup_parent = self.shared.cgroup_parent.clone();

            let req = cri::RunPodSandboxRequest {
                config: Some(pod.clone()),
                runtime_handler: String::new(),
            };
            let Some(pod_id) = self
                .call(
                    RUN_POD,
                    |mut rt| async move { rt.run_pod_sandbox(req).await },
                )
                .await
                .map(|r| r.pod_sandbox_id)
            else {
                continue;
            };
            self.shared.ledger.lock().unwrap().pods.insert(
                pod_id.clone(),
                Fate {
                    name: name.clone(),
                    pod: pod_id.clone(),
                    removal_attempted: false,
                    removed: false,
                },
            );

            let req = cri::CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(cri::ContainerConfig {
                    metadata: Some(cri::ContainerMetadata {
                        name: "sleeper".into(),
                        attempt: 0,
                    }),
                    image: Some(cri::ImageSpec {
                        image: BUSYBOX.into(),
                        ..Default::default()
                    }),
                    command: vec!["sleep".into(), "3600".into()],
                    log_path: format!("{name}.log"),
                    linux: Some(cri::LinuxContainerConfig::default()),
                    ..Default::default()
                }),
                sandbox_config: Some(pod),
            };
            let ctr = self
                .call(
                    CREATE,
                    |mut rt| async move { rt.create_container(req).await },
                )
                .await
                .map(|r| r.container_id);
            if let Some(id) = &ctr {
                self.shared.ledger.lock().unwrap().containers.insert(
                    id.clone(),
                    Fate {
                        name: format!("{name}/sleeper"),
                        pod: pod_id.clone(),
                        removal_attempted: false,
                        removed: false,
                    },
                );
            }
            let keep = ctr.is_some() && kept < MAX_KEPT && self.rng.below(5) == 0;
            if let Some(id) = ctr {
                let req = cri::StartContainerRequest {
                    container_id: id.clone(),
                };
                self.call(START, |mut rt| async move { rt.start_container(req).await })
                    .await;
                let req = cri::ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["true".into()],
                    timeout: 5,
                };
                self.call(EXEC, |mut rt| async move { rt.exec_sync(req).await })
                    .await;
                if keep {
                    kept += 1;
                    self.shared.ledger.lock().unwrap().kept += 1;
                    continue;
                }
                let req = cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                };
                let st = self
                    .call_code(CTR_STATUS, |mut rt| async move {
                        rt.container_status(req).await
                    })
                    .await;
                if let Err(Some(tonic::Code::NotFound)) = st {
                    self.shared.ledger.lock().unwrap().not_found.push(format!(
                        "container {id} ({name}/sleeper): ContainerStatus NOT_FOUND before any removal"
                    ));
                }
                let req = cri::StopContainerRequest {
                    container_id: id.clone(),
                    timeout: 2,
                };
                self.call(STOP, |mut rt| async move { rt.stop_container(req).await })
                    .await;
                if let Some(c) = self.shared.ledger.lock().unwrap().containers.get_mut(&id) {
                    c.removal_attempted = true;
                }
                let req = cri::RemoveContainerRequest {
                    container_id: id.clone(),
                };
                if self
                    .call(
                        REMOVE,
                        |mut rt| async move { rt.remove_container(req).await },
                    )
                    .await
                    .is_some()
                    && let Some(c) = self.shared.ledger.lock().unwrap().containers.get_mut(&id)
                {
                    c.removed = true;
                }
            }
            let req = cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.clone(),
                verbose: false,
            };
            let st = self
                .call_code(POD_STATUS, |mut rt| async move {
                    rt.pod_sandbox_status(req).await
                })
                .await;
            if let Err(Some(tonic::Code::NotFound)) = st {
                self.shared.ledger.lock().unwrap().not_found.push(format!(
                    "pod {pod_id} ({name}): PodSandboxStatus NOT_FOUND before any removal"
                ));
            }
            let req = cri::StopPodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            };
            self.call(
                STOP_POD,
                |mut rt| async move { rt.stop_pod_sandbox(req).await },
            )
            .await;
            self.shared.ledger.lock().unwrap().removing_pod(&pod_id);
            let req = cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod_id.clone(),
            };
            if self
                .call(REMOVE_POD, |mut rt| async move {
                    rt.remove_pod_sandbox(req).await
                })
                .await
                .is_some()
            {
                self.shared.ledger.lock().unwrap().removed_pod(&pod_id);
            }
        }
    }
}

/// Ids (64 hex digits) and host veth names the test saw on disk or in process lists while
/// it ran, besides those the RPCs returned: a CreateContainer or RunPodSandbox killed
/// midway returns nothing but may leave its id behind.
#[derive(Default)]
struct Seen {
    ids: BTreeSet<String>,
    veths: BTreeSet<String>,
    cni_done: BTreeSet<String>,
    /// Inode numbers of the pods' pinned network namespaces.
    netns: BTreeSet<u64>,
    /// Their (net, ipc, uts) inode triples: a process in all three is in a test pod
    /// (one number alone could be a recycled inode).
    pod_ns: BTreeSet<[u64; 3]>,
}

fn is_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Everything a daemon on these dirs may leave, where to look for it.
#[derive(Clone)]
struct Places {
    tmp: PathBuf,
    state: PathBuf,
    root: PathBuf,
    cgroup_parent: String,
}

impl Places {
    fn scan_ids(&self, seen: &Mutex<Seen>) {
        let mut found = Vec::new();
        let mut dirs = vec![
            self.state.join("containers"),
            self.state.join("pods"),
            self.root.join("containers"),
            self.root.join("cni-results"),
        ];
        dirs.extend(
            cgroup_hierarchies()
                .into_iter()
                .take(1)
                .map(|h| h.join(self.cgroup_parent.trim_start_matches('/'))),
        );
        for d in &dirs {
            found.extend(names_in(d).into_iter().filter_map(|n| {
                let n = n
                    .strip_suffix(".json.tmp")
                    .or_else(|| n.strip_suffix(".json"))
                    .unwrap_or(&n)
                    .to_string();
                is_id(&n).then_some(n)
            }));
        }
        let tmp = self.tmp.to_string_lossy().to_string();
        for p in processes() {
            if p.cmdline.contains(&tmp) {
                found.extend(
                    p.cmdline
                        .split(['/', ' '])
                        .filter(|s| is_id(s))
                        .map(str::to_string),
                );
            }
        }
        let mut netns = Vec::new();
        if let Some(nsfs) = nsfs_dev() {
            use std::os::unix::fs::MetadataExt;
            for n in names_in(&self.state.join("pods")) {
                let dir = self.state.join("pods").join(n).join("ns");
                let ino = |kind: &str| {
                    std::fs::metadata(dir.join(kind))
                        .ok()
                        .filter(|m| m.dev() == nsfs)
                        .map(|m| m.ino())
                };
                if let Some(net) = ino("net") {
                    netns.push((net, ino("ipc"), ino("uts")));
                }
            }
        }
        let cache = self.root.join("cni-results");
        let mut seen = seen.lock().unwrap();
        seen.ids.extend(found);
        for (net, ipc, uts) in netns {
            seen.netns.insert(net);
            if let (Some(ipc), Some(uts)) = (ipc, uts) {
                seen.pod_ns.insert([net, ipc, uts]);
            }
        }
        for n in names_in(&cache) {
            let Some(id) = n.strip_suffix(".json") else {
                continue;
            };
            if seen.cni_done.contains(id) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(cache.join(&n)) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            let Some(ifs) = v["result"]["interfaces"].as_array() else {
                continue;
            };
            for i in ifs {
                let host_side = i["sandbox"].as_str().unwrap_or("").is_empty();
                if let Some(name) = i["name"].as_str()
                    && host_side
                    && name.starts_with("veth")
                {
                    seen.veths.insert(name.to_string());
                }
            }
            seen.cni_done.insert(id.to_string());
        }
    }

    /// Every leak found now, by check; `daemon_pid` is the running daemon's.
    fn leaks(&self, seen: &Seen, daemon_pid: Option<u32>) -> BTreeMap<&'static str, Vec<String>> {
        let mut out: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
        let entries = |d: &Path| -> Vec<String> {
            names_in(d)
                .into_iter()
                .map(|n| d.join(n).display().to_string())
                .collect()
        };
        out.insert("state/containers", entries(&self.state.join("containers")));
        out.insert("state/pods", entries(&self.state.join("pods")));
        out.insert(
            "root/containers",
            entries(&self.root.join("containers"))
                .into_iter()
                .filter(|p| !p.ends_with("/empty-layer"))
                .collect(),
        );
        out.insert("root/cni-results", entries(&self.root.join("cni-results")));
        let mut trash = entries(&self.state.join("trash"));
        trash.extend(entries(&self.root.join("trash")));
        out.insert("trash", trash);
        out.insert("mounts", mounts_under(&self.tmp));

        let mut cgroups = Vec::new();
        for h in cgroup_hierarchies() {
            let ours = h.join(self.cgroup_parent.trim_start_matches('/'));
            cgroups.extend(
                names_in(&ours)
                    .into_iter()
                    .map(|n| ours.join(n))
                    .filter(|p| p.is_dir())
                    .map(|p| p.display().to_string()),
            );
            let default = h.join("berth");
            cgroups.extend(
                names_in(&default)
                    .into_iter()
                    .filter(|n| seen.ids.contains(n))
                    .map(|n| default.join(n).display().to_string()),
            );
        }
        out.insert("cgroups", cgroups);

        let tmp = self.tmp.to_string_lossy().to_string();
        let parent = format!("{}/", self.cgroup_parent);
        let me = std::process::id();
        let mut procs = Vec::new();
        for p in processes() {
            if p.pid == me || Some(p.pid) == daemon_pid || p.state == 'Z' {
                continue;
            }
            let why = if p.cmdline.contains(&tmp) {
                Some("cmdline names the test dir")
            } else if p.cgroup.contains(&parent) {
                Some("in the test's cgroup parent")
            } else if seen.ids.iter().any(|id| p.cgroup.contains(id.as_str())) {
                Some("in a cgroup named by a test id")
            } else if p.ns.is_some_and(|ns| seen.pod_ns.contains(&ns)) {
                Some("in the namespaces of a test pod")
            } else {
                None
            };
            if let Some(why) = why {
                procs.push(format!(
                    "pid {} ({}, {why}): {} [{}]",
                    p.pid,
                    p.comm,
                    p.cmdline.trim(),
                    p.cgroup
                        .lines()
                        .find(|l| l.contains("pids") || l.starts_with("0::"))
                        .unwrap_or("")
                ));
            }
        }
        out.insert("processes", procs);

        // Network namespaces of the test's pods held open by a descriptor of the daemon
        // (it keeps removed pods' ones for a moment, see pod/retired_netns.rs) or of a
        // process that names the test dir.
        let mut held = Vec::new();
        let holders = processes()
            .into_iter()
            .filter(|p| p.pid != me && (Some(p.pid) == daemon_pid || p.cmdline.contains(&tmp)));
        for p in holders {
            let pid = p.pid;
            let e = Path::new("/proc").join(pid.to_string());
            for fd in std::fs::read_dir(e.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
            {
                let Some(ino) = std::fs::read_link(fd.path()).ok().and_then(|l| {
                    l.to_str()?
                        .strip_prefix("net:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                }) else {
                    continue;
                };
                if seen.netns.contains(&ino) {
                    held.push(format!(
                        "pid {pid}{} holds net:[{ino}] as fd {}",
                        if Some(pid) == daemon_pid {
                            " (the daemon)"
                        } else {
                            ""
                        },
                        fd.file_name().to_string_lossy()
                    ));
                }
            }
        }
        out.insert("netns", held);

        let leases_dir = Path::new("/var/lib/cni/networks").join(NETWORK);
        let mut leases = Vec::new();
        for n in names_in(&leases_dir) {
            if n.starts_with("last_reserved_ip") || n == "lock" {
                continue;
            }
            let text = std::fs::read_to_string(leases_dir.join(&n)).unwrap_or_default();
            if let Some(id) = seen.ids.iter().find(|id| text.contains(id.as_str())) {
                leases.push(format!("{} (pod {id})", leases_dir.join(&n).display()));
            }
        }
        out.insert("leases", leases);

        out.insert(
            "veths",
            seen.veths
                .iter()
                .filter(|v| Path::new("/sys/class/net").join(v).exists())
                .map(|v| format!("{v} (host side of a test pod's veth pair)"))
                .collect(),
        );

        let rules = std::process::Command::new("iptables-save")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        out.insert(
            "iptables",
            rules
                .lines()
                .filter(|l| seen.ids.iter().any(|id| l.contains(id.as_str())))
                .map(str::to_string)
                .collect(),
        );
        out
    }
}

/// The device of nsfs, where pinned namespaces' inodes live.
fn nsfs_dev() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").ok().map(|m| m.dev())
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    v.sort();
    v
}

fn cgroup_hierarchies() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
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
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|mp| mp.starts_with(&dir))
        .collect()
}

struct Proc {
    pid: u32,
    comm: String,
    state: char,
    /// Inodes of its (net, ipc, uts) namespaces.
    ns: Option<[u64; 3]>,
    cmdline: String,
    cgroup: String,
}

fn processes() -> Vec<Proc> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Some(stat) = std::fs::read_to_string(e.path().join("stat")).ok() else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let state = rest.first().and_then(|s| s.chars().next()).unwrap_or('?');
        let ns_ino = |kind: &str| -> Option<u64> {
            let l = std::fs::read_link(e.path().join("ns").join(kind)).ok()?;
            l.to_str()?
                .strip_prefix(&format!("{kind}:["))?
                .strip_suffix(']')?
                .parse()
                .ok()
        };
        let ns = match (ns_ino("net"), ns_ino("ipc"), ns_ino("uts")) {
            (Some(a), Some(b), Some(c)) => Some([a, b, c]),
            _ => None,
        };
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|b| {
                String::from_utf8_lossy(&b)
                    .replace('\0', " ")
                    .trim_end()
                    .to_string()
            })
            .unwrap_or_default();
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        out.push(Proc {
            pid,
            comm,
            state,
            ns,
            cmdline,
            cgroup,
        });
    }
    out
}

/// Removes by force whatever the test's daemon left on the machine, whether the test
/// passed or not: processes, mounts, cgroups, leases, veths and the test's directory.
struct Sweeper {
    places: Option<Places>,
    seen: Arc<Mutex<Seen>>,
}

impl Sweeper {
    fn sweep(&self) {
        let Some(pl) = &self.places else {
            return;
        };
        let tmp = pl.tmp.to_string_lossy().to_string();
        let parent = format!("{}/", pl.cgroup_parent);
        let me = std::process::id();
        for _ in 0..3 {
            let mut killed = 0;
            for p in processes() {
                let in_test_pod =
                    p.ns.is_some_and(|ns| self.seen.lock().is_ok_and(|s| s.pod_ns.contains(&ns)));
                if p.pid != me
                    && p.state != 'Z'
                    && (p.cmdline.contains(&tmp) || p.cgroup.contains(&parent) || in_test_pod)
                {
                    // SAFETY: a plain kill of a pid just read from /proc.
                    unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
                    killed += 1;
                }
            }
            if killed == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        for mp in mounts_under(&pl.tmp).iter().rev() {
            if let Ok(c) = std::ffi::CString::new(mp.as_str()) {
                // SAFETY: a valid C string.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for h in cgroup_hierarchies() {
            let ours = h.join(pl.cgroup_parent.trim_start_matches('/'));
            let mut dirs: Vec<PathBuf> =
                names_in(&ours).into_iter().map(|n| ours.join(n)).collect();
            dirs.extend(
                names_in(&h.join("berth"))
                    .into_iter()
                    .filter(|n| seen.ids.contains(n))
                    .map(|n| h.join("berth").join(n)),
            );
            for d in dirs.iter().filter(|d| d.is_dir()) {
                for _ in 0..20 {
                    if std::fs::remove_dir(d).is_ok() || !d.exists() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = std::fs::remove_dir(&ours);
        }
        let leases_dir = Path::new("/var/lib/cni/networks").join(NETWORK);
        for n in names_in(&leases_dir) {
            let p = leases_dir.join(&n);
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            if !n.starts_with("last_reserved_ip") && seen.ids.iter().any(|id| text.contains(id)) {
                let _ = std::fs::remove_file(p);
            }
        }
        for v in &seen.veths {
            if Path::new("/sys/class/net").join(v).exists() {
                let _ = std::process::Command::new("ip")
                    .args(["link", "del", v])
                    .output();
            }
        }
        let _ = std::fs::remove_dir_all(&pl.tmp);
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.sweep();
    }
}

fn seed() -> u64 {
    std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_kills_during_lifecycle_leave_nothing_behind() {
    let started = Instant::now();
    let seed = seed();
    eprintln!("chaos: seed {seed} (CHAOS_SEED={seed} replays the kill schedule)");
    let mut rng = XorShift::new(seed);

    // Declared before the daemon, so dropped after it: the daemon's own drop removes what
    // it can through crictl, then this removes the rest by force.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut sweeper = Sweeper {
        places: None,
        seen: seen.clone(),
    };
    let mut daemon = common::cri_daemon();
    let cgroup_parent = format!("/berth-chaos-{}", std::process::id());
    let places = Places {
        tmp: daemon.dir.path().to_path_buf(),
        state: daemon.state.clone(),
        root: daemon.root.clone(),
        cgroup_parent: cgroup_parent.clone(),
    };
    sweeper.places = Some(places.clone());
    pull(&daemon, BUSYBOX).await;
    eprintln!(
        "chaos: daemon up and image pulled after {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // Ids and veths seen on disk and in /proc while the test runs.
    let scanning = Arc::new(AtomicBool::new(true));
    let scanner = {
        let (places, seen, scanning) = (places.clone(), seen.clone(), scanning.clone());
        std::thread::spawn(move || {
            while scanning.load(Ordering::SeqCst) {
                places.scan_ids(&seen);
                std::thread::sleep(Duration::from_millis(40));
            }
        })
    };

    std::fs::create_dir_all(daemon.dir.path().join("logs")).unwrap();
    let shared = Arc::new(Shared {
        socket: daemon.socket.clone(),
        logs: daemon.dir.path().join("logs"),
        cgroup_parent: cgroup_parent.clone(),
        stop: AtomicBool::new(false),
        deadline: Instant::now() + CHAOS_CAP,
        in_flight: Default::default(),
        ledger: Mutex::new(Ledger::default()),
    });
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let worker = Worker {
                w,
                shared: shared.clone(),
                rt: None,
                rng: XorShift::new(rng.next()),
            };
            tokio::spawn(worker.run())
        })
        .collect();

    // The kills: after a random pause, aim at the RPC interrupted least so far (waiting up
    // to 2 s for a client to be inside it), then kill at a random point of the call (up to
    // 3/4 of its mean duration so far).
    let mut interrupted = [0u32; 10];
    let mut kills = Vec::new();
    for k in 0..KILLS {
        if Instant::now() >= shared.deadline {
            break;
        }
        tokio::time::sleep(rng.ms(500, 2000)).await;
        let offset = rng.below(LIFECYCLE as u64) as usize;
        let target = (0..LIFECYCLE)
            .map(|j| (j + offset) % LIFECYCLE)
            .min_by_key(|&r| interrupted[r])
            .unwrap();
        let aim_until = Instant::now() + Duration::from_secs(2);
        let busy = |r: usize| {
            shared
                .in_flight
                .iter()
                .any(|f| f.load(Ordering::SeqCst) == r + 1)
        };
        while !busy(target) && Instant::now() < aim_until {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if busy(target) {
            let mean_us = {
                let l = shared.ledger.lock().unwrap();
                l.ok_us[target] / u64::from(l.ok[target].max(1))
            };
            let into = Duration::from_micros(rng.below(mean_us.clamp(1, 200_000) * 3 / 4 + 1));
            tokio::task::block_in_place(|| std::thread::sleep(into));
        }
        let in_flight: Vec<usize> = shared
            .in_flight
            .iter()
            .map(|f| f.load(Ordering::SeqCst))
            .collect();
        tokio::task::block_in_place(|| daemon.kill9());
        let landed: Vec<&str> = in_flight
            .iter()
            .filter(|&&f| f > 0)
            .map(|&f| {
                interrupted[f - 1] += 1;
                RPCS[f - 1]
            })
            .collect();
        kills.push(format!(
            "kill {} at {:.1}s (aimed at {}): in {landed:?}",
            k + 1,
            started.elapsed().as_secs_f64(),
            RPCS[target]
        ));
        tokio::time::sleep(rng.ms(0, 300)).await;
        tokio::task::block_in_place(|| daemon.spawn());
    }
    // Let the clients run on the restarted daemon for a moment, then stop them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    shared.stop.store(true, Ordering::SeqCst);
    let mut stuck = Vec::new();
    for (w, h) in workers.into_iter().enumerate() {
        let abort = h.abort_handle();
        match tokio::time::timeout(Duration::from_secs(40), h).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => stuck.push(format!("client {w} failed: {e}")),
            Err(_) => {
                abort.abort();
                stuck.push(format!(
                    "client {w} still inside {} after the chaos phase",
                    match shared.in_flight[w].load(Ordering::SeqCst) {
                        0 => "no call",
                        f => RPCS[f - 1],
                    }
                ));
            }
        }
    }
    for k in &kills {
        eprintln!("chaos: {k}");
    }
    let chaos_secs = started.elapsed().as_secs_f64();

    // One more crash with nothing in flight, and the restart that must reconcile.
    tokio::task::block_in_place(|| {
        daemon.kill9();
        daemon.spawn();
    });
    let mut failures: Vec<String> = stuck;
    let mut rt = daemon.runtime().await;
    let list_pods = |mut rt: Runtime| async move {
        rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .map(|r| r.into_inner().items)
    };
    let list_ctrs = |mut rt: Runtime| async move {
        rt.list_containers(cri::ListContainersRequest { filter: None })
            .await
            .map(|r| r.into_inner().containers)
    };
    let pods = list_pods(rt.clone()).await.expect("ListPodSandbox");
    let ctrs = list_ctrs(rt.clone()).await.expect("ListContainers");
    let listed_pods: BTreeSet<String> = pods.iter().map(|p| p.id.clone()).collect();
    let listed_ctrs: BTreeSet<String> = ctrs.iter().map(|c| c.id.clone()).collect();

    // Lost: acknowledged, never (tried to be) removed, not listed. Back: removed OK, listed.
    let (lost, resurrected, acked_ctrs, acked_pods, stats) = {
        let l = shared.ledger.lock().unwrap();
        let mut lost = Vec::new();
        let mut back = Vec::new();
        for (kind, map, listed) in [
            ("container", &l.containers, &listed_ctrs),
            ("pod", &l.pods, &listed_pods),
        ] {
            for (id, f) in map {
                if !f.removal_attempted && !listed.contains(id) {
                    lost.push(format!("{kind} {id} ({}, pod {})", f.name, f.pod));
                }
                if f.removed && listed.contains(id) {
                    back.push(format!("{kind} {id} ({}) removed OK but listed", f.name));
                }
            }
        }
        lost.extend(l.not_found.iter().cloned());
        let per_rpc: Vec<String> = (0..RPCS.len())
            .map(|r| {
                format!(
                    "{} {}ok/{}err/{}killed (mean {:.1}ms)",
                    RPCS[r],
                    l.ok[r],
                    l.failed[r],
                    interrupted[r],
                    l.ok_us[r] as f64 / 1000.0 / f64::from(l.ok[r].max(1))
                )
            })
            .collect();
        let errors: Vec<String> = l
            .errors
            .iter()
            .map(|(k, (n, m))| format!("{k} x{n}: {m}"))
            .collect();
        eprintln!(
            "chaos: {} iterations, {} pods kept running across restarts\nchaos: {}\nchaos: errors the clients saw (mostly the daemon being down):\n  {}",
            l.iterations,
            l.kept,
            per_rpc.join(", "),
            errors.join("\n  ")
        );
        (lost, back, l.containers.len(), l.pods.len(), l.iterations)
    };
    {
        let mut s = seen.lock().unwrap();
        let l = shared.ledger.lock().unwrap();
        s.ids.extend(l.pods.keys().cloned());
        s.ids.extend(l.containers.keys().cloned());
        s.ids.extend(listed_pods.iter().cloned());
        s.ids.extend(listed_ctrs.iter().cloned());
    }
    let unacked_listed = listed_ctrs
        .iter()
        .filter(|id| !shared.ledger.lock().unwrap().containers.contains_key(*id))
        .count();
    eprintln!(
        "chaos: after the final restart: {} pods, {} containers listed ({unacked_listed} of them from a CreateContainer that got no answer)",
        listed_pods.len(),
        listed_ctrs.len()
    );
    failures.extend(lost.iter().map(|l| format!("lost: {l}")));
    failures.extend(resurrected.iter().map(|l| format!("resurrected: {l}")));

    // Remove everything through the daemon, as the kubelet would.
    let mut cleanup_errors = Vec::new();
    for c in &ctrs {
        let r = tokio::time::timeout(RPC_TIMEOUT, async {
            rt.stop_container(cri::StopContainerRequest {
                container_id: c.id.clone(),
                timeout: 0,
            })
            .await?;
            rt.remove_container(cri::RemoveContainerRequest {
                container_id: c.id.clone(),
            })
            .await
        })
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => cleanup_errors.push(format!("container {}: {e}", c.id)),
            Err(_) => cleanup_errors.push(format!("container {}: timed out", c.id)),
        }
    }
    for p in &pods {
        let r = tokio::time::timeout(RPC_TIMEOUT, async {
            rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await?;
            rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: p.id.clone(),
            })
            .await
        })
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => cleanup_errors.push(format!("pod {}: {e}", p.id)),
            Err(_) => cleanup_errors.push(format!("pod {}: timed out", p.id)),
        }
    }
    failures.extend(
        cleanup_errors
            .iter()
            .map(|e| format!("cleanup RPC failed: {e}")),
    );
    let left_pods = list_pods(rt.clone()).await.unwrap_or_default();
    let left_ctrs = list_ctrs(rt.clone()).await.unwrap_or_default();
    failures.extend(
        left_pods
            .iter()
            .map(|p| format!("still listed after removal: pod {}", p.id)),
    );
    failures.extend(
        left_ctrs
            .iter()
            .map(|c| format!("still listed after removal: container {}", c.id)),
    );

    // Leaks: poll until clean (the trash and released network namespaces go in the
    // background), then report what is left.
    scanning.store(false, Ordering::SeqCst);
    let _ = scanner.join();
    places.scan_ids(&seen);
    let daemon_pid = Some(daemon.pid());
    let settle_until = Instant::now() + SETTLE;
    let leaks = loop {
        let leaks = places.leaks(&seen.lock().unwrap(), daemon_pid);
        if leaks.values().all(Vec::is_empty) || Instant::now() >= settle_until {
            break leaks;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let ids_tracked = seen.lock().unwrap().ids.len();
    let veths_tracked = seen.lock().unwrap().veths.len();
    let counts: Vec<String> = leaks
        .iter()
        .map(|(k, v)| format!("{k}={}", v.len()))
        .collect();
    for (check, items) in &leaks {
        for i in items {
            failures.push(format!("leak [{check}]: {i}"));
        }
    }
    let covered = interrupted[..LIFECYCLE].iter().filter(|&&n| n > 0).count();
    eprintln!(
        "chaos summary: seed {seed}, {} kills + 1 (landing inside {covered}/{LIFECYCLE} lifecycle RPCs), {} iterations, {acked_pods} pods and {acked_ctrs} containers acknowledged, {} lost, {} resurrected, {} cleanup errors, {ids_tracked} ids and {veths_tracked} veths tracked; leaks: {}; chaos phase {chaos_secs:.1}s, total {:.1}s",
        kills.len(),
        stats,
        lost.len(),
        resurrected.len(),
        cleanup_errors.len(),
        counts.join(" "),
        started.elapsed().as_secs_f64()
    );
    // The daemon's log goes with the test dir: keep a copy when the test fails or
    // CHAOS_KEEP_LOG is set.
    let kept_log = std::env::temp_dir().join(format!("berth-chaos-{seed}.log"));
    if !failures.is_empty() || std::env::var_os("CHAOS_KEEP_LOG").is_some() {
        let _ = std::fs::copy(&daemon.log_path, &kept_log);
        eprintln!("chaos: the daemon's log is in {}", kept_log.display());
    }
    if !failures.is_empty() {
        // Stop the daemon before failing, so its drop does not dump the whole debug log.
        drop(rt);
        drop(daemon);
        sweeper.sweep();
        panic!(
            "chaos (seed {seed}) found {} problem(s); the daemon's log is in {}:\n  {}",
            failures.len(),
            kept_log.display(),
            failures.join("\n  ")
        );
    }
}
