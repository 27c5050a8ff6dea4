//! Pod sandboxes: `PodManager` creates, stops, removes and reports pods. A pod is a set of
//! pinned namespaces (network+UTS, IPC, and a PID namespace held by the pod init), its
//! cgroup, its CNI attachment, and the files containers bind-mount (resolv.conf, hosts,
//! hostname, /dev/shm), all under `<state_dir>/pods/<id>/`.

pub mod cgroup;
pub mod files;
pub mod init;
pub mod namespaces;
pub mod netstats;
mod retired_netns;
mod spec;
pub mod sysctl;
mod userns;

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meta_store::MetaStore;
use serde::Serialize;

pub use init::InitProcess;
pub use spec::{IdMapping, NamespaceMode, NamespaceModes, PodRecord, PodSpec, UserNamespaceSpec};

use crate::cni::{self, Attachment, CniError, CniInvoker, NetworkReadiness};
use crate::trash::Trash;
use crate::undo::Undo;
use namespaces::{NamespaceError, NamespacePlan};
use retired_netns::RetiredNetns;

/// The interface name of the pod's network inside its namespace.
pub const POD_IFNAME: &str = "eth0";
/// The size of a pod's /dev/shm, as containerd makes it.
const SHM_SIZE: &str = "65536k";
/// How long one CNI plugin may run.
const CNI_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a killed pod init may take to go.
const INIT_EXIT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("pod sandbox {0:?} not found")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("the pod network is not ready: {0}")]
    NetworkNotReady(String),
    #[error("pod network: {0}")]
    Cni(#[from] CniError),
    #[error("pod namespaces: {0}")]
    Namespaces(#[from] NamespaceError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] meta_store::Error),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PodError {
    let what = what.into();
    move |source| PodError::Io { what, source }
}

/// Where a pod manager keeps things and finds its network.
#[derive(Debug, Clone)]
pub struct PodManagerConfig {
    pub state_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    /// Cached CNI attachments; must survive a reboot (IP leases do).
    pub cni_cache_dir: PathBuf,
}

/// The files and mounts of one pod, for the container work to bind-mount.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PodPaths {
    pub dir: PathBuf,
    /// Pins: `<ns_dir>/{net,uts,ipc,pid}` where the pod has them.
    pub ns_dir: PathBuf,
    pub resolv_conf: PathBuf,
    pub hosts: PathBuf,
    pub hostname: PathBuf,
    /// A 64 MiB tmpfs, unless the pod uses the host IPC namespace.
    pub shm: PathBuf,
}

impl PodPaths {
    fn new(state_dir: &Path, id: &str) -> PodPaths {
        let dir = state_dir.join("pods").join(id);
        PodPaths {
            ns_dir: dir.join("ns"),
            resolv_conf: dir.join("resolv.conf"),
            hosts: dir.join("hosts"),
            hostname: dir.join("hostname"),
            shm: dir.join("shm"),
            dir,
        }
    }

    /// The pinned namespace of `kind` ("net", "uts", "ipc", "pid").
    pub fn namespace(&self, kind: &str) -> PathBuf {
        namespaces::pin_path(&self.ns_dir, kind)
    }
}

/// A pod as reported: its record, whether it is ready, and its paths.
#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    pub record: PodRecord,
    pub ready: bool,
    pub paths: PodPaths,
}

impl PodView {
    /// The pinned network namespace of a pod that has its own (not the host's).
    pub fn netns(&self) -> Option<PathBuf> {
        (self.record.spec.namespaces.network != NamespaceMode::Node && !self.record.stopped)
            .then(|| namespaces::pin_path(&self.paths.ns_dir, "net"))
    }
}

/// The pod sandbox service.
pub struct PodManager {
    cfg: PodManagerConfig,
    meta: Arc<MetaStore>,
    cni: CniInvoker,
    trash: Arc<Trash>,
    /// Network namespaces of removed pods, released in quiet moments.
    retired: RetiredNetns,
    pods: Mutex<BTreeMap<String, Arc<Mutex<PodRecord>>>>,
    /// Reservation keys (name, namespace, uid, attempt) of every pod that exists or is
    /// being created, so a duplicate is refused without waiting on any pod's lock.
    names: Mutex<HashSet<String>>,
    /// Pods whose stop has begun: no longer ready, so no container is created in them
    /// while their containers are being killed.
    stopping: Mutex<HashSet<String>>,
}

