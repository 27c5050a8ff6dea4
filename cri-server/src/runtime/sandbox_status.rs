//! PodSandboxStatus.

use k8s_cri::v1::{PodSandboxStatusRequest, PodSandboxStatusResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn pod_sandbox_status(
    _svc: &CriService,
    _req: PodSandboxStatusRequest,
) -> CriResult<PodSandboxStatusResponse> {
    Err(CriError::Unimplemented("PodSandboxStatus"))
}
