//! ListImages.

use k8s_cri::v1::{ListImagesRequest, ListImagesResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn list_images(
    _svc: &CriService,
    _req: ListImagesRequest,
) -> CriResult<ListImagesResponse> {
    Err(CriError::Unimplemented("ListImages"))
}
