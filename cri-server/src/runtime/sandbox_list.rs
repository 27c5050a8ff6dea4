//! ListPodSandbox.

use k8s_cri::v1::{ListPodSandboxRequest, ListPodSandboxResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn list_pod_sandbox(
    _svc: &CriService,
    _req: ListPodSandboxRequest,
) -> CriResult<ListPodSandboxResponse> {
    Err(CriError::Unimplemented("ListPodSandbox"))
}
