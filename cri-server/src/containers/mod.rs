//! The daemon's view of containers: their records (metadata store table "containers"), an
//! in-memory index for List/Status, the lifecycle calls into `sandbox::container`, and the
//! event stream for the kubelet's evented PLEG.
//!
//! State is never stored here: created/running/exited is read from the facts the monitor
//! writes in each container's state dir, so a restarted daemon reports the truth.

pub mod devices;
pub mod image_volumes;
pub mod metrics;
pub mod spec;
pub mod stats;
pub mod user;
pub mod wasm;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cri_api::v1 as cri;
use meta_store::MetaStore;
use sandbox::container::{self as ctr, ContainerState, MonitorCommand};
use sandbox::trash::Trash;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::{CriError, CriResult, blocking};

/// What berth remembers about a container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub pod_id: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the user named it (see `container_create::image_as_named`).
    pub image: String,
    /// The image id (config digest), as PullImage returned it.
    pub image_id: String,
    /// A repo digest of the image when it has one, else its id.
    pub image_ref: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The CRI log file (empty when the request named none).
    pub log_path: String,
    pub created_at_ns: i64,
    pub mounts: Vec<MountRecord>,
    /// What StopContainer sends, e.g. `SIGQUIT`: the request's stop signal, else the
    /// image's StopSignal; SIGTERM when empty.
    pub stop_signal: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The reservation key `<name>_<pod name>_<namespace>_<pod uid>_<attempt>`.
    pub reserved_name: String,
    /// The container's state directory (monitor files, config.json).
    pub dir: PathBuf,
    /// Run by Wasmtime (`berth __wasm-run`) rather than as a native process.
    #[serde(default)]
    pub wasm: bool,
    /// Why it runs natively or as Wasm (ContainerStatus verbose info).
    #[serde(default)]
    pub runtime_reason: String,
    /// The image layers it runs on, kept from garbage collection while it exists.
    #[serde(default)]
    pub layer_chain_ids: Vec<String>,
    /// Security settings asked for but not applied on this host, said aloud.
    #[serde(default)]
    pub not_applied: Vec<String>,
    /// OCI hooks from CDI specs still to run (poststart, poststop).
    #[serde(default)]
    pub hooks: Vec<devices::Hook>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountRecord {
    pub container_path: String,
    pub host_path: String,
    pub readonly: bool,
    pub selinux_relabel: bool,
    pub propagation: i32,
    /// The image of an image volume.
    #[serde(default)]
    pub image: Option<MountImage>,
    #[serde(default)]
    pub image_sub_path: String,
}

/// The image an image volume mounts: as the kubelet named it, and its id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MountImage {
    pub image: String,
    pub user_specified_image: String,
    /// The image id, the same value PullImage answered (the 1.36 image-id rule).
    pub image_ref: String,
}

impl meta_store::Record for ContainerRecord {
    const TABLE: &'static str = "containers";
    const VERSION: u32 = 1;
}

/// Under the layers dir; not a container id (those are 64 hex digits).
const EMPTY_LAYER: &str = "empty-layer";

/// The container service.
pub struct Containers {
    meta: Arc<MetaStore>,
    /// `<state_dir>/containers`: one state dir per container.
    state_dir: PathBuf,
    /// `<root_dir>/containers`: writable layers, which outlive a reboot.
    layers_dir: PathBuf,
    /// Where removed containers' directories go to be deleted in the background.
    pub trash: Arc<Trash>,
    monitor: MonitorCommand,
    records: RwLock<BTreeMap<String, Arc<ContainerRecord>>>,
    /// Reserved names → container id, so the kubelet's retries cannot make twins.
    names: Mutex<HashMap<String, String>>,
    events: broadcast::Sender<cri::ContainerEventResponse>,
    /// Previous CPU samples, for usage in nano-cores.
    pub cpu_rates: stats::CpuRates,
    /// Precompiled Wasm modules, shared by all containers and kept across restarts.
    pub wasm_cache: wasm_exec::CompileCache,
    /// What `state` learned that cannot change any more, per container.
    settled: Mutex<HashMap<String, Settled>>,
    /// Containers whose monitor's exit `watch_exit` is waiting for. The monitor outlives
    /// its container only by the moment it takes to record the exit, so while it lives a
    /// container known to be running needs no /proc check (a thousand of them cost a
    /// ListContainers ~10 ms of /proc reads).
    monitored: Mutex<HashSet<String>>,
}

