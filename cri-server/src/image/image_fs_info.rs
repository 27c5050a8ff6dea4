//! ImageFsInfo.

use k8s_cri::v1::{ImageFsInfoRequest, ImageFsInfoResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn image_fs_info(
    _svc: &CriService,
    _req: ImageFsInfoRequest,
) -> CriResult<ImageFsInfoResponse> {
    Err(CriError::Unimplemented("ImageFsInfo"))
}
