//! StreamContainers: ListContainers' answer, as a stream (`list_stream`).

use cri_api::v1 as cri;

use super::container_list::list_containers;
use crate::error::CriResult;
use crate::runtime::list_stream::{ListStream, chunked};
use crate::service::CriService;

pub async fn stream_containers(
    svc: &CriService,
    req: cri::StreamContainersRequest,
) -> CriResult<ListStream<cri::StreamContainersResponse>> {
    let list = list_containers(svc, cri::ListContainersRequest { filter: req.filter }).await?;
    Ok(chunked(list.containers, |containers| {
        cri::StreamContainersResponse { containers }
    }))
}
