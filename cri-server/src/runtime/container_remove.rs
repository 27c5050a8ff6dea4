//! RemoveContainer: kill if needed, remove the rootfs, cgroup and state, forget the record.
//! Idempotent: a container id berth does not know is fine (an unknown prefix is not).

use cri_api::v1::{RemoveContainerRequest, RemoveContainerResponse};

use crate::error::CriResult;
use crate::service::CriService;

pub async fn remove_container(
    svc: &CriService,
    req: RemoveContainerRequest,
) -> CriResult<RemoveContainerResponse> {
    if let Some(rec) = svc.containers.lookup(&req.container_id)? {
        svc.containers.remove(&rec).await?;
    }
    Ok(RemoveContainerResponse {})
}
