//! StopContainer: the image's stop signal (SIGTERM by default), SIGKILL after the timeout.
//! Idempotent: a container id berth does not know, or a stopped container, is fine.

use std::time::Duration;

use cri_api::v1::{StopContainerRequest, StopContainerResponse};

use crate::error::CriResult;
use crate::service::CriService;

pub async fn stop_container(
    svc: &CriService,
    req: StopContainerRequest,
) -> CriResult<StopContainerResponse> {
    let Some(rec) = svc.containers.lookup(&req.container_id)? else {
        return Ok(StopContainerResponse {});
    };
    let timeout = Duration::from_secs(req.timeout.max(0) as u64);
    svc.containers.stop(&rec, timeout).await?;
    Ok(StopContainerResponse {})
}
