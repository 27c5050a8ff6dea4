//! StartContainer: open the start gate of a created container.

use cri_api::v1::{ContainerEventType, StartContainerRequest, StartContainerResponse};
use sandbox::container::{self as ctr, ContainerState};

use crate::error::{CriError, CriResult, blocking};
use crate::service::CriService;

pub async fn start_container(
    svc: &CriService,
    req: StartContainerRequest,
) -> CriResult<StartContainerResponse> {
    let rec = svc.containers.get(&req.container_id)?;
    let dir = rec.dir.clone();
    blocking(move || -> CriResult<()> {
        match ctr::state(&dir)? {
            ContainerState::Created { .. } => Ok(ctr::start(&dir)?),
            ContainerState::Running { .. } => Err(CriError::FailedPrecondition(
                "the container is already running".into(),
            )),
            ContainerState::Exited(_) => Err(CriError::FailedPrecondition(
                "the container has already exited".into(),
            )),
        }
    })
    .await??;
    svc.containers
        .emit(&rec, ContainerEventType::ContainerStartedEvent);
    Ok(StartContainerResponse {})
}
