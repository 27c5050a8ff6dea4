//! ImageService handlers, one file per RPC, over the `image-store` crate.

pub mod image_fs_info;
pub mod image_list;
pub mod image_pull;
pub mod image_remove;
pub mod image_status;
pub mod import;
pub mod stream_images;

use cri_api::v1 as cri;
use image_store::ImageRecord;

/// An image record as the CRI shows it.
pub(crate) fn cri_image(r: &ImageRecord) -> cri::Image {
    cri::Image {
        id: r.id.clone(),
        repo_tags: r.repo_tags.clone(),
        repo_digests: r.repo_digests.clone(),
        size: r.size,
        uid: r.user.uid.map(|value| cri::Int64Value { value }),
        username: r.user.username.clone(),
        spec: Some(cri::ImageSpec {
            image: r.id.clone(),
            ..Default::default()
        }),
        pinned: false,
    }
}

/// The image a request's ImageSpec names, or "" when it names none.
pub(crate) fn spec_ref(spec: &Option<cri::ImageSpec>) -> &str {
    spec.as_ref().map(|s| s.image.as_str()).unwrap_or_default()
}
