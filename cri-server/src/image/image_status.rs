//! ImageStatus.

use k8s_cri::v1::{ImageStatusRequest, ImageStatusResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn image_status(
    _svc: &CriService,
    _req: ImageStatusRequest,
) -> CriResult<ImageStatusResponse> {
    Err(CriError::Unimplemented("ImageStatus"))
}
