//! RemoveImage.

use k8s_cri::v1::{RemoveImageRequest, RemoveImageResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn remove_image(
    _svc: &CriService,
    _req: RemoveImageRequest,
) -> CriResult<RemoveImageResponse> {
    Err(CriError::Unimplemented("RemoveImage"))
}
