//! RunPodSandbox: translates the CRI request into a `PodSpec` and lets the pod manager
//! build the pod (on a blocking thread: it forks, mounts and waits for CNI plugins).

use cri_api::v1::{self as cri, RunPodSandboxRequest, RunPodSandboxResponse};
use sandbox::cni::PortMapping;
use sandbox::pod::files::DnsConfig;
use sandbox::pod::{IdMapping, NamespaceMode, NamespaceModes, PodSpec, UserNamespaceSpec};

use super::status::runtime_handlers;
use crate::error::{CriError, CriResult, blocking};
use crate::metadata;
use crate::service::CriService;

pub async fn run_pod_sandbox(
    svc: &CriService,
    req: RunPodSandboxRequest,
) -> CriResult<RunPodSandboxResponse> {
    let handlers = runtime_handlers(&svc.config);
    if !handlers.contains(&req.runtime_handler) {
        return Err(CriError::InvalidArgument(format!(
            "runtime handler {:?} is unknown; berth has {handlers:?}",
            req.runtime_handler
        )));
    }
    let spec = pod_spec(req)?;
    let in_use = svc.pods.metadata_bytes();
    let adding = metadata::metadata_size(spec.labels.iter().chain(&spec.annotations));
    metadata::check_node_budget("pods", in_use, adding)?;
    let pods = svc.pods.clone();
    let pod_sandbox_id = blocking(move || pods.run(spec)).await??;
    Ok(RunPodSandboxResponse { pod_sandbox_id })
}

/// The request as a `PodSpec`: pure, no system calls (public for cri-server/fuzz). The
/// runtime handler is checked against the configuration by the caller.
pub fn pod_spec(req: RunPodSandboxRequest) -> CriResult<PodSpec> {
    let config = req
        .config
        .ok_or_else(|| CriError::InvalidArgument("RunPodSandbox needs a config".into()))?;
    let meta = config
        .metadata
        .ok_or_else(|| CriError::InvalidArgument("the pod config needs metadata".into()))?;
    // Before anything runs: the names go into CNI plugins' environment, among others.
    metadata::check_name("the pod's name", &meta.name, true)?;
    metadata::check_name("the pod's namespace", &meta.namespace, true)?;
    metadata::check_name("the pod's uid", &meta.uid, false)?;
    metadata::check_labels_and_annotations("pod", &config.labels, &config.annotations)?;
    let linux = config.linux.unwrap_or_default();
    let security = linux.security_context.unwrap_or_default();
    let ns = security.namespace_options.unwrap_or_default();
    let user_namespace = user_namespace(ns.userns_options.as_ref())?;
    let dns = config.dns_config.unwrap_or_default();
    Ok(PodSpec {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        attempt: meta.attempt,
        hostname: config.hostname,
        log_directory: config.log_directory,
        dns: DnsConfig {
            servers: dns.servers,
            searches: dns.searches,
            options: dns.options,
        },
        port_mappings: config
            .port_mappings
            .iter()
            .map(port_mapping)
            .collect::<CriResult<_>>()?,
        labels: config.labels.into_iter().collect(),
        annotations: config.annotations.into_iter().collect(),
        cgroup_parent: linux.cgroup_parent,
        namespaces: NamespaceModes {
            network: mode_from_cri(ns.network)?,
            pid: mode_from_cri(ns.pid)?,
            ipc: mode_from_cri(ns.ipc)?,
        },
        sysctls: linux.sysctls.into_iter().collect(),
        runtime_handler: req.runtime_handler,
        privileged: security.privileged,
        user_namespace,
    })
}

/// CRI `userns_options`: NODE (or none) is the host's user namespace; POD is one of the
/// pod's own with exactly one uid and one gid range, each mapping container ID 0.
pub(crate) fn user_namespace(
    opts: Option<&cri::UserNamespace>,
) -> CriResult<Option<UserNamespaceSpec>> {
    let Some(opts) = opts else {
        return Ok(None);
    };
    match cri::NamespaceMode::try_from(opts.mode) {
        Ok(cri::NamespaceMode::Node) => Ok(None),
        Ok(cri::NamespaceMode::Pod) => Ok(Some(UserNamespaceSpec {
            uids: single_mapping("uid", &opts.uids)?,
            gids: single_mapping("gid", &opts.gids)?,
        })),
        Ok(mode) => Err(CriError::InvalidArgument(format!(
            "user namespace mode {} is not supported: use POD or NODE",
            mode.as_str_name()
        ))),
        Err(_) => Err(CriError::InvalidArgument(format!(
            "user namespace mode {} is unknown",
            opts.mode
        ))),
    }
}

/// The pod's user namespace as PodSandboxStatus reports it (none: the host's).
pub(crate) fn user_namespace_to_cri(userns: Option<UserNamespaceSpec>) -> cri::UserNamespace {
    let mapping = |m: IdMapping| cri::IdMapping {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    };
    match userns {
        None => cri::UserNamespace {
            mode: cri::NamespaceMode::Node as i32,
            ..Default::default()
        },
        Some(u) => cri::UserNamespace {
            mode: cri::NamespaceMode::Pod as i32,
            uids: vec![mapping(u.uids)],
            gids: vec![mapping(u.gids)],
        },
    }
}