impl PodManager {
    /// Loads every pod record, and releases CNI attachments no pod owns any more (left by
    /// a crash between CNI ADD and the record's commit).
    pub fn new(
        cfg: PodManagerConfig,
        meta: Arc<MetaStore>,
        trash: Arc<Trash>,
    ) -> Result<PodManager, PodError> {
        // Sealed now so the first pod does not pay for it.
        init::prepare().map_err(io_err("preparing the pod init"))?;
        let cni = CniInvoker {
            bin_dirs: cfg.cni_bin_dirs.clone(),
            cache_dir: cfg.cni_cache_dir.clone(),
            timeout: CNI_TIMEOUT,
        };
        let mut pods = BTreeMap::new();
        for (key, rec) in meta.list::<PodRecord>()? {
            match rec {
                Ok(r) => {
                    pods.insert(key, Arc::new(Mutex::new(r)));
                }
                Err(e) => {
                    tracing::error!(pod = %key, error = %e, "skipping an unreadable pod record")
                }
            }
        }
        for id in cni.cached_ids() {
            if !pods.contains_key(&id) {
                match cni.del(&id) {
                    Ok(()) => {
                        tracing::info!(pod = %id, "released the network of a pod berth no longer knows")
                    }
                    Err(e) => {
                        tracing::warn!(pod = %id, error = %e, "releasing an orphaned pod network")
                    }
                }
            }
        }
        let pods_dir = cfg.state_dir.join("pods");
        for entry in std::fs::read_dir(&pods_dir).into_iter().flatten().flatten() {
            let id = entry.file_name().to_string_lossy().to_string();
            if !pods.contains_key(&id) {
                tracing::info!(pod = %id, "removing what a crash left of a pod being created");
                remove_orphan(&PodPaths::new(&cfg.state_dir, &id));
            }
        }
        let names = pods
            .values()
            .map(|p| p.lock().expect("pod record").spec.reservation_key())
            .collect();
        tracing::info!(pods = pods.len(), "pod sandboxes loaded");
        Ok(PodManager {
            cfg,
            meta,
            cni,
            trash,
            retired: RetiredNetns::new(retired_netns::Limits::default()),
            pods: Mutex::new(pods),
            names: Mutex::new(names),
            stopping: Mutex::new(HashSet::new()),
        })
    }

    /// The network pods attach to; an error says why there is none usable.
    fn ready_network(&self) -> Result<cni::NetworkConfigList, PodError> {
        match cni::find_network(&self.cfg.cni_conf_dir, &self.cfg.cni_bin_dirs) {
            (Some(list), NetworkReadiness::Ready) => Ok(list),
            (_, NetworkReadiness::NotReady { message, .. }) => {
                Err(PodError::NetworkNotReady(message))
            }
            (None, NetworkReadiness::Ready) => {
                Err(PodError::NetworkNotReady("no CNI network config".into()))
            }
        }
    }

    pub fn paths(&self, id: &str) -> PodPaths {
        PodPaths::new(&self.cfg.state_dir, id)
    }

