//! RemovePodSandbox: stops the pod if needed and removes it with everything it holds.
//! Idempotent; a pod id berth does not know is not an error (an unknown prefix is).

use cri_api::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};

use super::sandbox_stop::stop_pod;
use crate::error::{CriResult, blocking};
use crate::service::CriService;

pub async fn remove_pod_sandbox(
    svc: &CriService,
    req: RemovePodSandboxRequest,
) -> CriResult<RemovePodSandboxResponse> {
    let Some(pod) = svc.pods.find(&req.pod_sandbox_id)? else {
        return Ok(RemovePodSandboxResponse {});
    };
    let id = pod.record.id;
    stop_pod(svc, &id).await?;
    for rec in svc.containers.in_pod(&id) {
        svc.containers.remove(&rec).await?;
    }
    let pods = svc.pods.clone();
    blocking(move || pods.remove(&id)).await??;
    Ok(RemovePodSandboxResponse {})
}
