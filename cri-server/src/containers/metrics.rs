//! The CRI metrics (ListMetricDescriptors, ListPodSandboxMetrics): cAdvisor's container
//! series, under cAdvisor's names and labels, from the same samples as the CRI stats. A
//! kubelet with `PodAndContainerStatsFromCRI` serves these as `/metrics/cadvisor`, so
//! dashboards written for cAdvisor keep working: `container_cpu_usage_seconds_total`,
//! `container_memory_working_set_bytes`, … with `container`, `pod` and `namespace`.
//!
//! Each container gets the CPU, memory, process, OOM, filesystem and limit series of its
//! cgroup; the pod gets the same from its own cgroup (`container=""`, as cAdvisor labels a
//! pod cgroup) and the network series of its namespace (`container="POD"`, as cAdvisor
//! labels the sandbox that holds the network).

use cri_api::v1 as cri;
use sandbox::container::cgroup::CgroupStats;
use sandbox::pod::netstats::InterfaceStats;

use super::stats::Sample;

/// cAdvisor's labels, in the order every series gives their values.
const LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// One metric family: its name, help, type and labels beyond `LABELS`.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    extra: &'static [&'static str],
}

const fn family(
    name: &'static str,
    help: &'static str,
    kind: Kind,
    extra: &'static [&'static str],
) -> Family {
    Family {
        name,
        help,
        kind,
        extra,
    }
}

use Kind::{Counter, Gauge};

