//! Linux isolation for berth: pod sandboxes (pinned namespaces, DNS and hosts files, CNI
//! networking, cgroups) and, later, per-container processes and their monitor.
//! Nothing here knows about gRPC or CRI types; `cri-server` translates.

pub mod cni;
pub mod container;
pub mod monitor;
pub mod pod;
pub mod sealed_exe;
pub mod trash;
pub mod undo;
