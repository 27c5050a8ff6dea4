//! RunPodSandbox.

use k8s_cri::v1::{RunPodSandboxRequest, RunPodSandboxResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn run_pod_sandbox(
    _svc: &CriService,
    _req: RunPodSandboxRequest,
) -> CriResult<RunPodSandboxResponse> {
    Err(CriError::Unimplemented("RunPodSandbox"))
}
