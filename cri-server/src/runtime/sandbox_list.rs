//! ListPodSandbox, with the CRI filters: id (a prefix is enough), state and a label
//! selector (every pair must match).

use cri_api::v1::{ListPodSandboxRequest, ListPodSandboxResponse, PodSandbox, PodSandboxFilter};
use sandbox::pod::PodView;

use super::sandbox_status::{metadata_to_cri, state_to_cri};
use crate::error::CriResult;
use crate::service::CriService;

pub async fn list_pod_sandbox(
    svc: &CriService,
    req: ListPodSandboxRequest,
) -> CriResult<ListPodSandboxResponse> {
    let items = svc
        .pods
        .list()
        .into_iter()
        .filter(|v| matches(req.filter.as_ref(), v))
        .map(|v| PodSandbox {
            id: v.record.id.clone(),
            metadata: Some(metadata_to_cri(&v)),
            state: state_to_cri(&v),
            created_at: v.record.created_at_ns,
            labels: v.record.spec.labels.clone().into_iter().collect(),
            annotations: v.record.spec.annotations.clone().into_iter().collect(),
            runtime_handler: v.record.spec.runtime_handler.clone(),
        })
        .collect();
    Ok(ListPodSandboxResponse { items })
}

fn matches(filter: Option<&PodSandboxFilter>, v: &PodView) -> bool {
    let Some(f) = filter else {
        return true;
    };
    if !f.id.is_empty() && !v.record.id.starts_with(&f.id) {
        return false;
    }
    if let Some(s) = &f.state
        && s.state != state_to_cri(v)
    {
        return false;
    }
    f.label_selector
        .iter()
        .all(|(k, want)| v.record.spec.labels.get(k) == Some(want))
}
