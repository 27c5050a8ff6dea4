//! StopPodSandbox: kills the pod's containers and stops the pod itself (init and network).
//! Idempotent; an unknown pod is not an error.

use cri_api::v1::{StopPodSandboxRequest, StopPodSandboxResponse};

use crate::error::{CriResult, blocking};
use crate::service::CriService;

pub async fn stop_pod_sandbox(
    svc: &CriService,
    req: StopPodSandboxRequest,
) -> CriResult<StopPodSandboxResponse> {
    stop_pod(svc, &req.pod_sandbox_id).await?;
    Ok(StopPodSandboxResponse {})
}

/// Kills what still runs in the pod and stops the pod, both at once: the kubelet has already
/// given the containers their grace period (what still runs is killed, as containerd does),
/// and the network teardown spends most of its time waiting on the kernel (deleting the
/// pod's veth waits for an RCU barrier), so the containers die meanwhile.
pub(crate) async fn stop_pod(svc: &CriService, pod_id: &str) -> CriResult<()> {
    let Some(pod) = svc.pods.find(pod_id)? else {
        return Ok(());
    };
    let id = pod.record.id;
    // Not ready from here on: a CreateContainer racing this stop fails rather than leave a
    // container the list below misses.
    svc.pods.begin_stop(&id);
    let containers = svc.containers.in_pod(&id);
    let kill_containers = async {
        for rec in &containers {
            svc.containers.stop(rec, std::time::Duration::ZERO).await?;
        }
        CriResult::Ok(())
    };
    let pods = svc.pods.clone();
    let stop_pod = blocking(move || pods.stop(&id));
    let (killed, stopped) = tokio::join!(kill_containers, stop_pod);
    killed?;
    stopped??;
    Ok(())
}