/// A container's state once it cannot change back: running since (until the process is
/// gone), or exited with.
#[derive(Clone)]
enum Settled {
    Running {
        process: ctr::state::ProcessId,
        started_at_ns: i64,
    },
    Exited(ctr::state::ExitRecord),
}

impl Containers {
    pub fn open(
        meta: Arc<MetaStore>,
        state_dir: &Path,
        root_dir: &Path,
        trash: Arc<Trash>,
    ) -> anyhow::Result<Self> {
        let state_dir = state_dir.join("containers");
        let layers_dir = root_dir.join("containers");
        for d in [&state_dir, &layers_dir] {
            std::fs::create_dir_all(d)?;
        }
        let monitor = MonitorCommand::sealed_berth()?;
        let engine = wasm_exec::new_engine()
            .map_err(|e| anyhow::anyhow!("creating the Wasm engine: {e:#}"))?;
        let wasm_cache = wasm_exec::CompileCache::open(&root_dir.join("wasm-cache"), &engine)?;
        std::fs::create_dir_all(layers_dir.join(EMPTY_LAYER))?;
        let mut records = BTreeMap::new();
        let mut names = HashMap::new();
        for (key, rec) in meta.list::<ContainerRecord>()? {
            match rec {
                Ok(r) => {
                    names.insert(r.reserved_name.clone(), r.id.clone());
                    records.insert(key, Arc::new(r));
                }
                Err(e) => {
                    tracing::error!(container = %key, error = %e, "skipping an unreadable container record")
                }
            }
        }
        tracing::info!(containers = records.len(), "containers loaded");
        remove_orphans(&state_dir, &layers_dir, &records, &trash);
        let (events, _) = broadcast::channel(1024);
        Ok(Self {
            meta,
            state_dir,
            layers_dir,
            trash,
            monitor,
            records: RwLock::new(records),
            names: Mutex::new(names),
            events,
            cpu_rates: stats::CpuRates::default(),
            wasm_cache,
            settled: Mutex::new(HashMap::new()),
            monitored: Mutex::new(HashSet::new()),
        })
    }

    pub fn monitor(&self) -> &MonitorCommand {
        &self.monitor
    }

    /// A fresh container id: 64 hex digits, like containerd's.
    pub fn new_id() -> String {
        let mut bytes = [0u8; 32];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("reading /dev/urandom");
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn state_dir_of(&self, id: &str) -> PathBuf {
        self.state_dir.join(id)
    }

    pub fn layer_dirs_of(&self, id: &str) -> (PathBuf, PathBuf) {
        let d = self.layer_root_of(id);
        (d.join("upper"), d.join("work"))
    }

    /// `<root_dir>/containers/<id>`: the writable layer and the Wasm runner's files.
    pub fn layer_root_of(&self, id: &str) -> PathBuf {
        self.layers_dir.join(id)
    }

    /// Files the Wasm runner writes for the daemon (OOM marker, termination log); they
    /// go with the writable layer.
    pub fn wasm_files_of(&self, id: &str) -> (PathBuf, PathBuf) {
        let d = self.layers_dir.join(id).join("wasm");
        (d.join("oom"), d.join("termination-log"))
    }

    /// An empty, read-only lowerdir: the rootfs of images that are only a Wasm module.
    pub fn empty_layer(&self) -> PathBuf {
        self.layers_dir.join(EMPTY_LAYER)
    }

    /// Chain ids of the layers every known container runs on.
    pub fn layers_in_use(&self) -> Vec<String> {
        self.list()
            .iter()
            .flat_map(|r| r.layer_chain_ids.iter().cloned())
            .collect()
    }

    /// Reserves a container name; the guard releases it unless `commit` is called.
    pub fn reserve_name(&self, name: &str, id: &str) -> CriResult<NameReservation<'_>> {
        let mut names = self.names.lock().expect("names lock");
        if let Some(other) = names.get(name) {
            return Err(CriError::AlreadyExists(format!(
                "container name {name:?} is already reserved for container {other}"
            )));
        }
        names.insert(name.to_string(), id.to_string());
        Ok(NameReservation {
            containers: self,
            name: name.to_string(),
            committed: false,
        })
    }

