//! RemovePodSandbox.

use k8s_cri::v1::{RemovePodSandboxRequest, RemovePodSandboxResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn remove_pod_sandbox(
    _svc: &CriService,
    _req: RemovePodSandboxRequest,
) -> CriResult<RemovePodSandboxResponse> {
    Err(CriError::Unimplemented("RemovePodSandbox"))
}