    /// Creates a pod; returns its id. On any failure nothing is left behind.
    pub fn run(&self, spec: PodSpec) -> Result<String, PodError> {
        validate(&spec)?;
        let key = spec.reservation_key();
        let reservation = self.reserve(&key)?;
        let network = spec.namespaces.network != NamespaceMode::Node;
        let net_list = if network {
            Some(self.ready_network()?)
        } else {
            None
        };
        let started = std::time::Instant::now();
        let id = new_id().map_err(io_err("making a pod id"))?;
        let paths = self.paths(&id);
        let mut undo = Undo::new();

        std::fs::create_dir_all(paths.dir.parent().unwrap_or(&paths.dir))
            .map_err(io_err("creating the pods directory"))?;
        std::fs::create_dir(&paths.dir)
            .map_err(io_err(format!("creating {}", paths.dir.display())))?;
        let dir = paths.dir.clone();
        undo.push("pod directory", move || {
            log_failure("removing the pod directory", std::fs::remove_dir_all(&dir))
        });

        let rel =
            cgroup::relative_path(&spec.cgroup_parent, &id).map_err(PodError::InvalidArgument)?;
        // For the clean-up after a crash before the record is written (`remove_orphan`).
        write_file(&paths.dir.join(ORPHAN_CGROUP_FILE), &rel.to_string_lossy())?;
        // The namespace thread creates it; removed after the init is gone (undo runs in
        // reverse).
        let dirs = cgroup::leaf_dirs(&rel);
        undo.push("pod cgroup", move || {
            log_failure("removing the pod cgroup", cgroup::remove(&dirs))
        });

        let ns_dir = paths.ns_dir.clone();
        undo.push("pinned namespaces", move || {
            log_failure("unpinning namespaces", namespaces::unpin_all(&ns_dir))
        });
        let mut pending = namespaces::start(NamespacePlan {
            dir: paths.ns_dir.clone(),
            network,
            hostname: spec.hostname.clone(),
            ipc: spec.namespaces.ipc != NamespaceMode::Node,
            sysctls: spec
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cgroup: rel,
            pod_init: spec.namespaces.pid == NamespaceMode::Pod,
            user_namespace: spec.user_namespace,
        })?;
        pending.pinned()?;
        let t_namespaces = started.elapsed();

        if spec.namespaces.ipc != NamespaceMode::Node {
            mount_shm(&paths.shm)?;
            let shm = paths.shm.clone();
            undo.push("pod /dev/shm", move || {
                log_failure("unmounting the pod shm", namespaces::detach(&shm))
            });
        }

        let hostname = write_name_files(&paths, &spec)?;

        // CNI runs while the namespace thread creates the cgroup and starts the pod init.
        let network_result = match &net_list {
            Some(list) => {
                let cni = self.cni.clone();
                let cni_id = id.clone();
                undo.push("pod network", move || {
                    log_failure("CNI DEL", cni.del(&cni_id))
                });
                let _busy = self.retired.busy();
                self.cni
                    .add(list, &attachment(&id, &paths, &spec))
                    .map(|r| Some(r.pod_ips(POD_IFNAME)))
            }
            None => Ok(None),
        };
        let namespaces::Created { cgroup_dirs, init } = pending.finish()?;
        if let Some(init) = init {
            undo.push("pod init", move || {
                log_failure("killing the pod init", init.terminate(INIT_EXIT_TIMEOUT))
            });
        }
        let ips = match network_result? {
            Some(ips) => {
                write_file(
                    &paths.hosts,
                    &files::render_hosts(ips.first().copied(), &hostname),
                )?;
                ips
            }
            None => {
                copy_host_file("/etc/hosts", &paths.hosts)?;
                Vec::new()
            }
        };

        let t_network = started.elapsed();
        let record = PodRecord {
            id: id.clone(),
            spec,
            created_at_ns: now_ns(),
            stopped: false,
            init,
            cgroup_dirs,
            ips,
            network_attached: net_list.is_some(),
        };
        self.meta.put(&id, &record)?;
        self.pods
            .lock()
            .expect("pod table")
            .insert(id.clone(), Arc::new(Mutex::new(record)));
        undo.commit();
        reservation.keep();
        tracing::debug!(
            pod = %id,
            namespaces = ?t_namespaces,
            network = ?t_network,
            total = ?started.elapsed(),
            "pod sandbox created (cumulative step times)"
        );
        Ok(id)
    }

    /// Stops a pod: kills its init (and so every process in its PID namespace) and
    /// detaches it from the network. Idempotent; an unknown pod is not an error.
    pub fn stop(&self, id: &str) -> Result<(), PodError> {
        let Some(pod) = self.get(id)? else {
            return Ok(());
        };
        let mut rec = pod.lock().expect("pod record");
        self.stopping
            .lock()
            .expect("stopping pods")
            .insert(rec.id.clone());
        self.stop_locked(&mut rec)
    }

    /// Marks a pod as stopping before its containers are killed: from now on it is not
    /// ready, so a CreateContainer racing the stop fails instead of leaving a container
    /// behind in a stopped pod.
    pub fn begin_stop(&self, id: &str) {
        if let Ok(Some(id)) = self.resolve(id) {
            self.stopping.lock().expect("stopping pods").insert(id);
        }
    }

