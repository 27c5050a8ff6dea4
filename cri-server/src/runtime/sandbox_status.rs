//! PodSandboxStatus: state, network, namespaces and metadata of one pod; with `verbose`,
//! berth's own view (paths, init process, cgroup, CNI result) as JSON under "info".

use std::collections::HashMap;

use cri_api::v1::{self as cri, PodSandboxStatusRequest, PodSandboxStatusResponse};
use sandbox::pod::PodView;

use super::sandbox_run::mode_to_cri;
use crate::error::CriResult;
use crate::service::CriService;

pub async fn pod_sandbox_status(
    svc: &CriService,
    req: PodSandboxStatusRequest,
) -> CriResult<PodSandboxStatusResponse> {
    let view = svc.pods.status(&req.pod_sandbox_id)?;
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = serde_json::json!({
            "pod": &view,
            "cni_result": svc.pods.network_result(&view.record.id),
        });
        info.insert("info".to_string(), verbose.to_string());
    }
    Ok(PodSandboxStatusResponse {
        status: Some(to_cri_status(&view)),
        info,
        containers_statuses: Vec::new(),
        timestamp: 0,
    })
}

pub(crate) fn state_to_cri(view: &PodView) -> i32 {
    if view.ready {
        cri::PodSandboxState::SandboxReady as i32
    } else {
        cri::PodSandboxState::SandboxNotready as i32
    }
}

pub(crate) fn metadata_to_cri(view: &PodView) -> cri::PodSandboxMetadata {
    let s = &view.record.spec;
    cri::PodSandboxMetadata {
        name: s.name.clone(),
        uid: s.uid.clone(),
        namespace: s.namespace.clone(),
        attempt: s.attempt,
    }
}

fn to_cri_status(view: &PodView) -> cri::PodSandboxStatus {
    let rec = &view.record;
    let spec = &rec.spec;
    // A stopped pod has no network any more.
    let network = (!rec.stopped && !rec.ips.is_empty()).then(|| cri::PodSandboxNetworkStatus {
        ip: rec.ips[0].to_string(),
        additional_ips: rec.ips[1..]
            .iter()
            .map(|ip| cri::PodIp { ip: ip.to_string() })
            .collect(),
    });
    cri::PodSandboxStatus {
        id: rec.id.clone(),
        metadata: Some(metadata_to_cri(view)),
        state: state_to_cri(view),
        created_at: rec.created_at_ns,
        network: Some(network.unwrap_or_default()),
        linux: Some(cri::LinuxPodSandboxStatus {
            namespaces: Some(cri::Namespace {
                options: Some(cri::NamespaceOption {
                    network: mode_to_cri(spec.namespaces.network),
                    pid: mode_to_cri(spec.namespaces.pid),
                    ipc: mode_to_cri(spec.namespaces.ipc),
                    target_id: String::new(),
                    userns_options: Some(super::sandbox_run::user_namespace_to_cri(
                        spec.user_namespace,
                    )),
                }),
            }),
        }),
        labels: spec.labels.clone().into_iter().collect(),
        annotations: spec.annotations.clone().into_iter().collect(),
        runtime_handler: spec.runtime_handler.clone(),
    }
}
