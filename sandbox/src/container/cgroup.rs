//! Per-container cgroups through cgroupfs: v1 (one directory per controller, as on this
//! machine) or v2 (one unified directory). The values to write are computed by pure
//! functions so the conversions are unit-tested without root.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Resource limits in kernel units; `None` leaves the parent's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// v1 `cpu.shares` (2..=262144); converted to `cpu.weight` on v2.
    pub cpu_shares: Option<u64>,
    /// CFS quota per period in µs; `-1` for unlimited.
    pub cpu_quota_us: Option<i64>,
    pub cpu_period_us: Option<u64>,
    pub memory_limit_bytes: Option<i64>,
    /// Memory plus swap (v1 `memory.memsw.limit_in_bytes`).
    pub memory_swap_limit_bytes: Option<i64>,
    pub pids_limit: Option<i64>,
}

pub const DEFAULT_CPU_PERIOD_US: u64 = 100_000;
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;
const MIN_QUOTA_US: i64 = 1_000;

/// Kubernetes' conversion of a CPU request to `cpu.shares` (1000m = 1024 shares).
pub fn cpu_shares_from_millicores(millicores: u64) -> u64 {
    (millicores.saturating_mul(1024) / 1000).clamp(MIN_SHARES, MAX_SHARES)
}

/// Kubernetes' conversion of a CPU limit to a CFS quota for `period_us`.
pub fn cpu_quota_from_millicores(millicores: u64, period_us: u64) -> i64 {
    let quota = millicores.saturating_mul(period_us) / 1000;
    (quota.min(i64::MAX as u64) as i64).max(MIN_QUOTA_US)
}

