//! StreamImages: ListImages' answer, as a stream (`list_stream`).

use cri_api::v1 as cri;

use super::image_list::list_images;
use crate::error::CriResult;
use crate::runtime::list_stream::{ListStream, chunked};
use crate::service::CriService;

pub async fn stream_images(
    svc: &CriService,
    req: cri::StreamImagesRequest,
) -> CriResult<ListStream<cri::StreamImagesResponse>> {
    let list = list_images(svc, cri::ListImagesRequest { filter: req.filter }).await?;
    Ok(chunked(list.images, |images| cri::StreamImagesResponse {
        images,
    }))
}
