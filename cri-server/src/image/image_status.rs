//! ImageStatus: by id, id prefix, tag or repo digest. An unknown image is an empty answer,
//! not an error, as the CRI says.

use std::collections::HashMap;

use cri_api::v1::{ImageStatusRequest, ImageStatusResponse};

use super::{cri_image, spec_ref};
use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn image_status(
    svc: &CriService,
    req: ImageStatusRequest,
) -> CriResult<ImageStatusResponse> {
    let Some(rec) = svc.images.get(spec_ref(&req.image)) else {
        return Ok(ImageStatusResponse::default());
    };
    let mut info = HashMap::new();
    if req.verbose {
        let verbose = serde_json::json!({
            "id": rec.id,
            "manifestDigest": rec.manifest_digest,
            "platform": rec.platform,
            "wasm": rec.is_wasm(),
            "layers": rec.layers,
            "imageSpec": rec.config,
        });
        let text =
            serde_json::to_string(&verbose).map_err(|e| CriError::Internal(e.to_string()))?;
        info.insert("info".to_string(), text);
    }
    Ok(ImageStatusResponse {
        image: Some(cri_image(&rec)),
        info,
    })
}
