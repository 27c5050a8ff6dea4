//! PullImage.

use k8s_cri::v1::{PullImageRequest, PullImageResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn pull_image(_svc: &CriService, _req: PullImageRequest) -> CriResult<PullImageResponse> {
    Err(CriError::Unimplemented("PullImage"))
}