    fn stop_locked(&self, rec: &mut PodRecord) -> Result<(), PodError> {
        // The init, and with it every process of the pod's PID namespace, dies while the
        // network goes: the CNI DEL mostly waits on the kernel (a veth's deletion waits for
        // an RCU barrier), the init's end on its processes' exits.
        let (init_stopped, detached) = std::thread::scope(|s| {
            let detach = rec.network_attached.then(|| {
                s.spawn(|| {
                    let _busy = self.retired.busy();
                    self.cni.del(&rec.id)
                })
            });
            let init_stopped = rec
                .init
                .map_or(Ok(()), |init| init.terminate(INIT_EXIT_TIMEOUT));
            let detached =
                detach.map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            (init_stopped, detached)
        });
        if let Some(detached) = detached {
            detached?;
            rec.network_attached = false;
        }
        init_stopped.map_err(io_err("stopping the pod init"))?;
        if !rec.stopped {
            rec.stopped = true;
            self.meta.put(&rec.id, &*rec)?;
        }
        Ok(())
    }

    /// Removes a pod and everything it holds, stopping it first if needed. Idempotent;
    /// an unknown pod is not an error.
    pub fn remove(&self, id: &str) -> Result<(), PodError> {
        let Some(pod) = self.get(id)? else {
            return Ok(());
        };
        let mut rec = pod.lock().expect("pod record");
        let id = rec.id.clone();
        let id = id.as_str();
        self.stopping
            .lock()
            .expect("stopping pods")
            .insert(id.to_string());
        self.stop_locked(&mut rec)?;
        let paths = self.paths(id);
        namespaces::detach(&paths.shm).map_err(io_err("unmounting the pod shm"))?;
        if let Ok(netns) = std::fs::File::open(namespaces::pin_path(&paths.ns_dir, "net")) {
            self.retired.retire(netns);
        }
        namespaces::unpin_all(&paths.ns_dir).map_err(io_err("unpinning the pod namespaces"))?;
        self.trash
            .discard(&paths.dir)
            .map_err(io_err(format!("removing {}", paths.dir.display())))?;
        cgroup::remove(&rec.cgroup_dirs).map_err(io_err("removing the pod cgroup"))?;
        self.meta.delete::<PodRecord>(id)?;
        self.pods.lock().expect("pod table").remove(id);
        self.names
            .lock()
            .expect("pod names")
            .remove(&rec.spec.reservation_key());
        self.stopping.lock().expect("stopping pods").remove(id);
        Ok(())
    }

    /// One pod, by id or unique id prefix; NotFound if berth does not know it.
    pub fn status(&self, id: &str) -> Result<PodView, PodError> {
        self.find(id)?
            .ok_or_else(|| PodError::NotFound(id.to_string()))
    }

    /// A pod by id or unique id prefix, `None` when berth does not know it: what Stop and
    /// Remove act on, idempotent whatever the id's form (critest's idempotence specs send
    /// UUIDs); a prefix of several pods is InvalidArgument.
    pub fn find(&self, id: &str) -> Result<Option<PodView>, PodError> {
        Ok(self
            .get(id)?
            .map(|pod| self.view(pod.lock().expect("pod record").clone())))
    }

    /// Every pod, in id order.
    pub fn list(&self) -> Vec<PodView> {
        let pods: Vec<_> = self
            .pods
            .lock()
            .expect("pod table")
            .values()
            .cloned()
            .collect();
        pods.into_iter()
            .map(|p| {
                let rec = p.lock().expect("pod record").clone();
                self.view(rec)
            })
            .collect()
    }

