//! StreamPodSandboxStats: ListPodSandboxStats' answer, as a stream (`list_stream`).

use cri_api::v1 as cri;

use super::pod_sandbox_stats::list_pod_sandbox_stats;
use crate::error::CriResult;
use crate::runtime::list_stream::{ListStream, chunked};
use crate::service::CriService;

pub async fn stream_pod_sandbox_stats(
    svc: &CriService,
    req: cri::StreamPodSandboxStatsRequest,
) -> CriResult<ListStream<cri::StreamPodSandboxStatsResponse>> {
    let list =
        list_pod_sandbox_stats(svc, cri::ListPodSandboxStatsRequest { filter: req.filter }).await?;
    Ok(chunked(list.stats, |pod_sandbox_stats| {
        cri::StreamPodSandboxStatsResponse { pod_sandbox_stats }
    }))
}
