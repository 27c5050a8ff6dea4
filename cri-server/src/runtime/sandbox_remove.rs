//! RemovePodSandbox: stops the pod if needed and removes it with everything it holds.
//! Idempotent; an unknown pod is not an error.

use k8s_cri::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};

use super::sandbox_stop::stop_pod;
use crate::error::{CriResult, blocking};
use crate::service::CriService;

pub async fn remove_pod_sandbox(
    svc: &CriService,
    req: RemovePodSandboxRequest,
) -> CriResult<RemovePodSandboxResponse> {
    stop_pod(svc, &req.pod_sandbox_id).await?;
    if let Ok(pod) = svc.pods.status(&req.pod_sandbox_id) {
        for rec in svc.containers.in_pod(&pod.record.id) {
            svc.containers.remove(&rec).await?;
        }
    }
    let pods = svc.pods.clone();
    blocking(move || pods.remove(&req.pod_sandbox_id)).await??;
    Ok(RemovePodSandboxResponse {})
}
