//! ListContainerStats: the stats of every container matching the filter (id, pod, labels).

use cri_api::v1::{ListContainerStatsRequest, ListContainerStatsResponse};

use crate::containers::stats;
use crate::error::{CriResult, blocking};
use crate::service::CriService;

pub async fn list_container_stats(
    svc: &CriService,
    req: ListContainerStatsRequest,
) -> CriResult<ListContainerStatsResponse> {
    let filter = req.filter.unwrap_or_default();
    let containers = svc.containers.clone();
    let stats = blocking(move || {
        containers
            .list()
            .into_iter()
            .filter(|r| filter.id.is_empty() || r.id.starts_with(&filter.id))
            .filter(|r| {
                filter.pod_sandbox_id.is_empty() || r.pod_id.starts_with(&filter.pod_sandbox_id)
            })
            .filter(|r| {
                filter
                    .label_selector
                    .iter()
                    .all(|(k, v)| r.labels.get(k) == Some(v))
            })
            .map(|r| stats::container_stats(&containers.cpu_rates, &r))
            .collect()
    })
    .await?;
    Ok(ListContainerStatsResponse { stats })
}