/// The OCI/crun mapping of v1 shares [2, 262144] onto v2 weight [1, 10000].
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(MIN_SHARES, MAX_SHARES);
    1 + ((shares - 2) * 9999) / 262_142
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "a swap limit different from the memory limit needs swap accounting (memory.memsw), which this host lacks"
    )]
    SwapUnsupported,
    #[error("the memory+swap limit {swap} is below the memory limit {memory}")]
    SwapBelowMemory { swap: i64, memory: i64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// Controller name and its mount, e.g. `("memory", "/sys/fs/cgroup/memory")`.
    V1(Vec<(&'static str, PathBuf)>),
    V2(PathBuf),
}

/// The v1 controllers each container gets a directory in.
const V1_CONTROLLERS: &[&str] = &["cpu", "cpuacct", "memory", "pids", "devices"];

/// Devices an unprivileged container may use (runc's defaults): the standard character
/// devices, terminals and tun; creating any node is allowed, opening others is not, so
/// CAP_MKNOD cannot reach the host's disks.
const DEFAULT_DEVICE_RULES: &[&str] = &[
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    "c 136:* rwm",
    "c 10:200 rwm",
];

impl Hierarchy {
    pub fn detect() -> Self {
        let root = Path::new("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            return Self::V2(root.to_owned());
        }
        let mut seen: Vec<PathBuf> = Vec::new();
        let mut controllers = Vec::new();
        for name in V1_CONTROLLERS {
            let mount = root.join(name);
            // cpu and cpuacct are often one hierarchy behind two symlinks.
            let Ok(real) = mount.canonicalize() else {
                continue;
            };
            if !seen.contains(&real) {
                seen.push(real);
                controllers.push((*name, mount));
            }
        }
        Self::V1(controllers)
    }
}

/// One file write: controller (v1 hierarchy name, or "" on v2), file name, value.
pub type Write = (&'static str, &'static str, String);

/// The files to write for `res`, in order. `has_memsw` tells whether v1 swap accounting exists.
pub fn v1_writes(res: &Resources, has_memsw: bool) -> Result<Vec<Write>, CgroupError> {
    let mut w = Vec::new();
    if let Some(shares) = res.cpu_shares {
        w.push((
            "cpu",
            "cpu.shares",
            shares.clamp(MIN_SHARES, MAX_SHARES).to_string(),
        ));
    }
    if let Some(period) = res.cpu_period_us {
        w.push(("cpu", "cpu.cfs_period_us", period.to_string()));
    }
    if let Some(quota) = res.cpu_quota_us {
        w.push(("cpu", "cpu.cfs_quota_us", quota.to_string()));
    }
    if let Some(mem) = res.memory_limit_bytes {
        w.push(("memory", "memory.limit_in_bytes", mem.to_string()));
    }
    if let Some(swap) = res.memory_swap_limit_bytes {
        if let Some(mem) = res.memory_limit_bytes
            && swap >= 0
            && swap < mem
        {
            return Err(CgroupError::SwapBelowMemory { swap, memory: mem });
        }
        if has_memsw {
            w.push(("memory", "memory.memsw.limit_in_bytes", swap.to_string()));
        } else if Some(swap) != res.memory_limit_bytes {
            return Err(CgroupError::SwapUnsupported);
        }
        // Without memsw and swap == memory there is nothing more to limit.
    }
    if let Some(pids) = res.pids_limit {
        let v = if pids <= 0 {
            "max".into()
        } else {
            pids.to_string()
        };
        w.push(("pids", "pids.max", v));
    }
    Ok(w)
}

pub fn v2_writes(res: &Resources) -> Result<Vec<Write>, CgroupError> {
    let max = |v: i64| {
        if v < 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    let mut w = Vec::new();
    if let Some(shares) = res.cpu_shares {
        w.push(("", "cpu.weight", shares_to_weight(shares).to_string()));
    }
    if res.cpu_quota_us.is_some() || res.cpu_period_us.is_some() {
        let quota = res.cpu_quota_us.map_or("max".into(), max);
        let period = res.cpu_period_us.unwrap_or(DEFAULT_CPU_PERIOD_US);
        w.push(("", "cpu.max", format!("{quota} {period}")));
    }
    if let Some(mem) = res.memory_limit_bytes {
        w.push(("", "memory.max", max(mem)));
    }
    if let Some(swap) = res.memory_swap_limit_bytes {
        let value = match res.memory_limit_bytes {
            _ if swap < 0 => "max".to_string(),
            Some(mem) if mem >= 0 && swap < mem => {
                return Err(CgroupError::SwapBelowMemory { swap, memory: mem });
            }
            // v2 limits swap alone: memsw - memory.
            Some(mem) if mem >= 0 => (swap - mem).to_string(),
            _ => swap.to_string(),
        };
        w.push(("", "memory.swap.max", value));
    }
    if let Some(pids) = res.pids_limit {
        w.push((
            "",
            "pids.max",
            if pids <= 0 {
                "max".into()
            } else {
                pids.to_string()
            },
        ));
    }
    Ok(w)
}

/// A container's cgroup: one directory per v1 controller, or one v2 directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// (controller, directory); controller is "" on v2.
    dirs: Vec<(&'static str, PathBuf)>,
    v2: bool,
}

impl Cgroup {
    /// The cgroup at `rel` (relative to each hierarchy root), without touching the system.
    pub fn at(hierarchy: &Hierarchy, rel: &Path) -> Self {
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        match hierarchy {
            Hierarchy::V1(controllers) => Self {
                dirs: controllers
                    .iter()
                    .map(|(name, mount)| (*name, mount.join(rel)))
                    .collect(),
                v2: false,
            },
            Hierarchy::V2(root) => Self {
                dirs: vec![("", root.join(rel))],
                v2: true,
            },
        }
    }

    /// Creates the directories (and missing parents) and writes the limits.
    pub fn create(&self, res: &Resources) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        let writes = if self.v2 {
            v2_writes(res)?
        } else {
            let has_memsw = self
                .dir("memory")
                .is_some_and(|d| d.join("memory.memsw.limit_in_bytes").exists());
            v1_writes(res, has_memsw)?
        };
        for (controller, file, value) in writes {
            let Some(dir) = self.dir(controller) else {
                continue;
            };
            let path = dir.join(file);
            std::fs::write(&path, &value).map_err(io_err(&path))?;
        }
        Ok(())
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| *c == controller)
            .map(|(_, d)| d.as_path())
    }

    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        self.dirs.iter().map(|(_, d)| d.as_path())
    }

    /// Moves the calling process into every directory of this cgroup ("0" means "me").
    pub fn join_self(&self) -> Result<(), CgroupError> {
        self.join(0)
    }

    /// Moves process `pid` (of the caller's PID namespace; 0 = the caller) into it.
    pub fn join(&self, pid: i32) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            let path = dir.join("cgroup.procs");
            std::fs::write(&path, pid.to_string()).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        let (dir, file) = if self.v2 {
            (self.dir("")?, "memory.events")
        } else {
            (self.dir("memory")?, "memory.oom_control")
        };
        let text = std::fs::read_to_string(dir.join(file)).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Limits device access to the default set plus the container's own devices (v1
    /// devices controller). On v2 this needs a BPF device program, which berth does not
    /// load yet: there it does nothing.
    pub fn restrict_devices(&self, devices: &[super::spec::DeviceNode]) -> Result<(), CgroupError> {
        let Some(dir) = self.dir("devices") else {
            return Ok(());
        };
        let deny = dir.join("devices.deny");
        std::fs::write(&deny, "a").map_err(io_err(&deny))?;
        let allow = dir.join("devices.allow");
        let extra = devices.iter().map(|d| d.cgroup_rule());
        for rule in DEFAULT_DEVICE_RULES
            .iter()
            .map(|r| r.to_string())
            .chain(extra)
        {
            std::fs::write(&allow, rule).map_err(io_err(&allow))?;
        }
        Ok(())
    }

    /// Current usage, from the cgroup files (fields the kernel does not offer stay 0).
    pub fn stats(&self) -> CgroupStats {
        let read = |controller: &str, file: &str| {
            self.dir(controller)
                .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
                .unwrap_or_default()
        };
        let number = |text: String| text.trim().parse::<u64>().unwrap_or(0);
        let processes = self
            .dirs
            .first()
            .and_then(|(_, d)| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .map_or(0, |t| t.lines().count() as u64);
        if self.v2 {
            let cpu = read("", "cpu.stat");
            let memory = read("", "memory.stat");
            let events = read("", "memory.events");
            let usage = number(read("", "memory.current"));
            let field = stat_field;
            CgroupStats {
                cpu_usage_ns: field(&cpu, "usage_usec") * 1000,
                cpu_user_ns: field(&cpu, "user_usec") * 1000,
                cpu_system_ns: field(&cpu, "system_usec") * 1000,
                cpu_periods: field(&cpu, "nr_periods"),
                cpu_throttled_periods: field(&cpu, "nr_throttled"),
                cpu_throttled_ns: field(&cpu, "throttled_usec") * 1000,
                memory_usage_bytes: usage,
                memory_working_set_bytes: usage.saturating_sub(field(&memory, "inactive_file")),
                memory_rss_bytes: field(&memory, "anon"),
                memory_cache_bytes: field(&memory, "file"),
                memory_mapped_file_bytes: field(&memory, "file_mapped"),
                memory_swap_bytes: number(read("", "memory.swap.current")),
                memory_max_usage_bytes: number(read("", "memory.peak")),
                memory_failcnt: field(&events, "max"),
                pgfault: field(&memory, "pgfault"),
                pgmajfault: field(&memory, "pgmajfault"),
                memory_kernel_bytes: field(&memory, "kernel"),
                memory_limit_bytes: number(read("", "memory.max")),
                oom_kills: field(&events, "oom_kill"),
                pids: number(read("", "pids.current")),
                pids_max: number(read("", "pids.max")),
                processes,
            }
        } else {
            let cpu = read("cpu", "cpu.stat");
            let memory = read("memory", "memory.stat");
            let usage = number(read("memory", "memory.usage_in_bytes"));
            let field = stat_field;
            CgroupStats {
                cpu_usage_ns: number(read("cpuacct", "cpuacct.usage")),
                cpu_user_ns: number(read("cpuacct", "cpuacct.usage_user")),
                cpu_system_ns: number(read("cpuacct", "cpuacct.usage_sys")),
                cpu_periods: field(&cpu, "nr_periods"),
                cpu_throttled_periods: field(&cpu, "nr_throttled"),
                cpu_throttled_ns: field(&cpu, "throttled_time"),
                memory_usage_bytes: usage,
                memory_working_set_bytes: usage
                    .saturating_sub(field(&memory, "total_inactive_file")),
                memory_rss_bytes: field(&memory, "total_rss"),
                memory_cache_bytes: field(&memory, "total_cache"),
                memory_mapped_file_bytes: field(&memory, "total_mapped_file"),
                memory_swap_bytes: field(&memory, "total_swap"),
                memory_max_usage_bytes: number(read("memory", "memory.max_usage_in_bytes")),
                memory_failcnt: number(read("memory", "memory.failcnt")),
                pgfault: field(&memory, "total_pgfault"),
                pgmajfault: field(&memory, "total_pgmajfault"),
                memory_kernel_bytes: number(read("memory", "memory.kmem.usage_in_bytes")),
                // v1 says "no limit" with the largest page-aligned value.
                memory_limit_bytes: Some(number(read("memory", "memory.limit_in_bytes")))
                    .filter(|l| *l < V1_NO_LIMIT)
                    .unwrap_or(0),
                oom_kills: field(&read("memory", "memory.oom_control"), "oom_kill"),
                pids: number(read("pids", "pids.current")),
                pids_max: number(read("pids", "pids.max")),
                processes,
            }
        }
    }

    /// The processes in the cgroup (of its first directory: every v1 hierarchy holds the
    /// same ones for a container's cgroup).
    pub fn pids(&self) -> Vec<i32> {
        self.dirs
            .first()
            .and_then(|(_, d)| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILLs every process still in the cgroup.
    pub fn kill_all(&self) {
        for (_, dir) in &self.dirs {
            let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
                continue;
            };
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill with a pid read from the cgroup and a constant signal.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// Removes the directories; waits briefly for exiting processes to leave. Missing
    /// directories are fine (removal is idempotent).
    pub fn remove(&self) -> Result<(), CgroupError> {
        for (_, dir) in &self.dirs {
            let deadline = std::time::Instant::now() + Duration::from_millis(500);
            let mut pause = super::Backoff::new();
            loop {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e)
                        if e.raw_os_error() == Some(libc::EBUSY)
                            && std::time::Instant::now() < deadline =>
                    {
                        pause.sleep();
                    }
                    Err(e) => return Err(io_err(dir)(e)),
                }
            }
        }
        Ok(())
    }
}

/// Resource usage of one cgroup: what the CRI stats report and what cAdvisor's metrics
/// name (`container_cpu_*`, `container_memory_*`, `container_processes`, …).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time used, all CPUs, in nanoseconds; then its user and system parts.
    pub cpu_usage_ns: u64,
    pub cpu_user_ns: u64,
    pub cpu_system_ns: u64,
    /// CFS enforcement periods, those in which the quota ran out, and the time throttled.
    pub cpu_periods: u64,
    pub cpu_throttled_periods: u64,
    pub cpu_throttled_ns: u64,
    pub memory_usage_bytes: u64,
    /// Usage minus inactive page cache: what the kubelet evicts on.
    pub memory_working_set_bytes: u64,
    pub memory_rss_bytes: u64,
    pub memory_cache_bytes: u64,
    pub memory_mapped_file_bytes: u64,
    pub memory_swap_bytes: u64,
    pub memory_max_usage_bytes: u64,
    /// Times the memory limit was hit (v1 `memory.failcnt`, v2 `max` events).
    pub memory_failcnt: u64,
    pub pgfault: u64,
    pub pgmajfault: u64,
    /// Kernel memory charged to the cgroup (v1 kmem, v2 `kernel`).
    pub memory_kernel_bytes: u64,
    /// The memory limit as the kernel holds it (rounded to pages); 0 for none.
    pub memory_limit_bytes: u64,
    /// Processes the kernel's OOM killer killed in this cgroup.
    pub oom_kills: u64,
    /// Tasks (threads) counted by the pids controller, and their limit (0: none).
    pub pids: u64,
    pub pids_max: u64,
    /// Processes (thread-group leaders) in the cgroup itself.
    pub processes: u64,
}

/// v1's `memory.limit_in_bytes` when no limit is set is `PAGE_COUNTER_MAX` pages, a value
/// near 2^63; anything this large is no limit.
const V1_NO_LIMIT: u64 = 1 << 62;

/// The value of `name` in a flat-keyed file such as memory.stat (`name value` lines).
fn stat_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_flat_keyed_stat_files() {
        let text = "cache 10\ntotal_inactive_file 4096\ntotal_rss 8192\n";
        assert_eq!(super::stat_field(text, "total_inactive_file"), 4096);
        assert_eq!(super::stat_field(text, "total_rss"), 8192);
        assert_eq!(super::stat_field(text, "inactive_file"), 0);
    }

    use super::*;

    #[test]
    fn millicores_to_shares_like_kubernetes() {
        assert_eq!(cpu_shares_from_millicores(1000), 1024);
        assert_eq!(cpu_shares_from_millicores(250), 256);
        assert_eq!(cpu_shares_from_millicores(0), 2);
        assert_eq!(cpu_shares_from_millicores(1), 2);
        assert_eq!(cpu_shares_from_millicores(1_000_000), 262_144);
    }

    #[test]
    fn millicores_to_quota_like_kubernetes() {
        assert_eq!(cpu_quota_from_millicores(500, 100_000), 50_000);
        assert_eq!(cpu_quota_from_millicores(2000, 100_000), 200_000);
        assert_eq!(cpu_quota_from_millicores(1, 100_000), 1_000);
    }

    #[test]
    fn shares_map_onto_weight_ends() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
    }

    fn limits() -> Resources {
        Resources {
            cpu_shares: Some(512),
            cpu_quota_us: Some(50_000),
            cpu_period_us: Some(100_000),
            memory_limit_bytes: Some(15 << 20),
            memory_swap_limit_bytes: Some(15 << 20),
            pids_limit: Some(100),
        }
    }

    #[test]
    fn v1_writes_memory_before_memsw() {
        let w = v1_writes(&limits(), true).unwrap();
        let files: Vec<_> = w.iter().map(|(_, f, _)| *f).collect();
        assert_eq!(
            files,
            [
                "cpu.shares",
                "cpu.cfs_period_us",
                "cpu.cfs_quota_us",
                "memory.limit_in_bytes",
                "memory.memsw.limit_in_bytes",
                "pids.max"
            ]
        );
        assert_eq!(w[3].2, "15728640");
    }

    #[test]
    fn v1_without_swap_accounting_accepts_only_swap_equal_to_memory() {
        let w = v1_writes(&limits(), false).unwrap();
        assert!(
            !w.iter()
                .any(|(_, f, _)| *f == "memory.memsw.limit_in_bytes")
        );
        let mut more_swap = limits();
        more_swap.memory_swap_limit_bytes = Some(30 << 20);
        assert!(matches!(
            v1_writes(&more_swap, false),
            Err(CgroupError::SwapUnsupported)
        ));
        let mut less = limits();
        less.memory_swap_limit_bytes = Some(1 << 20);
        assert!(matches!(
            v1_writes(&less, true),
            Err(CgroupError::SwapBelowMemory { .. })
        ));
    }

    #[test]
    fn v2_converts_units() {
        let w = v2_writes(&limits()).unwrap();
        let get = |f: &str| {
            w.iter()
                .find(|(_, n, _)| *n == f)
                .map(|(_, _, v)| v.clone())
        };
        assert_eq!(get("cpu.weight").as_deref(), Some("20"));
        assert_eq!(get("cpu.max").as_deref(), Some("50000 100000"));
        assert_eq!(get("memory.max").as_deref(), Some("15728640"));
        assert_eq!(get("memory.swap.max").as_deref(), Some("0"));
        assert_eq!(get("pids.max").as_deref(), Some("100"));
        let unlimited = Resources {
            cpu_quota_us: Some(-1),
            memory_limit_bytes: Some(-1),
            ..Default::default()
        };
        let w = v2_writes(&unlimited).unwrap();
        assert_eq!(w[0].2, "max 100000");
        assert_eq!(w[1].2, "max");
    }

    #[test]
    fn paths_per_hierarchy() {
        let v1 = Hierarchy::V1(vec![
            ("cpu", "/cg/cpu".into()),
            ("memory", "/cg/memory".into()),
        ]);
        let cg = Cgroup::at(&v1, Path::new("/berth/pod1/ctr1"));
        let dirs: Vec<_> = cg.dirs().collect();
        assert_eq!(
            dirs,
            [
                Path::new("/cg/cpu/berth/pod1/ctr1"),
                Path::new("/cg/memory/berth/pod1/ctr1")
            ]
        );
        let v2 = Cgroup::at(&Hierarchy::V2("/cg".into()), Path::new("berth/c"));
        assert_eq!(v2.dirs().collect::<Vec<_>>(), [Path::new("/cg/berth/c")]);
    }
}
