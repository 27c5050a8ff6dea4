//! RemoveImage: like containerd, removes the image whatever reference names it, with all
//! its tags; an unknown image is not an error. Unused layers and blobs go with it.

use cri_api::v1::{RemoveImageRequest, RemoveImageResponse};

use super::spec_ref;
use crate::error::{CriError, CriResult, blocking};
use crate::service::CriService;

pub async fn remove_image(
    svc: &CriService,
    req: RemoveImageRequest,
) -> CriResult<RemoveImageResponse> {
    let reference = spec_ref(&req.image).to_string();
    if reference.is_empty() {
        return Err(CriError::InvalidArgument(
            "RemoveImage: image is empty".into(),
        ));
    }
    let images = svc.images.clone();
    // Deleting unpacked layers walks directories: keep it off the async workers.
    blocking(move || images.remove(&reference)).await??;
    Ok(RemoveImageResponse {})
}
