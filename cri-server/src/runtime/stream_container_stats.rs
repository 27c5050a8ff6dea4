//! StreamContainerStats: ListContainerStats' answer, as a stream (`list_stream`).

use cri_api::v1 as cri;

use super::list_container_stats::list_container_stats;
use crate::error::CriResult;
use crate::runtime::list_stream::{ListStream, chunked};
use crate::service::CriService;

pub async fn stream_container_stats(
    svc: &CriService,
    req: cri::StreamContainerStatsRequest,
) -> CriResult<ListStream<cri::StreamContainerStatsResponse>> {
    let list =
        list_container_stats(svc, cri::ListContainerStatsRequest { filter: req.filter }).await?;
    Ok(chunked(list.stats, |container_stats| {
        cri::StreamContainerStatsResponse { container_stats }
    }))
}
