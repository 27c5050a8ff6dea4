//! ImageFsInfo: the image store's own directory and what it uses; the kubelet measures
//! capacity itself on `fs_id.mountpoint`.

use std::time::{SystemTime, UNIX_EPOCH};

use cri_api::v1::{
    FilesystemIdentifier, FilesystemUsage, ImageFsInfoRequest, ImageFsInfoResponse, UInt64Value,
};

use crate::error::{CriResult, blocking};
use crate::service::CriService;

pub async fn image_fs_info(
    svc: &CriService,
    _req: ImageFsInfoRequest,
) -> CriResult<ImageFsInfoResponse> {
    let images = svc.images.clone();
    let usage = blocking(move || images.fs_usage()).await??;
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or_default();
    Ok(ImageFsInfoResponse {
        image_filesystems: vec![FilesystemUsage {
            timestamp,
            fs_id: Some(FilesystemIdentifier {
                mountpoint: usage.mountpoint.display().to_string(),
            }),
            used_bytes: Some(UInt64Value {
                value: usage.used_bytes,
            }),
            inodes_used: Some(UInt64Value {
                value: usage.inodes_used,
            }),
        }],
        container_filesystems: Vec::new(),
    })
}
