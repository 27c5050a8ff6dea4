//! UpdateContainerResources: new CPU and memory limits written to the container's cgroup
//! and remembered in its spec.

use cri_api::v1::{UpdateContainerResourcesRequest, UpdateContainerResourcesResponse};
use sandbox::container::cgroup::{Cgroup, Hierarchy};
use sandbox::container::{ContainerSpec, state};

use crate::containers::spec::resources;
use crate::error::{CriError, CriResult, blocking};
use crate::service::CriService;

pub async fn update_container_resources(
    svc: &CriService,
    req: UpdateContainerResourcesRequest,
) -> CriResult<UpdateContainerResourcesResponse> {
    let rec = svc.containers.get(&req.container_id)?;
    let Some(linux) = req.linux else {
        return Ok(UpdateContainerResourcesResponse {});
    };
    blocking(move || -> CriResult<()> {
        let mut spec: ContainerSpec = state::read_json(&rec.dir, state::CONFIG)
            .map_err(|e| CriError::Internal(format!("reading the container spec: {e}")))?
            .ok_or_else(|| CriError::NotFound(format!("container {} has no spec", rec.id)))?;
        let Some(cg) = spec.cgroup.as_mut() else {
            return Err(CriError::FailedPrecondition(format!(
                "container {} has no cgroup",
                rec.id
            )));
        };
        cg.resources = resources(Some(&linux));
        Cgroup::at(&Hierarchy::detect(), &cg.path)
            .create(&cg.resources)
            .map_err(|e| CriError::Internal(format!("updating the cgroup: {e}")))?;
        state::write_json(&rec.dir, state::CONFIG, &spec)
            .map_err(|e| CriError::Internal(format!("saving the container spec: {e}")))
    })
    .await??;
    Ok(UpdateContainerResourcesResponse {})
}