const CPU_USAGE: Family = family(
    "container_cpu_usage_seconds_total",
    "Cumulative cpu time consumed in seconds.",
    Counter,
    &["cpu"],
);
const CPU_USER: Family = family(
    "container_cpu_user_seconds_total",
    "Cumulative user cpu time consumed in seconds.",
    Counter,
    &[],
);
const CPU_SYSTEM: Family = family(
    "container_cpu_system_seconds_total",
    "Cumulative system cpu time consumed in seconds.",
    Counter,
    &[],
);
const CFS_PERIODS: Family = family(
    "container_cpu_cfs_periods_total",
    "Number of elapsed enforcement period intervals.",
    Counter,
    &[],
);
const CFS_THROTTLED_PERIODS: Family = family(
    "container_cpu_cfs_throttled_periods_total",
    "Number of throttled period intervals.",
    Counter,
    &[],
);
const CFS_THROTTLED_SECONDS: Family = family(
    "container_cpu_cfs_throttled_seconds_total",
    "Total time duration the container has been throttled.",
    Counter,
    &[],
);
const MEMORY_USAGE: Family = family(
    "container_memory_usage_bytes",
    "Current memory usage in bytes, including all memory regardless of when it was accessed",
    Gauge,
    &[],
);
const MEMORY_WORKING_SET: Family = family(
    "container_memory_working_set_bytes",
    "Current working set in bytes.",
    Gauge,
    &[],
);
const MEMORY_RSS: Family = family("container_memory_rss", "Size of RSS in bytes.", Gauge, &[]);
const MEMORY_CACHE: Family = family(
    "container_memory_cache",
    "Number of bytes of page cache memory.",
    Gauge,
    &[],
);
const MEMORY_MAPPED_FILE: Family = family(
    "container_memory_mapped_file",
    "Size of memory mapped files in bytes.",
    Gauge,
    &[],
);
const MEMORY_SWAP: Family = family(
    "container_memory_swap",
    "Container swap usage in bytes.",
    Gauge,
    &[],
);
const MEMORY_MAX_USAGE: Family = family(
    "container_memory_max_usage_bytes",
    "Maximum memory usage recorded in bytes",
    Gauge,
    &[],
);
const MEMORY_FAILCNT: Family = family(
    "container_memory_failcnt",
    "Number of memory usage hits limits",
    Counter,
    &[],
);
const MEMORY_FAILURES: Family = family(
    "container_memory_failures_total",
    "Cumulative count of memory allocation failures.",
    Counter,
    &["failure_type", "scope"],
);
const OOM_EVENTS: Family = family(
    "container_oom_events_total",
    "Count of out of memory events observed for the container",
    Counter,
    &[],
);
const PROCESSES: Family = family(
    "container_processes",
    "Number of processes running inside the container.",
    Gauge,
    &[],
);
const THREADS: Family = family(
    "container_threads",
    "Number of threads running inside the container",
    Gauge,
    &[],
);
const FS_USAGE: Family = family(
    "container_fs_usage_bytes",
    "Number of bytes that are consumed by the container on this filesystem.",
    Gauge,
    &["device"],
);
const FS_INODES_FREE: Family = family(
    "container_fs_inodes_free",
    "Number of available Inodes",
    Gauge,
    &["device"],
);
const FS_INODES_TOTAL: Family = family(
    "container_fs_inodes_total",
    "Number of Inodes",
    Gauge,
    &["device"],
);
const FS_LIMIT: Family = family(
    "container_fs_limit_bytes",
    "Number of bytes that can be consumed by the container on this filesystem.",
    Gauge,
    &["device"],
);
// Block I/O per device: described, and reported once the container has an io cgroup of
// its own (cgroup v2); on v1 berth gives containers no blkio cgroup.
const FS_READS_BYTES: Family = family(
    "container_fs_reads_bytes_total",
    "Cumulative count of bytes read",
    Counter,
    &["device"],
);
const FS_READS: Family = family(
    "container_fs_reads_total",
    "Cumulative count of reads completed",
    Counter,
    &["device"],
);
const FS_WRITES_BYTES: Family = family(
    "container_fs_writes_bytes_total",
    "Cumulative count of bytes written",
    Counter,
    &["device"],
);
const FS_WRITES: Family = family(
    "container_fs_writes_total",
    "Cumulative count of writes completed",
    Counter,
    &["device"],
);
const BLKIO_DEVICE_USAGE: Family = family(
    "container_blkio_device_usage_total",
    "Blkio Device bytes usage",
    Counter,
    &["device", "major", "minor", "operation"],
);
const FILE_DESCRIPTORS: Family = family(
    "container_file_descriptors",
    "Number of open file descriptors for the container.",
    Gauge,
    &[],
);
const SOCKETS: Family = family(
    "container_sockets",
    "Number of open sockets for the container.",
    Gauge,
    &[],
);
const THREADS_MAX: Family = family(
    "container_threads_max",
    "Maximum number of threads allowed inside the container, infinity if value is zero",
    Gauge,
    &[],
);
const MEMORY_KERNEL: Family = family(
    "container_memory_kernel_usage",
    "Size of kernel memory allocated in bytes.",
    Gauge,
    &[],
);
const FS_INODES_USED: Family = family(
    "container_fs_inodes_used",
    "Number of inodes used by the container on this filesystem.",
    Gauge,
    &["device"],
);
const SPEC_MEMORY_LIMIT: Family = family(
    "container_spec_memory_limit_bytes",
    "Memory limit for the container.",
    Gauge,
    &[],
);
const SPEC_MEMORY_SWAP_LIMIT: Family = family(
    "container_spec_memory_swap_limit_bytes",
    "Memory swap limit for the container.",
    Gauge,
    &[],
);
const SPEC_CPU_SHARES: Family = family(
    "container_spec_cpu_shares",
    "CPU share of the container.",
    Gauge,
    &[],
);
const SPEC_CPU_QUOTA: Family = family(
    "container_spec_cpu_quota",
    "CPU quota of the container.",
    Gauge,
    &[],
);
const SPEC_CPU_PERIOD: Family = family(
    "container_spec_cpu_period",
    "CPU period of the container.",
    Gauge,
    &[],
);
const START_TIME: Family = family(
    "container_start_time_seconds",
    "Start time of the container since unix epoch in seconds.",
    Gauge,
    &[],
);
const LAST_SEEN: Family = family(
    "container_last_seen",
    "Last time a container was seen by the exporter",
    Gauge,
    &[],
);
const NET_RX_BYTES: Family = family(
    "container_network_receive_bytes_total",
    "Cumulative count of bytes received",
    Counter,
    &["interface"],
);
const NET_RX_PACKETS: Family = family(
    "container_network_receive_packets_total",
    "Cumulative count of packets received",
    Counter,
    &["interface"],
);
const NET_RX_DROPPED: Family = family(
    "container_network_receive_packets_dropped_total",
    "Cumulative count of packets dropped while receiving",
    Counter,
    &["interface"],
);
const NET_RX_ERRORS: Family = family(
    "container_network_receive_errors_total",
    "Cumulative count of errors encountered while receiving",
    Counter,
    &["interface"],
);
const NET_TX_BYTES: Family = family(
    "container_network_transmit_bytes_total",
    "Cumulative count of bytes transmitted",
    Counter,
    &["interface"],
);
const NET_TX_PACKETS: Family = family(
    "container_network_transmit_packets_total",
    "Cumulative count of packets transmitted",
    Counter,
    &["interface"],
);
const NET_TX_DROPPED: Family = family(
    "container_network_transmit_packets_dropped_total",
    "Cumulative count of packets dropped while transmitting",
    Counter,
    &["interface"],
);
const NET_TX_ERRORS: Family = family(
    "container_network_transmit_errors_total",
    "Cumulative count of errors encountered while transmitting",
    Counter,
    &["interface"],
);

