//! PullImage. The answer's image_ref is the image id (config digest), as containerd's.

use cri_api::v1::{PullImageRequest, PullImageResponse};
use image_store::{Credentials, PlatformChoice, PullRequest};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn pull_image(svc: &CriService, req: PullImageRequest) -> CriResult<PullImageResponse> {
    let spec = req.image.unwrap_or_default();
    if spec.image.is_empty() {
        return Err(CriError::InvalidArgument(
            "PullImage: image is empty".into(),
        ));
    }
    let credentials = match &req.auth {
        Some(a) => Credentials::from_auth_config(
            &a.username,
            &a.password,
            &a.auth,
            &a.identity_token,
            &a.registry_token,
        )?,
        None => None,
    };
    // A Wasm runtime handler takes the wasi/wasm image of a multi-platform index.
    let handler = spec.runtime_handler.to_ascii_lowercase();
    let platform = if handler.contains("wasm") || handler.contains("wasi") {
        PlatformChoice::PreferWasm
    } else {
        PlatformChoice::Native
    };
    let pulled = svc
        .images
        .pull(PullRequest {
            reference: spec.image,
            credentials,
            platform,
        })
        .await?;
    Ok(PullImageResponse {
        image_ref: pulled.image.id.clone(),
    })
}