    pub fn insert(&self, rec: ContainerRecord) -> CriResult<Arc<ContainerRecord>> {
        self.meta.put(&rec.id, &rec)?;
        let rec = Arc::new(rec);
        self.records
            .write()
            .expect("records lock")
            .insert(rec.id.clone(), rec.clone());
        Ok(rec)
    }

    /// A container by id or unique id prefix: NotFound when there is none, InvalidArgument
    /// when the prefix names several.
    pub fn get(&self, id: &str) -> CriResult<Arc<ContainerRecord>> {
        self.lookup(id)?
            .ok_or_else(|| CriError::NotFound(format!("container {id:?} not found")))
    }

    /// The container `id` names, if berth knows it (no error for ambiguity: for watchers).
    pub fn find(&self, id: &str) -> Option<Arc<ContainerRecord>> {
        self.lookup(id).ok().flatten()
    }

    /// A container by id or unique id prefix, `None` when berth does not know it: what
    /// Stop and Remove act on, idempotent whatever the id's form (critest's idempotence
    /// specs send UUIDs); a prefix of several containers is InvalidArgument.
    pub fn lookup(&self, id: &str) -> CriResult<Option<Arc<ContainerRecord>>> {
        if id.is_empty() {
            return Ok(None);
        }
        let records = self.records.read().expect("records lock");
        if let Some(r) = records.get(id) {
            return Ok(Some(r.clone()));
        }
        let mut matches = records
            .range(id.to_string()..)
            .take_while(|(k, _)| k.starts_with(id));
        match (matches.next(), matches.next()) {
            (None, _) => Ok(None),
            (Some((_, one)), None) => Ok(Some(one.clone())),
            (Some(_), Some(_)) => Err(CriError::InvalidArgument(format!(
                "container id prefix {id:?} is ambiguous: it matches {} containers",
                2 + matches.count()
            ))),
        }
    }