const FAMILIES: &[&Family] = &[
    &CPU_USAGE,
    &CPU_USER,
    &CPU_SYSTEM,
    &CFS_PERIODS,
    &CFS_THROTTLED_PERIODS,
    &CFS_THROTTLED_SECONDS,
    &MEMORY_USAGE,
    &MEMORY_WORKING_SET,
    &MEMORY_RSS,
    &MEMORY_CACHE,
    &MEMORY_MAPPED_FILE,
    &MEMORY_SWAP,
    &MEMORY_MAX_USAGE,
    &MEMORY_FAILCNT,
    &MEMORY_FAILURES,
    &OOM_EVENTS,
    &PROCESSES,
    &THREADS,
    &FS_USAGE,
    &FS_INODES_USED,
    &FS_INODES_FREE,
    &FS_INODES_TOTAL,
    &FS_LIMIT,
    &FS_READS_BYTES,
    &FS_READS,
    &FS_WRITES_BYTES,
    &FS_WRITES,
    &BLKIO_DEVICE_USAGE,
    &FILE_DESCRIPTORS,
    &SOCKETS,
    &THREADS_MAX,
    &MEMORY_KERNEL,
    &SPEC_MEMORY_LIMIT,
    &SPEC_MEMORY_SWAP_LIMIT,
    &SPEC_CPU_SHARES,
    &SPEC_CPU_QUOTA,
    &SPEC_CPU_PERIOD,
    &START_TIME,
    &LAST_SEEN,
    &NET_RX_BYTES,
    &NET_RX_PACKETS,
    &NET_RX_DROPPED,
    &NET_RX_ERRORS,
    &NET_TX_BYTES,
    &NET_TX_PACKETS,
    &NET_TX_DROPPED,
    &NET_TX_ERRORS,
];

/// Every family berth reports, for ListMetricDescriptors.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    FAMILIES
        .iter()
        .map(|f| cri::MetricDescriptor {
            name: f.name.to_string(),
            help: f.help.to_string(),
            label_keys: LABELS
                .iter()
                .chain(f.extra)
                .map(|l| l.to_string())
                .collect(),
        })
        .collect()
}

/// The values of `LABELS` for one cgroup.
pub struct Labels {
    pub container: String,
    /// The cgroup path, as cAdvisor's `id`.
    pub id: String,
    pub image: String,
    /// The container (or pod) id.
    pub name: String,
    pub namespace: String,
    pub pod: String,
}

/// Collects the series of one cgroup (or namespace) under shared labels.
struct Series<'a> {
    at: i64,
    labels: Vec<String>,
    out: &'a mut Vec<cri::Metric>,
}

impl Series<'_> {
    fn push(&mut self, f: &Family, extra: &[&str], value: u64) {
        debug_assert_eq!(extra.len(), f.extra.len(), "{}", f.name);
        let mut label_values = self.labels.clone();
        label_values.extend(extra.iter().map(|v| v.to_string()));
        self.out.push(cri::Metric {
            name: f.name.to_string(),
            timestamp: self.at,
            metric_type: match f.kind {
                Kind::Counter => cri::MetricType::Counter,
                Kind::Gauge => cri::MetricType::Gauge,
            } as i32,
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }
}

fn series<'a>(at: i64, l: &Labels, out: &'a mut Vec<cri::Metric>) -> Series<'a> {
    Series {
        at,
        labels: vec![
            l.container.clone(),
            l.id.clone(),
            l.image.clone(),
            l.name.clone(),
            l.namespace.clone(),
            l.pod.clone(),
        ],
        out,
    }
}

const NS_PER_S: u64 = 1_000_000_000;

