//! StopPodSandbox: stops the pod's containers, then the pod itself (init and network).
//! Idempotent; an unknown pod is not an error.

use k8s_cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};

use crate::error::{CriResult, blocking};
use crate::service::CriService;

pub async fn stop_pod_sandbox(
    svc: &CriService,
    req: StopPodSandboxRequest,
) -> CriResult<StopPodSandboxResponse> {
    stop_containers_of_pod(svc, &req.pod_sandbox_id).await?;
    let pods = svc.pods.clone();
    blocking(move || pods.stop(&req.pod_sandbox_id)).await??;
    Ok(StopPodSandboxResponse {})
}

/// Stops every container of the pod before its namespaces and network go. The kubelet has
/// already given them their grace period; what still runs here is killed, as containerd
/// does.
pub(crate) async fn stop_containers_of_pod(svc: &CriService, pod_id: &str) -> CriResult<()> {
    let Ok(pod) = svc.pods.status(pod_id) else {
        return Ok(());
    };
    for rec in svc.containers.in_pod(&pod.record.id) {
        svc.containers.stop(&rec, std::time::Duration::ZERO).await?;
    }
    Ok(())
}