    pub fn list(&self) -> Vec<Arc<ContainerRecord>> {
        self.records
            .read()
            .expect("records lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn in_pod(&self, pod_id: &str) -> Vec<Arc<ContainerRecord>> {
        self.list()
            .into_iter()
            .filter(|r| r.pod_id == pod_id)
            .collect()
    }

    /// The container's state from its monitor's records. Facts that can no longer change
    /// (running since, exited with) are remembered, so listing a thousand containers costs
    /// one /proc read per running container instead of three file reads.
    pub fn state(&self, rec: &ContainerRecord) -> ContainerState {
        let settled = self
            .settled
            .lock()
            .expect("settled lock")
            .get(&rec.id)
            .cloned();
        match settled {
            Some(Settled::Exited(exit)) => return ContainerState::Exited(exit),
            Some(Settled::Running {
                process,
                started_at_ns,
            }) if self.is_monitored(&rec.id) || process.is_alive() => {
                return ContainerState::Running {
                    pid: process.pid,
                    started_at_ns,
                };
            }
            _ => {}
        }
        let state = match ctr::state(&rec.dir) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(container = %rec.id, error = %e, "container state unreadable");
                return ContainerState::Exited(ctr::state::ExitRecord {
                    exit_code: 255,
                    signal: None,
                    finished_at_ns: 0,
                    oom_killed: false,
                    message: Some(format!("berth cannot read the container's state: {e}")),
                });
            }
        };
        let settled = match &state {
            ContainerState::Exited(exit) => Some(Settled::Exited(exit.clone())),
            ContainerState::Running { started_at_ns, .. } => {
                ctr::state::read_json::<ctr::state::ProcessId>(&rec.dir, ctr::state::PID)
                    .ok()
                    .flatten()
                    .map(|process| Settled::Running {
                        process,
                        started_at_ns: *started_at_ns,
                    })
            }
            ContainerState::Created { .. } => None,
        };
        if let Some(settled) = settled {
            self.settled
                .lock()
                .expect("settled lock")
                .insert(rec.id.clone(), settled);
        }
        state
    }

    /// When the container's process began running, from the monitor's record; 0 if never.
    pub fn started_at(&self, rec: &ContainerRecord) -> i64 {
        ctr::state::read_json::<ctr::state::StartRecord>(&rec.dir, ctr::state::STARTED)
            .ok()
            .flatten()
            .map_or(0, |s| s.started_at_ns)
    }

    /// Stops a container: its stop signal, then SIGKILL once `timeout` has passed.
    /// Stopping a container that is not running is fine.
    pub async fn stop(&self, rec: &Arc<ContainerRecord>, timeout: Duration) -> CriResult<()> {
        let target = rec.clone();
        // CONTAINER_STOPPED comes from `watch_exit`, for stops and natural exits alike.
        blocking(move || -> CriResult<()> {
            let rec = target;
            let signal = parse_signal(&rec.stop_signal).unwrap_or(libc::SIGTERM);
            match ctr::state(&rec.dir) {
                Ok(ContainerState::Exited(_)) | Err(ctr::ContainerError::NotFound(_)) => {
                    return Ok(());
                }
                _ => {}
            }
            if !timeout.is_zero() {
                match ctr::signal(&rec.dir, signal) {
                    Ok(()) | Err(ctr::ContainerError::NotRunning) => {}
                    Err(e) => return Err(e.into()),
                }
                if matches!(ctr::wait(&rec.dir, timeout)?, ContainerState::Exited(_)) {
                    return Ok(());
                }
            }
            match ctr::signal(&rec.dir, libc::SIGKILL) {
                Ok(()) | Err(ctr::ContainerError::NotRunning) => {}
                Err(e) => return Err(e.into()),
            }
            match ctr::wait(&rec.dir, Duration::from_secs(30))? {
                ContainerState::Exited(_) => Ok(()),
                _ => Err(CriError::Internal(format!(
                    "container {} did not exit after SIGKILL",
                    rec.id
                ))),
            }
        })
        .await?
    }

    /// Emits CONTAINER_STOPPED when the container's monitor exits, which it does once the
    /// process ended and its exit is recorded: stopped or ended on its own, the kubelet's
    /// evented PLEG hears of it.
    pub fn watch_exit(self: &Arc<Self>, rec: Arc<ContainerRecord>) {
        let Some(fd) = ctr::monitor_pidfd(&rec.dir) else {
            return;
        };
        let containers = self.clone();
        tokio::spawn(async move {
            // SAFETY: the OwnedFd is ours and stays open for as long as the AsyncFd owns it.
            let registered = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            };
            let Ok(fd) = registered else {
                return;
            };
            containers.set_monitored(&rec.id, true);
            let _ = fd.readable().await;
            // Forget before anything else: from now on the state comes from the records.
            containers.set_monitored(&rec.id, false);
            containers
                .settled
                .lock()
                .expect("settled lock")
                .remove(&rec.id);
            if containers.find(&rec.id).is_some() {
                containers.emit(&rec, cri::ContainerEventType::ContainerStoppedEvent);
            }
        });
    }

    fn set_monitored(&self, id: &str, watched: bool) {
        let mut m = self.monitored.lock().expect("monitored lock");
        if watched {
            m.insert(id.to_string());
        } else {
            m.remove(id);
        }
    }

    fn is_monitored(&self, id: &str) -> bool {
        self.monitored.lock().expect("monitored lock").contains(id)
    }

    /// Publishes an event for the kubelet's evented PLEG.
    pub fn emit(&self, rec: &ContainerRecord, kind: cri::ContainerEventType) {
        let _ = self.events.send(cri::ContainerEventResponse {
            container_id: rec.id.clone(),
            container_event_type: kind as i32,
            created_at: now_ns(),
            pod_sandbox_status: None,
            containers_statuses: Vec::new(),
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.events.subscribe()
    }

    /// Kills and removes a container and forgets it. Idempotent.
    pub async fn remove(&self, rec: &Arc<ContainerRecord>) -> CriResult<()> {
        let dir = rec.dir.clone();
        let layers = self.layers_dir.join(&rec.id);
        let trash = self.trash.clone();
        blocking(move || -> CriResult<()> {
            ctr::remove(&dir, &trash)?;
            trash
                .discard(&layers)
                .map_err(|e| CriError::Internal(format!("removing {}: {e}", layers.display())))
        })
        .await??;
        self.meta.delete::<ContainerRecord>(&rec.id)?;
        self.records.write().expect("records lock").remove(&rec.id);
        self.names
            .lock()
            .expect("names lock")
            .remove(&rec.reserved_name);
        self.cpu_rates.forget(&rec.id);
        self.settled.lock().expect("settled lock").remove(&rec.id);
        self.emit(rec, cri::ContainerEventType::ContainerDeletedEvent);
        if rec
            .hooks
            .iter()
            .any(|h| h.stage == devices::HookStage::Poststop)
        {
            let rec = rec.clone();
            let state = devices::oci_state(&rec.id, "stopped", 0, &rec.dir, &rec.annotations);
            let ran = blocking(move || {
                devices::run_hooks(&rec.hooks, devices::HookStage::Poststop, &state)
                    .map_err(|e| tracing::warn!(container = %rec.id, "poststop hook: {e}"))
            })
            .await;
            drop(ran);
        }
        Ok(())
    }
}

/// Removes what no committed record owns: a daemon killed inside CreateContainer (the
/// record is written last) leaves a state dir, perhaps a monitor and a container process
/// held before execve, a cgroup, and a writable layer dir. Each removal is logged.
fn remove_orphans(
    state_dir: &Path,
    layers_dir: &Path,
    records: &BTreeMap<String, Arc<ContainerRecord>>,
    trash: &Trash,
) {
    let unowned = |dir: &Path| -> Vec<(String, PathBuf)> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .filter(|(name, _)| !records.contains_key(name) && name != EMPTY_LAYER)
            .collect()
    };
    for (id, dir) in unowned(state_dir) {
        match ctr::remove_orphan(&dir, trash) {
            Ok(()) => {
                tracing::info!(container = %id, "removed what a crash left of a container being created")
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "removing what a crash left of a container being created")
            }
        }
    }
    // What `remove_orphan` took through the container's config is gone already; this is
    // what was made before it (the Wasm runner's files) or left without a state dir.
    for (id, dir) in unowned(layers_dir) {
        match trash.discard(&dir) {
            Ok(()) => {
                tracing::info!(container = %id, "removed the writable layer of a container berth has no record of")
            }
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "removing an unowned writable layer")
            }
        }
    }
}

