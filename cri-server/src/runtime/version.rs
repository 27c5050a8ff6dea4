//! Version: who we are and which CRI version we speak.

use cri_api::v1::{VersionRequest, VersionResponse};

use crate::error::CriResult;
use crate::service::CriService;

pub const RUNTIME_NAME: &str = "berth";
pub const RUNTIME_API_VERSION: &str = "v1";
/// The kubelet's CRI client version this answer describes (the field is historical).
const KUBE_API_VERSION: &str = "0.1.0";

pub fn version(_svc: &CriService, _req: VersionRequest) -> CriResult<VersionResponse> {
    Ok(VersionResponse {
        version: KUBE_API_VERSION.to_string(),
        runtime_name: RUNTIME_NAME.to_string(),
        runtime_version: env!("CARGO_PKG_VERSION").to_string(),
        runtime_api_version: RUNTIME_API_VERSION.to_string(),
    })
}