/// The cgroup's CPU, memory, process and OOM series. Values are whole units (the CRI
/// carries integers), so seconds are truncated as CRI-O's are.
fn cgroup_series(s: &mut Series, c: &CgroupStats) {
    s.push(&CPU_USAGE, &["total"], c.cpu_usage_ns / NS_PER_S);
    s.push(&CPU_USER, &[], c.cpu_user_ns / NS_PER_S);
    s.push(&CPU_SYSTEM, &[], c.cpu_system_ns / NS_PER_S);
    s.push(&CFS_PERIODS, &[], c.cpu_periods);
    s.push(&CFS_THROTTLED_PERIODS, &[], c.cpu_throttled_periods);
    s.push(&CFS_THROTTLED_SECONDS, &[], c.cpu_throttled_ns / NS_PER_S);
    s.push(&MEMORY_USAGE, &[], c.memory_usage_bytes);
    s.push(&MEMORY_WORKING_SET, &[], c.memory_working_set_bytes);
    s.push(&MEMORY_RSS, &[], c.memory_rss_bytes);
    s.push(&MEMORY_CACHE, &[], c.memory_cache_bytes);
    s.push(&MEMORY_MAPPED_FILE, &[], c.memory_mapped_file_bytes);
    s.push(&MEMORY_SWAP, &[], c.memory_swap_bytes);
    s.push(&MEMORY_MAX_USAGE, &[], c.memory_max_usage_bytes);
    s.push(&MEMORY_FAILCNT, &[], c.memory_failcnt);
    // The kernel counts faults for the cgroup with its descendants ("hierarchy"); a
    // container has none, so both scopes are the same number there.
    for scope in ["container", "hierarchy"] {
        s.push(&MEMORY_FAILURES, &["pgfault", scope], c.pgfault);
        s.push(&MEMORY_FAILURES, &["pgmajfault", scope], c.pgmajfault);
    }
    s.push(&MEMORY_KERNEL, &[], c.memory_kernel_bytes);
    s.push(&OOM_EVENTS, &[], c.oom_kills);
    s.push(&PROCESSES, &[], c.processes);
    s.push(&THREADS, &[], c.pids);
    s.push(&THREADS_MAX, &[], c.pids_max);
}

/// What only the metrics read of a running container: its processes' open files and its
/// writable layer's file system.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras {
    pub file_descriptors: u64,
    pub sockets: u64,
    pub fs: Option<super::stats::FsCapacity>,
}

/// A running container's series.
pub fn container_metrics(
    labels: &Labels,
    sample: &Sample,
    extras: &Extras,
    started_at_ns: i64,
) -> cri::ContainerMetrics {
    let mut metrics = Vec::new();
    let mut s = series(sample.at, labels, &mut metrics);
    cgroup_series(&mut s, &sample.cgroup);
    s.push(&FILE_DESCRIPTORS, &[], extras.file_descriptors);
    s.push(&SOCKETS, &[], extras.sockets);
    if let (Some(spec), Some((bytes, inodes))) = (&sample.spec, sample.writable) {
        let device = spec.rootfs.upper.display().to_string();
        s.push(&FS_USAGE, &[&device], bytes);
        s.push(&FS_INODES_USED, &[&device], inodes);
        if let Some(fs) = extras.fs {
            s.push(&FS_LIMIT, &[&device], fs.bytes);
            s.push(&FS_INODES_TOTAL, &[&device], fs.inodes);
            s.push(&FS_INODES_FREE, &[&device], fs.inodes_free);
        }
    }
    if let Some(res) = sample
        .spec
        .as_ref()
        .and_then(|spec| spec.cgroup.as_ref())
        .map(|c| &c.resources)
    {
        // cAdvisor reports 0 for "no limit"; so does berth.
        let positive = |v: Option<i64>| v.filter(|v| *v > 0).unwrap_or(0) as u64;
        // The limit as the kernel holds it (rounded down to pages), as cAdvisor reads it.
        let memory_limit = match sample.cgroup.memory_limit_bytes {
            0 => positive(res.memory_limit_bytes),
            kernel => kernel,
        };
        s.push(&SPEC_MEMORY_LIMIT, &[], memory_limit);
        s.push(
            &SPEC_MEMORY_SWAP_LIMIT,
            &[],
            positive(res.memory_swap_limit_bytes),
        );
        s.push(&SPEC_CPU_SHARES, &[], res.cpu_shares.unwrap_or(0));
        s.push(&SPEC_CPU_QUOTA, &[], positive(res.cpu_quota_us));
        s.push(&SPEC_CPU_PERIOD, &[], res.cpu_period_us.unwrap_or(0));
    }
    s.push(&START_TIME, &[], (started_at_ns.max(0) as u64) / NS_PER_S);
    s.push(&LAST_SEEN, &[], (sample.at.max(0) as u64) / NS_PER_S);
    cri::ContainerMetrics {
        container_id: labels.name.clone(),
        metrics,
    }
}

