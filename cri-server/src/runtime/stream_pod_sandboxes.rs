//! StreamPodSandboxes: ListPodSandbox's answer, as a stream (`list_stream`).

use cri_api::v1 as cri;

use super::sandbox_list::list_pod_sandbox;
use crate::error::CriResult;
use crate::runtime::list_stream::{ListStream, chunked};
use crate::service::CriService;

pub async fn stream_pod_sandboxes(
    svc: &CriService,
    req: cri::StreamPodSandboxesRequest,
) -> CriResult<ListStream<cri::StreamPodSandboxesResponse>> {
    let list = list_pod_sandbox(svc, cri::ListPodSandboxRequest { filter: req.filter }).await?;
    Ok(chunked(list.items, |pod_sandboxes| {
        cri::StreamPodSandboxesResponse { pod_sandboxes }
    }))
}
