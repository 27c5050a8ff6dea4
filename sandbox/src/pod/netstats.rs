//! Interface counters of a pod's network namespace, for the pod's network stats and
//! metrics. Read from `/proc/thread-self/net/dev` by a short-lived thread that joins the
//! pinned namespace, so no process has to live in it and the daemon's threads stay put.

use std::io;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// The counters of one interface, as the kernel keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// The interfaces of the network namespace pinned at `netns`, loopback left out.
pub fn read(netns: &Path) -> io::Result<Vec<InterfaceStats>> {
    let ns = std::fs::File::open(netns)?;
    let text = std::thread::scope(|s| {
        s.spawn(move || -> io::Result<String> {
            // Only this thread moves; it ends right after the read.
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            std::fs::read_to_string("/proc/thread-self/net/dev")
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the net/dev reader panicked")))
    })?;
    Ok(parse(&text))
}

/// Parses `/proc/net/dev`: two header lines, then `name: rx(8 fields) tx(8 fields)`.
pub fn parse(text: &str) -> Vec<InterfaceStats> {
    text.lines()
        .skip(2)
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            if name == "lo" {
                return None;
            }
            let v: Vec<u64> = counters
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0))
                .collect();
            (v.len() >= 16).then(|| InterfaceStats {
                name: name.to_string(),
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_dev() {
        let text = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
  eth0:    5000      40    1    2    0     0          0         0     3000      30    3    4    0     0       0          0
";
        let stats = parse(text);
        assert_eq!(
            stats,
            [InterfaceStats {
                name: "eth0".into(),
                rx_bytes: 5000,
                rx_packets: 40,
                rx_errors: 1,
                rx_dropped: 2,
                tx_bytes: 3000,
                tx_packets: 30,
                tx_errors: 3,
                tx_dropped: 4,
            }]
        );
    }

    #[test]
    fn reads_the_callers_own_namespace() {
        // The daemon's namespace has at least loopback; reading must not fail.
        assert!(read(Path::new("/proc/self/ns/net")).is_ok());
    }
}
