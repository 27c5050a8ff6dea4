//! Exec: validate the request and return the single-use streaming URL the client then
//! connects to (the session itself is the streaming server's).

use cri_api::v1::{ExecRequest, ExecResponse};

use crate::error::CriResult;
use crate::service::CriService;

pub async fn exec(svc: &CriService, req: ExecRequest) -> CriResult<ExecResponse> {
    let url = svc
        .streaming
        .exec(streaming::ExecRequest {
            container_id: req.container_id,
            cmd: req.cmd,
            tty: req.tty,
            stdin: req.stdin,
            stdout: req.stdout,
            stderr: req.stderr,
        })
        .await?;
    Ok(ExecResponse { url })
}
