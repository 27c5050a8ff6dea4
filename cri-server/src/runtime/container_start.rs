//! StartContainer: open the start gate of a created container.

use cri_api::v1::{ContainerEventType, StartContainerRequest, StartContainerResponse};
use sandbox::container::{self as ctr, ContainerState};

use crate::containers::devices::{self, HookStage};
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
    if rec.hooks.iter().any(|h| h.stage == HookStage::Poststart) {
        let pid = match svc.containers.state(&rec) {
            ContainerState::Running { pid, .. } => pid,
            _ => 0,
        };
        let state = devices::oci_state(&rec.id, "running", pid, &rec.dir, &rec.annotations);
        // OCI: a failing poststart hook is a warning; the container runs on.
        blocking(move || {
            if let Err(e) = devices::run_hooks(&rec.hooks, HookStage::Poststart, &state) {
                tracing::warn!(container = %rec.id, "poststart hook: {e}");
            }
        })
        .await?;
    }
    Ok(StartContainerResponse {})
}