/// Holds a reserved container name until creation commits or fails.
pub struct NameReservation<'a> {
    containers: &'a Containers,
    name: String,
    committed: bool,
}

impl NameReservation<'_> {
    pub fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for NameReservation<'_> {
    fn drop(&mut self) {
        if !self.committed {
            self.containers
                .names
                .lock()
                .expect("names lock")
                .remove(&self.name);
        }
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Signal names without `SIG`, as images' StopSignal and the CRI's Signal enum spell them.
const SIGNALS: &[(&str, i32)] = &[
    ("ABRT", libc::SIGABRT),
    ("ALRM", libc::SIGALRM),
    ("BUS", libc::SIGBUS),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("FPE", libc::SIGFPE),
    ("HUP", libc::SIGHUP),
    ("ILL", libc::SIGILL),
    ("INT", libc::SIGINT),
    ("IO", libc::SIGIO),
    ("IOT", libc::SIGIOT),
    ("KILL", libc::SIGKILL),
    ("PIPE", libc::SIGPIPE),
    ("POLL", libc::SIGPOLL),
    ("PROF", libc::SIGPROF),
    ("PWR", libc::SIGPWR),
    ("QUIT", libc::SIGQUIT),
    ("SEGV", libc::SIGSEGV),
    ("STKFLT", libc::SIGSTKFLT),
    ("STOP", libc::SIGSTOP),
    ("SYS", libc::SIGSYS),
    ("TERM", libc::SIGTERM),
    ("TRAP", libc::SIGTRAP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("USR1", libc::SIGUSR1),
    ("USR2", libc::SIGUSR2),
    ("VTALRM", libc::SIGVTALRM),
    ("WINCH", libc::SIGWINCH),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
];

/// `SIGTERM`, `TERM`, `15`, `SIGRTMIN+3`, `RTMAX-1` → the signal number.
pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    let (rtmin, rtmax) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let realtime = |n: Option<i32>| n.filter(|n| (rtmin..=rtmax).contains(n));
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let plus = if rest.is_empty() {
            Some(0)
        } else {
            rest.strip_prefix('+')?.parse().ok()
        };
        return realtime(plus.map(|p: i32| rtmin + p));
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let minus = if rest.is_empty() {
            Some(0)
        } else {
            rest.strip_prefix('-')?.parse().ok()
        };
        return realtime(minus.map(|m: i32| rtmax - m));
    }
    SIGNALS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, sig)| *sig)
}

