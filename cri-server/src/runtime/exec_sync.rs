//! ExecSync: run a command in a running container's namespaces and cgroup, with the
//! request's timeout enforced by killing it, and its output capped.

use std::time::Duration;

use cri_api::v1::{ExecSyncRequest, ExecSyncResponse};
use sandbox::container::{self as ctr, ContainerState};

use crate::containers::wasm;

use crate::error::{CriError, CriResult, blocking};
use crate::service::CriService;

pub async fn exec_sync(svc: &CriService, req: ExecSyncRequest) -> CriResult<ExecSyncResponse> {
    if req.cmd.is_empty() {
        return Err(CriError::InvalidArgument("ExecSync needs a command".into()));
    }
    let rec = svc.containers.get(&req.container_id)?;
    let monitor = svc.containers.monitor().clone();
    let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
    let out = blocking(move || -> CriResult<ctr::ExecOutput> {
        if !matches!(ctr::state(&rec.dir)?, ContainerState::Running { .. }) {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let request = wasm::exec_request(&rec, req.cmd)?;
        Ok(ctr::exec_sync(&monitor, &rec.dir, &request, timeout)?)
    })
    .await??;
    Ok(ExecSyncResponse {
        stdout: out.stdout,
        stderr: out.stderr,
        exit_code: out.exit_code,
    })
}
