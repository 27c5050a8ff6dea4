//! ListImages: served from the store's in-memory index.

use cri_api::v1::{ListImagesRequest, ListImagesResponse};

use super::{cri_image, spec_ref};
use crate::error::CriResult;
use crate::service::CriService;

pub async fn list_images(
    svc: &CriService,
    req: ListImagesRequest,
) -> CriResult<ListImagesResponse> {
    let wanted = req
        .filter
        .as_ref()
        .map(|f| spec_ref(&f.image))
        .unwrap_or_default();
    let images = if wanted.is_empty() {
        svc.images.list()
    } else {
        svc.images.get(wanted).into_iter().collect()
    };
    Ok(ListImagesResponse {
        images: images.iter().map(|r| cri_image(r)).collect(),
    })
}
