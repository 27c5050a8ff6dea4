//! StopPodSandbox.

use k8s_cri::v1::{StopPodSandboxRequest, StopPodSandboxResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn stop_pod_sandbox(
    _svc: &CriService,
    _req: StopPodSandboxRequest,
) -> CriResult<StopPodSandboxResponse> {
    Err(CriError::Unimplemented("StopPodSandbox"))
}
