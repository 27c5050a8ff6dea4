//! Container and pod statistics from the cgroups (CPU, memory), the writable layer's disk
//! use and the pod's network namespace, in the CRI's shapes. The kubelet's CRI stats
//! provider reads these; `metrics` turns the same samples into cAdvisor's series.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use cri_api::v1 as cri;
use sandbox::container::cgroup::{Cgroup, CgroupStats, Hierarchy};
use sandbox::container::{ContainerSpec, state};
use sandbox::pod::netstats::{self, InterfaceStats};

use super::{ContainerRecord, now_ns};

/// Remembers CPU samples per cgroup, to report usage in nano-cores. A rate is measured
/// over at least `MIN_WINDOW_NS`: callers that come right after one another (the kubelet's
/// own sampling and a `/stats/summary` reader, two `crictl stats`) get the last measured
/// rate rather than a rate over a few milliseconds, which is usually 0.
#[derive(Default)]
pub struct CpuRates {
    last: Mutex<HashMap<String, RateState>>,
}

struct RateState {
    /// The sample the next rate is measured from.
    since_ns: i64,
    usage_ns: u64,
    /// The last rate measured over a full window.
    rate: Option<u64>,
}

/// The shortest interval a rate is measured over.
const MIN_WINDOW_NS: i64 = 1_000_000_000;

impl CpuRates {
    /// Nano-cores used recently by `key`; `None` until two samples at least a window apart
    /// exist (unknown, which the kubelet treats differently from an idle 0).
    fn rate(&self, key: &str, at_ns: i64, usage_ns: u64) -> Option<u64> {
        let mut last = self.last.lock().expect("cpu rates lock");
        let Some(state) = last.get_mut(key) else {
            last.insert(
                key.to_string(),
                RateState {
                    since_ns: at_ns,
                    usage_ns,
                    rate: None,
                },
            );
            return None;
        };
        let elapsed = at_ns - state.since_ns;
        if usage_ns < state.usage_ns || elapsed < 0 {
            // A new cgroup under the same key: start over.
            *state = RateState {
                since_ns: at_ns,
                usage_ns,
                rate: None,
            };
            return None;
        }
        if elapsed >= MIN_WINDOW_NS {
            let used = (usage_ns - state.usage_ns) as u128;
            state.rate = Some((used * 1_000_000_000 / elapsed as u128) as u64);
            state.since_ns = at_ns;
            state.usage_ns = usage_ns;
        }
        state.rate
    }

    pub fn forget(&self, key: &str) {
        self.last.lock().expect("cpu rates lock").remove(key);
    }
}

pub fn cgroup_stats(rel: &Path) -> CgroupStats {
    Cgroup::at(&Hierarchy::detect(), rel).stats()
}

fn cpu(rates: &CpuRates, key: &str, at: i64, s: &CgroupStats) -> cri::CpuUsage {
    cri::CpuUsage {
        timestamp: at,
        usage_core_nano_seconds: Some(cri::UInt64Value {
            value: s.cpu_usage_ns,
        }),
        usage_nano_cores: rates
            .rate(key, at, s.cpu_usage_ns)
            .map(|value| cri::UInt64Value { value }),
        // Pressure stall information comes with the cgroup v2 work; v1 has none.
        psi: None,
    }
}

fn memory(at: i64, s: &CgroupStats) -> cri::MemoryUsage {
    let value = |value| Some(cri::UInt64Value { value });
    cri::MemoryUsage {
        timestamp: at,
        // What may still be used before the limit: only meaningful under one.
        available_bytes: (s.memory_limit_bytes > 0)
            .then(|| {
                s.memory_limit_bytes
                    .saturating_sub(s.memory_working_set_bytes)
            })
            .and_then(value),
        page_faults: value(s.pgfault),
        major_page_faults: value(s.pgmajfault),
        working_set_bytes: Some(cri::UInt64Value {
            value: s.memory_working_set_bytes,
        }),
        usage_bytes: Some(cri::UInt64Value {
            value: s.memory_usage_bytes,
        }),
        rss_bytes: Some(cri::UInt64Value {
            value: s.memory_rss_bytes,
        }),
        ..Default::default()
    }
}

