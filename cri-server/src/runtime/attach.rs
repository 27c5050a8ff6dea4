//! Attach: validate the request and return the single-use streaming URL.

use cri_api::v1::{AttachRequest, AttachResponse};

use crate::error::CriResult;
use crate::service::CriService;

pub async fn attach(svc: &CriService, req: AttachRequest) -> CriResult<AttachResponse> {
    let url = svc
        .streaming
        .attach(streaming::AttachRequest {
            container_id: req.container_id,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        })
        .await?;
    Ok(AttachResponse { url })
}