/// The pod's own series: its cgroup (`container=""`) and its network (`container="POD"`).
pub fn pod_metrics(
    at: i64,
    labels: &Labels,
    cgroup: Option<&CgroupStats>,
    interfaces: &[InterfaceStats],
) -> Vec<cri::Metric> {
    let mut metrics = Vec::new();
    if let Some(c) = cgroup {
        let mut s = series(at, labels, &mut metrics);
        cgroup_series(&mut s, c);
    }
    let sandbox = Labels {
        container: "POD".into(),
        id: labels.id.clone(),
        image: String::new(),
        name: labels.name.clone(),
        namespace: labels.namespace.clone(),
        pod: labels.pod.clone(),
    };
    let mut s = series(at, &sandbox, &mut metrics);
    for i in interfaces {
        let name = i.name.as_str();
        s.push(&NET_RX_BYTES, &[name], i.rx_bytes);
        s.push(&NET_RX_PACKETS, &[name], i.rx_packets);
        s.push(&NET_RX_DROPPED, &[name], i.rx_dropped);
        s.push(&NET_RX_ERRORS, &[name], i.rx_errors);
        s.push(&NET_TX_BYTES, &[name], i.tx_bytes);
        s.push(&NET_TX_PACKETS, &[name], i.tx_packets);
        s.push(&NET_TX_DROPPED, &[name], i.tx_dropped);
        s.push(&NET_TX_ERRORS, &[name], i.tx_errors);
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> Labels {
        Labels {
            container: "app".into(),
            id: "/kubepods/pod1/c1".into(),
            image: "busybox".into(),
            name: "c1".into(),
            namespace: "default".into(),
            pod: "web".into(),
        }
    }

    #[test]
    fn every_series_matches_its_descriptor() {
        let descriptors = descriptors();
        let sample = Sample {
            at: 5 * NS_PER_S as i64,
            spec: None,
            cgroup: CgroupStats {
                cpu_usage_ns: 3_500_000_000,
                memory_working_set_bytes: 4096,
                ..Default::default()
            },
            writable: None,
        };
        let c = container_metrics(&labels(), &sample, &Extras::default(), 2 * NS_PER_S as i64);
        let eth0 = InterfaceStats {
            name: "eth0".into(),
            rx_bytes: 10,
            ..Default::default()
        };
        let pod_labels = Labels {
            container: String::new(),
            id: "/kubepods/pod1".into(),
            ..labels()
        };
        let pod = pod_metrics(0, &pod_labels, Some(&CgroupStats::default()), &[eth0]);
        let mut seen = std::collections::HashSet::new();
        for m in c.metrics.iter().chain(&pod) {
            let d = descriptors
                .iter()
                .find(|d| d.name == m.name)
                .unwrap_or_else(|| panic!("{} has no descriptor", m.name));
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
            // Prometheus refuses two series with the same name and labels.
            assert!(seen.insert((m.name.clone(), m.label_values.clone())));
        }
        let value = |name: &str| {
            c.metrics
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| m.value.as_ref())
                .map(|v| v.value)
        };
        assert_eq!(value("container_cpu_usage_seconds_total"), Some(3));
        assert_eq!(value("container_memory_working_set_bytes"), Some(4096));
        assert_eq!(value("container_start_time_seconds"), Some(2));
        assert_eq!(c.container_id, "c1");
        let rx = pod
            .iter()
            .find(|m| m.name == "container_network_receive_bytes_total")
            .unwrap();
        assert_eq!(rx.label_values[0], "POD");
        assert_eq!(rx.label_values.last().unwrap(), "eth0");
    }

    #[test]
    fn descriptors_carry_cadvisors_labels() {
        let d = descriptors();
        let cpu = d
            .iter()
            .find(|d| d.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(
            cpu.label_keys,
            [
                "container",
                "id",
                "image",
                "name",
                "namespace",
                "pod",
                "cpu"
            ]
        );
        let names: std::collections::HashSet<_> = d.iter().map(|d| &d.name).collect();
        assert_eq!(names.len(), d.len(), "a family is listed twice");
    }
}