/// The CRI's stop signal (Kubernetes 1.33+, KEP-4960) as the name berth keeps, e.g.
/// `SIGQUIT` or `SIGRTMIN+1`; `None` for RUNTIME_DEFAULT (the image's, else SIGTERM).
pub fn stop_signal_from_cri(value: i32) -> CriResult<Option<String>> {
    let signal = cri::Signal::try_from(value).map_err(|_| {
        CriError::InvalidArgument(format!("stop_signal: {value} is not a known signal"))
    })?;
    if signal == cri::Signal::RuntimeDefault {
        return Ok(None);
    }
    let name = signal.as_str_name().trim_start_matches("SIGNAL_");
    let name = name
        .replace("RTMINPLUS", "RTMIN+")
        .replace("RTMAXMINUS", "RTMAX-");
    Ok(Some(name))
}

/// The signal StopContainer sends, as the CRI's Signal enum for ContainerStatus.
pub fn stop_signal_to_cri(name: &str) -> i32 {
    let Some(number) = parse_signal(name) else {
        return cri::Signal::Sigterm as i32;
    };
    let (rtmin, rtmax) = (libc::SIGRTMIN(), libc::SIGRTMAX());
    let spelled = if number == rtmin {
        "SIGRTMIN".to_string()
    } else if number == rtmax {
        "SIGRTMAX".to_string()
    } else if (rtmin..rtmax).contains(&number) && number - rtmin <= 15 {
        format!("SIGRTMINPLUS{}", number - rtmin)
    } else if (rtmin..rtmax).contains(&number) {
        format!("SIGRTMAXMINUS{}", rtmax - number)
    } else {
        match SIGNALS.iter().find(|(_, n)| *n == number) {
            Some((name, _)) => format!("SIG{name}"),
            None => return cri::Signal::Sigterm as i32,
        }
    };
    cri::Signal::from_str_name(&format!("SIGNAL_{spelled}"))
        .map_or(cri::Signal::Sigterm as i32, |s| s as i32)
}

#[cfg(test)]
mod signal_tests {
    use super::*;

    #[test]
    fn signal_names_numbers_and_the_cri_enum_agree() {
        assert_eq!(parse_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(parse_signal("term"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGRTMIN+3"), Some(libc::SIGRTMIN() + 3));
        assert_eq!(parse_signal("RTMAX-1"), Some(libc::SIGRTMAX() - 1));
        assert_eq!(parse_signal("SIGNOPE"), None);
        assert_eq!(parse_signal("SIGRTMIN+99"), None);
        assert_eq!(stop_signal_from_cri(0).unwrap(), None);
        for (cri_signal, name) in [
            (cri::Signal::Sigquit, "SIGQUIT"),
            (cri::Signal::Sigrtminplus1, "SIGRTMIN+1"),
            (cri::Signal::Sigrtmaxminus2, "SIGRTMAX-2"),
        ] {
            let kept = stop_signal_from_cri(cri_signal as i32).unwrap().unwrap();
            assert_eq!(kept, name);
            assert!(parse_signal(&kept).is_some(), "{kept}");
            assert_eq!(stop_signal_to_cri(&kept), cri_signal as i32, "{kept}");
        }
        assert!(matches!(
            stop_signal_from_cri(1000),
            Err(CriError::InvalidArgument(m)) if m.contains("stop_signal")
        ));
        assert_eq!(stop_signal_to_cri(""), cri::Signal::Sigterm as i32);
    }
}
