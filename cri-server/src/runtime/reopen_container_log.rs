//! ReopenContainerLog: after the kubelet renamed the log file, the monitor continues in a
//! new file at the original path. Only for running containers, as the CRI allows.

use cri_api::v1::{ReopenContainerLogRequest, ReopenContainerLogResponse};
use sandbox::container::{self as ctr, ContainerState};

use crate::error::{CriError, CriResult, blocking};
use crate::service::CriService;

pub async fn reopen_container_log(
    svc: &CriService,
    req: ReopenContainerLogRequest,
) -> CriResult<ReopenContainerLogResponse> {
    let rec = svc.containers.get(&req.container_id)?;
    blocking(move || -> CriResult<()> {
        if !matches!(ctr::state(&rec.dir)?, ContainerState::Running { .. }) {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        Ok(ctr::reopen_log(&rec.dir)?)
    })
    .await??;
    Ok(ReopenContainerLogResponse {})
}
