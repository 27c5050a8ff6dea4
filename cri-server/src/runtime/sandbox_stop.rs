//! StopPodSandbox: stops the pod's containers, then the pod itself (init and network).
//! Idempotent; an unknown pod is not an error.

use k8s_cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn stop_pod_sandbox(
    svc: &CriService,
    req: StopPodSandboxRequest,
) -> CriResult<StopPodSandboxResponse> {
    stop_containers_of_pod(svc, &req.pod_sandbox_id).await?;
    let pods = svc.pods.clone();
    tokio::task::spawn_blocking(move || pods.stop(&req.pod_sandbox_id))
        .await
        .map_err(|e| CriError::Internal(format!("StopPodSandbox worker: {e}")))??;
    Ok(StopPodSandboxResponse {})
}

/// Hook for the container engine: stop every container of the pod (force after their
/// grace period) before the pod's namespaces and network go. There are no containers yet,
/// so there is nothing to stop.
pub(crate) async fn stop_containers_of_pod(_svc: &CriService, _pod_id: &str) -> CriResult<()> {
    Ok(())
}