/// Bytes and inodes under `dir`, without following symlinks or crossing mounts.
pub fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let Ok(root) = std::fs::symlink_metadata(dir) else {
        return (0, 0);
    };
    let mut stack = vec![dir.to_path_buf()];
    let (mut bytes, mut inodes) = (0u64, 0u64);
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            inodes += 1;
            bytes += m.blocks() * 512;
            if m.is_dir() && m.dev() == root.dev() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

/// One reading of a container: its spec (for the cgroup path, limits and writable
/// layer), its cgroup's counters and its writable layer's use.
pub struct Sample {
    pub at: i64,
    pub spec: Option<ContainerSpec>,
    pub cgroup: CgroupStats,
    /// Bytes and inodes used by the writable layer (when the spec is readable).
    pub writable: Option<(u64, u64)>,
}

/// Reads a container's sample (blocking: reads cgroup files and walks the writable layer).
pub fn sample(rec: &ContainerRecord) -> Sample {
    let at = now_ns();
    let spec: Option<ContainerSpec> = state::read_json(&rec.dir, state::CONFIG).ok().flatten();
    let cgroup = spec
        .as_ref()
        .and_then(|s| s.cgroup.as_ref())
        .map(|c| cgroup_stats(&c.path))
        .unwrap_or_default();
    let writable = spec.as_ref().map(|s| disk_usage(&s.rootfs.upper));
    Sample {
        at,
        spec,
        cgroup,
        writable,
    }
}

/// The file system a writable layer lives on: its size and inodes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsCapacity {
    pub bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
}

pub fn fs_capacity(dir: &Path) -> Option<FsCapacity> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(FsCapacity {
        bytes: s.blocks() as u64 * s.fragment_size() as u64,
        inodes: s.files() as u64,
        inodes_free: s.files_free() as u64,
    })
}

/// Open file descriptors of `pids`, and how many of them are sockets.
pub fn open_files(pids: &[i32]) -> (u64, u64) {
    let (mut fds, mut sockets) = (0, 0);
    for pid in pids {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in entries.flatten() {
            fds += 1;
            if std::fs::read_link(e.path())
                .is_ok_and(|t| t.as_os_str().as_encoded_bytes().starts_with(b"socket:"))
            {
                sockets += 1;
            }
        }
    }
    (fds, sockets)
}

/// The processes of a container's cgroup.
pub fn cgroup_pids(rel: &Path) -> Vec<i32> {
    Cgroup::at(&Hierarchy::detect(), rel).pids()
}

/// The stats of one container (blocking: see `sample`).
pub fn container_stats(rates: &CpuRates, rec: &ContainerRecord) -> cri::ContainerStats {
    let Sample {
        at,
        spec,
        cgroup: cg,
        writable,
    } = sample(rec);
    let writable = spec
        .as_ref()
        .zip(writable)
        .map(|(s, (bytes, inodes))| cri::FilesystemUsage {
            timestamp: at,
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: s.rootfs.upper.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        });
    cri::ContainerStats {
        attributes: Some(cri::ContainerAttributes {
            id: rec.id.clone(),
            metadata: Some(cri::ContainerMetadata {
                name: rec.name.clone(),
                attempt: rec.attempt,
            }),
            labels: rec.labels.clone().into_iter().collect(),
            annotations: rec.annotations.clone().into_iter().collect(),
        }),
        cpu: Some(cpu(rates, &rec.id, at, &cg)),
        memory: Some(memory(at, &cg)),
        writable_layer: writable,
        ..Default::default()
    }
}