fn single_mapping(what: &str, mappings: &[cri::IdMapping]) -> CriResult<IdMapping> {
    let [m] = mappings else {
        return Err(CriError::InvalidArgument(format!(
            "a pod user namespace needs exactly one {what} mapping, not {}",
            mappings.len()
        )));
    };
    let m = IdMapping {
        container_id: m.container_id,
        host_id: m.host_id,
        length: m.length,
    };
    if m.host_of(0).is_none() {
        return Err(CriError::InvalidArgument(format!(
            "the {what} mapping {}+{} of the pod user namespace does not map container ID 0",
            m.container_id, m.length
        )));
    }
    Ok(m)
}

fn port_mapping(p: &cri::PortMapping) -> CriResult<PortMapping> {
    let protocol = match cri::Protocol::try_from(p.protocol) {
        Ok(cri::Protocol::Tcp) => "tcp",
        Ok(cri::Protocol::Udp) => "udp",
        Ok(cri::Protocol::Sctp) => "sctp",
        Err(_) => {
            return Err(CriError::InvalidArgument(format!(
                "port mapping protocol {} is unknown",
                p.protocol
            )));
        }
    };
    let port = |what: &str, v: i32| {
        u16::try_from(v).map_err(|_| {
            CriError::InvalidArgument(format!("port mapping {what} {v} is not a port number"))
        })
    };
    Ok(PortMapping {
        host_port: port("host port", p.host_port)?,
        container_port: port("container port", p.container_port)?,
        protocol: protocol.into(),
        host_ip: p.host_ip.clone(),
    })
}

pub(crate) fn mode_from_cri(m: i32) -> CriResult<NamespaceMode> {
    match cri::NamespaceMode::try_from(m) {
        Ok(cri::NamespaceMode::Pod) => Ok(NamespaceMode::Pod),
        Ok(cri::NamespaceMode::Container) => Ok(NamespaceMode::Container),
        Ok(cri::NamespaceMode::Node) => Ok(NamespaceMode::Node),
        Ok(cri::NamespaceMode::Target) => Ok(NamespaceMode::Target),
        Err(_) => Err(CriError::InvalidArgument(format!(
            "namespace mode {m} is unknown"
        ))),
    }
}

pub(crate) fn mode_to_cri(m: NamespaceMode) -> i32 {
    (match m {
        NamespaceMode::Pod => cri::NamespaceMode::Pod,
        NamespaceMode::Container => cri::NamespaceMode::Container,
        NamespaceMode::Node => cri::NamespaceMode::Node,
        NamespaceMode::Target => cri::NamespaceMode::Target,
    }) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        for m in 0..4 {
            assert_eq!(mode_to_cri(mode_from_cri(m).unwrap()), m);
        }
        assert!(mode_from_cri(9).is_err());
    }

    #[test]
    fn user_namespace_options() {
        let range = |container_id, host_id| cri::IdMapping {
            container_id,
            host_id,
            length: 65536,
        };
        let opts = |mode: cri::NamespaceMode, uids: Vec<cri::IdMapping>| cri::UserNamespace {
            mode: mode as i32,
            gids: uids.clone(),
            uids,
        };
        use cri::NamespaceMode::*;
        assert_eq!(user_namespace(None).unwrap(), None);
        assert_eq!(user_namespace(Some(&opts(Node, vec![]))).unwrap(), None);
        let pod = opts(Pod, vec![range(0, 1000)]);
        let spec = user_namespace(Some(&pod)).unwrap().unwrap();
        assert_eq!(spec.uids.host_of(0), Some(1000));
        assert_eq!(user_namespace_to_cri(Some(spec)), pod);
        assert_eq!(user_namespace_to_cri(None), opts(Node, vec![]));
        for (bad, says) in [
            (
                opts(Pod, vec![range(0, 1000), range(0, 2000)]),
                "exactly one",
            ),
            (opts(Pod, vec![]), "exactly one"),
            (opts(Pod, vec![range(1, 1000)]), "container ID 0"),
            (opts(Container, vec![]), "CONTAINER"),
            (opts(Target, vec![]), "TARGET"),
        ] {
            match user_namespace(Some(&bad)) {
                Err(CriError::InvalidArgument(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_request_becomes_a_spec() {
        let req = RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "p".into(),
                    namespace: "ns".into(),
                    uid: "u".into(),
                    attempt: 2,
                }),
                port_mappings: vec![cri::PortMapping {
                    protocol: cri::Protocol::Udp as i32,
                    container_port: 53,
                    host_port: 5353,
                    host_ip: "127.0.0.1".into(),
                }],
                linux: Some(cri::LinuxPodSandboxConfig {
                    security_context: Some(cri::LinuxSandboxSecurityContext {
                        namespace_options: Some(cri::NamespaceOption {
                            network: cri::NamespaceMode::Node as i32,
                            pid: cri::NamespaceMode::Container as i32,
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            runtime_handler: String::new(),
        };
        let spec = pod_spec(req).unwrap();
        assert_eq!(spec.attempt, 2);
        assert_eq!(spec.namespaces.network, NamespaceMode::Node);
        assert_eq!(spec.namespaces.pid, NamespaceMode::Container);
        assert_eq!(spec.namespaces.ipc, NamespaceMode::Pod);
        assert_eq!(spec.port_mappings[0].protocol, "udp");
        assert_eq!(spec.port_mappings[0].host_port, 5353);
        assert!(pod_spec(RunPodSandboxRequest::default()).is_err());
    }
}
