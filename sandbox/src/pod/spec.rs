//! What a pod is asked to be (`PodSpec`, from RunPodSandbox) and what berth remembers
//! about it (`PodRecord`, in the metadata store's "pods" table).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::files::DnsConfig;
use super::init::InitProcess;
use crate::cni::PortMapping;

/// Where a pod's namespace of one kind comes from (CRI NamespaceMode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum NamespaceMode {
    /// One namespace for the whole pod (the default).
    #[default]
    Pod,
    /// Each container gets its own.
    Container,
    /// The host's.
    Node,
    /// Another container's (containers only).
    Target,
}

/// One contiguous range of IDs: `container_id..container_id+length` inside the user
/// namespace is `host_id..host_id+length` outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub length: u32,
}

impl IdMapping {
    /// The line for `/proc/<pid>/uid_map` or `gid_map`.
    pub fn map_line(&self) -> String {
        format!("{} {} {}\n", self.container_id, self.host_id, self.length)
    }

    /// The host ID of `id` inside, if the range maps it.
    pub fn host_of(&self, id: u32) -> Option<u32> {
        let offset = id.checked_sub(self.container_id)?;
        (offset < self.length).then(|| self.host_id.checked_add(offset))?
    }
}

/// A pod's own user namespace (CRI `NamespaceMode::POD` for users): the pod's network, UTS
/// and IPC namespaces belong to it, and its containers run in it with idmapped mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNamespaceSpec {
    pub uids: IdMapping,
    pub gids: IdMapping,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceModes {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
}

/// Everything RunPodSandbox asks for that berth acts on or reports back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
    pub hostname: String,
    pub log_directory: String,
    pub dns: DnsConfig,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// cgroupfs path of the pod's parent cgroup; empty means berth's default.
    pub cgroup_parent: String,
    pub namespaces: NamespaceModes,
    pub sysctls: BTreeMap<String, String>,
    pub runtime_handler: String,
    pub privileged: bool,
    /// A user namespace of the pod's own; `None` is the host's.
    #[serde(default)]
    pub user_namespace: Option<UserNamespaceSpec>,
}

impl PodSpec {
    /// The key that makes a pod unique for the kubelet.
    pub fn reservation_key(&self) -> String {
        format!(
            "{}_{}_{}_{}",
            self.name, self.namespace, self.uid, self.attempt
        )
    }
}

/// The persisted state of one pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub id: String,
    pub spec: PodSpec,
    /// Nanoseconds since the Unix epoch.
    pub created_at_ns: i64,
    /// StopPodSandbox ran to the end.
    pub stopped: bool,
    /// The process holding the pod's PID namespace, if it has one.
    pub init: Option<InitProcess>,
    /// The pod's cgroup, one directory per hierarchy.
    pub cgroup_dirs: Vec<PathBuf>,
    /// The pod's addresses on eth0, IPv4 first.
    pub ips: Vec<IpAddr>,
    /// CNI ADD succeeded and no DEL has run since.
    pub network_attached: bool,
}

impl meta_store::Record for PodRecord {
    const TABLE: &'static str = "pods";
    const VERSION: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_mappings_translate_inside_ids() {
        let m = IdMapping {
            container_id: 0,
            host_id: 1000,
            length: 10,
        };
        assert_eq!(m.map_line(), "0 1000 10\n");
        assert_eq!(m.host_of(0), Some(1000));
        assert_eq!(m.host_of(9), Some(1009));
        assert_eq!(m.host_of(10), None);
        let shifted = IdMapping {
            container_id: 5,
            ..m
        };
        assert_eq!(shifted.host_of(0), None);
        assert_eq!(shifted.host_of(5), Some(1000));
    }
}