    /// Bytes of every pod's labels and annotations, keys and values, from the records
    /// alone (no view: that would probe each pod's namespaces and init).
    pub fn metadata_bytes(&self) -> usize {
        let pods: Vec<_> = self
            .pods
            .lock()
            .expect("pod table")
            .values()
            .cloned()
            .collect();
        pods.iter()
            .map(|p| {
                let rec = p.lock().expect("pod record");
                let spec = &rec.spec;
                spec.labels
                    .iter()
                    .chain(&spec.annotations)
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// The raw JSON of a pod's CNI result, if it is attached.
    pub fn network_result(&self, id: &str) -> Option<serde_json::Value> {
        self.cni.cached_result(id).ok().flatten().map(|r| r.raw)
    }

    fn view(&self, record: PodRecord) -> PodView {
        let paths = self.paths(&record.id);
        let ready = !record.stopped
            && !self
                .stopping
                .lock()
                .expect("stopping pods")
                .contains(&record.id)
            && record.init.is_none_or(|i| i.is_alive())
            && (record.spec.namespaces.network == NamespaceMode::Node
                || is_pinned(&paths.namespace("net")));
        PodView {
            record,
            ready,
            paths,
        }
    }

    fn get(&self, id: &str) -> Result<Option<Arc<Mutex<PodRecord>>>, PodError> {
        let pods = self.pods.lock().expect("pod table");
        Ok(match self.resolve_in(&pods, id)? {
            Some(id) => pods.get(&id).cloned(),
            None => None,
        })
    }

    /// The full id of the pod `id` names: itself, or the one pod whose id starts with it
    /// (as crictl's short ids do). A prefix of several is InvalidArgument.
    pub fn resolve(&self, id: &str) -> Result<Option<String>, PodError> {
        self.resolve_in(&self.pods.lock().expect("pod table"), id)
    }

    fn resolve_in(
        &self,
        pods: &BTreeMap<String, Arc<Mutex<PodRecord>>>,
        id: &str,
    ) -> Result<Option<String>, PodError> {
        if id.is_empty() {
            return Ok(None);
        }
        if pods.contains_key(id) {
            return Ok(Some(id.to_string()));
        }
        let mut matches = pods
            .range(id.to_string()..)
            .take_while(|(k, _)| k.starts_with(id))
            .map(|(k, _)| k);
        match (matches.next(), matches.next()) {
            (None, _) => Ok(None),
            (Some(one), None) => Ok(Some(one.clone())),
            (Some(_), Some(_)) => Err(PodError::InvalidArgument(format!(
                "pod sandbox id prefix {id:?} is ambiguous: it matches {} pods",
                2 + matches.count()
            ))),
        }
    }

    fn reserve(&self, key: &str) -> Result<Reservation<'_>, PodError> {
        if !self
            .names
            .lock()
            .expect("pod names")
            .insert(key.to_string())
        {
            return Err(PodError::AlreadyExists(format!(
                "a pod sandbox named {key:?} already exists; remove it first"
            )));
        }
        Ok(Reservation {
            names: &self.names,
            key: key.to_string(),
            kept: false,
        })
    }
}

/// A pod name taken for a creation; given back unless the pod was created (`keep`).
struct Reservation<'a> {
    names: &'a Mutex<HashSet<String>>,
    key: String,
    kept: bool,
}

impl Reservation<'_> {
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.names.lock().expect("pod names").remove(&self.key);
        }
    }
}

/// The file in a pod's directory naming its cgroup, relative to each hierarchy.
const ORPHAN_CGROUP_FILE: &str = "cgroup";

/// Removes what a creation interrupted by a crash left of a pod that has no record: its
/// init (found as PID 1 of the pinned PID namespace), mounts, cgroup and directory. Its
/// CNI attachment, if any, is released from the CNI cache. Best effort, logged.
fn remove_orphan(paths: &PodPaths) {
    if let Some(init) = init::pid_namespace_init(&paths.namespace("pid")) {
        log_failure(
            "killing an orphaned pod init",
            init.terminate(INIT_EXIT_TIMEOUT),
        );
    }
    log_failure(
        "unmounting an orphaned pod shm",
        namespaces::detach(&paths.shm),
    );
    log_failure(
        "unpinning orphaned namespaces",
        namespaces::unpin_all(&paths.ns_dir),
    );
    if let Ok(rel) = std::fs::read_to_string(paths.dir.join(ORPHAN_CGROUP_FILE)) {
        let dirs = cgroup::leaf_dirs(Path::new(rel.trim()));
        // An init started just before the crash may have no pin to be found by yet.
        cgroup::kill_all(&dirs);
        log_failure("removing an orphaned pod cgroup", cgroup::remove(&dirs));
    }
    log_failure(
        "removing an orphaned pod directory",
        std::fs::remove_dir_all(&paths.dir),
    );
}

