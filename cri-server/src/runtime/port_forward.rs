//! PortForward: check the pod and return the single-use streaming URL. Each forwarded
//! connection is dialed inside the pod's network namespace (`crate::daemon_streaming`).

use cri_api::v1::{PortForwardRequest, PortForwardResponse};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

pub async fn port_forward(
    svc: &CriService,
    req: PortForwardRequest,
) -> CriResult<PortForwardResponse> {
    let ports = req
        .port
        .iter()
        .map(|&p| {
            u16::try_from(p)
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| CriError::InvalidArgument(format!("port {p} is not a TCP port")))
        })
        .collect::<CriResult<Vec<u16>>>()?;
    let url = svc
        .streaming
        .port_forward(streaming::PortForwardRequest {
            pod_id: req.pod_sandbox_id,
            ports,
        })
        .await?;
    Ok(PortForwardResponse { url })
}
