//! ContainerStats: CPU and memory from the container's cgroup, disk from its writable layer.

use cri_api::v1::{ContainerStatsRequest, ContainerStatsResponse};

use crate::containers::stats;
use crate::error::{CriResult, blocking};
use crate::service::CriService;

pub async fn container_stats(
    svc: &CriService,
    req: ContainerStatsRequest,
) -> CriResult<ContainerStatsResponse> {
    let rec = svc.containers.get(&req.container_id)?;
    let containers = svc.containers.clone();
    let s = blocking(move || stats::container_stats(&containers.cpu_rates, &rec)).await?;
    Ok(ContainerStatsResponse { stats: Some(s) })
}