fn validate(spec: &PodSpec) -> Result<(), PodError> {
    let bad = |m: String| Err(PodError::InvalidArgument(m));
    if spec.name.is_empty() || spec.namespace.is_empty() {
        return bad("pod metadata needs a name and a namespace".into());
    }
    let ns = &spec.namespaces;
    for (kind, mode) in [("network", ns.network), ("PID", ns.pid), ("IPC", ns.ipc)] {
        if mode == NamespaceMode::Target {
            return bad(format!(
                "{kind} namespace mode TARGET is for containers, not pods"
            ));
        }
    }
    if let Some(userns) = &spec.user_namespace {
        for (kind, mode) in [("network", ns.network), ("PID", ns.pid), ("IPC", ns.ipc)] {
            if mode == NamespaceMode::Node {
                return bad(format!(
                    "a pod with its own user namespace cannot use the host's {kind} namespace"
                ));
            }
        }
        for (what, m) in [("uid", userns.uids), ("gid", userns.gids)] {
            if m.host_of(0).is_none() {
                return bad(format!(
                    "the user namespace's {what} mapping must map container ID 0"
                ));
            }
            if m.host_id.checked_add(m.length).is_none() {
                return bad(format!(
                    "the user namespace's {what} mapping runs past the largest host ID"
                ));
            }
        }
    }
    files::validate_hostname(&spec.hostname).map_err(PodError::InvalidArgument)?;
    spec.dns.validate().map_err(PodError::InvalidArgument)?;
    for (name, value) in &spec.sysctls {
        sysctl::validate(
            name,
            value,
            ns.network == NamespaceMode::Node,
            ns.ipc == NamespaceMode::Node,
        )
        .map_err(PodError::InvalidArgument)?;
    }
    for p in &spec.port_mappings {
        if !matches!(p.protocol.as_str(), "tcp" | "udp" | "sctp") {
            return bad(format!(
                "port mapping protocol {:?} is not tcp, udp or sctp",
                p.protocol
            ));
        }
    }
    Ok(())
}

fn attachment(id: &str, paths: &PodPaths, spec: &PodSpec) -> Attachment {
    Attachment {
        container_id: id.to_string(),
        netns: paths.namespace("net"),
        ifname: POD_IFNAME.into(),
        args: vec![
            ("K8S_POD_NAMESPACE".into(), spec.namespace.clone()),
            ("K8S_POD_NAME".into(), spec.name.clone()),
            ("K8S_POD_INFRA_CONTAINER_ID".into(), id.to_string()),
            ("K8S_POD_UID".into(), spec.uid.clone()),
        ],
        // Mappings without a host port need nothing beyond the pod IP.
        port_mappings: spec
            .port_mappings
            .iter()
            .filter(|p| p.host_port != 0)
            .cloned()
            .collect(),
    }
}

/// Writes /etc/hostname and /etc/resolv.conf for the pod; returns the hostname (the
/// host's when the pod names none).
fn write_name_files(paths: &PodPaths, spec: &PodSpec) -> Result<String, PodError> {
    let hostname = if spec.hostname.is_empty() {
        host_hostname()
    } else {
        spec.hostname.clone()
    };
    write_file(&paths.hostname, &format!("{hostname}\n"))?;
    match files::render_resolv_conf(&spec.dns) {
        Some(text) => write_file(&paths.resolv_conf, &text)?,
        None => copy_host_file("/etc/resolv.conf", &paths.resolv_conf)?,
    }
    Ok(hostname)
}

fn mount_shm(path: &Path) -> Result<(), PodError> {
    use nix::mount::{MsFlags, mount};
    std::fs::create_dir(path).map_err(io_err(format!("creating {}", path.display())))?;
    mount(
        Some("shm"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={SHM_SIZE}").as_str()),
    )
    .map_err(|e| io_err(format!("mounting the pod shm at {}", path.display()))(e.into()))
}

fn write_file(path: &Path, text: &str) -> Result<(), PodError> {
    std::fs::write(path, text).map_err(io_err(format!("writing {}", path.display())))
}

/// Copies a host file, or writes an empty one if the host has none.
fn copy_host_file(host: &str, to: &Path) -> Result<(), PodError> {
    match std::fs::read(host) {
        Ok(b) => std::fs::write(to, b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::write(to, b""),
        Err(e) => Err(e),
    }
    .map_err(io_err(format!("copying {host} to {}", to.display())))
}

fn host_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default()
}

/// Whether `p` is a mounted namespace (nsfs), i.e. the pin still holds it.
fn is_pinned(p: &Path) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

fn log_failure<E: std::fmt::Display>(what: &str, r: Result<(), E>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "{what} failed while cleaning up");
    }
}

/// 64 hex characters from the kernel's random pool.
fn new_id() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    // SAFETY: getrandom writes at most `len` bytes into our buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