/// The pod's interfaces in the CRI's shape; eth0 (the CNI interface) is the default.
pub fn network_usage(at: i64, interfaces: &[InterfaceStats]) -> cri::NetworkUsage {
    let usage = |i: &InterfaceStats| cri::NetworkInterfaceUsage {
        name: i.name.clone(),
        rx_bytes: Some(cri::UInt64Value { value: i.rx_bytes }),
        rx_errors: Some(cri::UInt64Value { value: i.rx_errors }),
        tx_bytes: Some(cri::UInt64Value { value: i.tx_bytes }),
        tx_errors: Some(cri::UInt64Value { value: i.tx_errors }),
    };
    let default = interfaces
        .iter()
        .find(|i| i.name == sandbox::pod::POD_IFNAME)
        .or(interfaces.first());
    cri::NetworkUsage {
        timestamp: at,
        default_interface: default.map(usage),
        interfaces: interfaces.iter().map(usage).collect(),
    }
}

/// The interfaces of the pod's own network namespace; none for host-network pods.
pub fn pod_interfaces(netns: Option<&Path>) -> Vec<InterfaceStats> {
    netns
        .and_then(|ns| netstats::read(ns).ok())
        .unwrap_or_default()
}

/// The pod's cgroup: the kubelet's cgroup parent when it gave one (it holds all the
/// pod's containers), else the sum of the containers.
pub fn pod_cgroup_stats(cgroup_parent: &str, containers: &[cri::ContainerStats]) -> CgroupStats {
    if !cgroup_parent.is_empty() {
        cgroup_stats(Path::new(cgroup_parent))
    } else {
        let mut t = CgroupStats::default();
        for c in containers {
            let v = |o: &Option<cri::UInt64Value>| o.as_ref().map_or(0, |v| v.value);
            if let Some(cpu) = &c.cpu {
                t.cpu_usage_ns += v(&cpu.usage_core_nano_seconds);
            }
            if let Some(m) = &c.memory {
                t.memory_usage_bytes += v(&m.usage_bytes);
                t.memory_working_set_bytes += v(&m.working_set_bytes);
                t.memory_rss_bytes += v(&m.rss_bytes);
            }
        }
        t
    }
}

/// Pod-level CPU, memory, processes and network, with the containers' stats.
pub fn pod_linux_stats(
    rates: &CpuRates,
    pod_id: &str,
    cgroup_parent: &str,
    netns: Option<&Path>,
    containers: Vec<cri::ContainerStats>,
) -> cri::LinuxPodSandboxStats {
    let at = now_ns();
    let total = pod_cgroup_stats(cgroup_parent, &containers);
    let interfaces = pod_interfaces(netns);
    cri::LinuxPodSandboxStats {
        cpu: Some(cpu(rates, &format!("pod/{pod_id}"), at, &total)),
        memory: Some(memory(at, &total)),
        network: netns.map(|_| network_usage(at, &interfaces)),
        process: Some(cri::ProcessUsage {
            timestamp: at,
            process_count: Some(cri::UInt64Value { value: total.pids }),
        }),
        containers,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nano_cores_from_two_samples() {
        let r = CpuRates::default();
        let s = 1_000_000_000;
        assert_eq!(
            r.rate("c", s, 500),
            None,
            "unknown until a window has passed"
        );
        assert_eq!(r.rate("c", s + 10_000_000, 600), None);
        // 0.5 s of CPU over 1 s of wall time is half a core.
        assert_eq!(r.rate("c", 2 * s, 500_000_500), Some(500_000_000));
        // A caller right after gets the same rate, not one over 5 ms.
        assert_eq!(
            r.rate("c", 2 * s + 5_000_000, 500_000_500),
            Some(500_000_000)
        );
        assert_eq!(
            r.rate("c", 3 * s, 500_000_500),
            Some(0),
            "idle is a measured 0"
        );
        r.forget("c");
        assert_eq!(r.rate("c", 4 * s, 600_000_000), None);
    }

    #[test]
    fn disk_usage_counts_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/f"), vec![1u8; 10000]).unwrap();
        let (bytes, inodes) = disk_usage(d.path());
        assert_eq!(inodes, 2);
        assert!(bytes >= 10000);
    }
}
