//! StreamPodSandboxMetrics: ListPodSandboxMetrics' answer, as a stream (`list_stream`).

use cri_api::v1 as cri;

use super::list_pod_sandbox_metrics::list_pod_sandbox_metrics;
use crate::error::CriResult;
use crate::runtime::list_stream::{ListStream, chunked};
use crate::service::CriService;

pub async fn stream_pod_sandbox_metrics(
    svc: &CriService,
    _req: cri::StreamPodSandboxMetricsRequest,
) -> CriResult<ListStream<cri::StreamPodSandboxMetricsResponse>> {
    let list = list_pod_sandbox_metrics(svc, cri::ListPodSandboxMetricsRequest {}).await?;
    Ok(chunked(list.pod_metrics, |pod_sandbox_metrics| {
        cri::StreamPodSandboxMetricsResponse {
            pod_sandbox_metrics,
        }
    }))
}
