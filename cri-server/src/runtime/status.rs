//! Status: the RuntimeReady and NetworkReady conditions, the runtime handlers and their
//! features, and (verbose) the effective configuration as JSON.

use std::collections::HashMap;

use cri_api::v1::{
    RuntimeCondition, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus,
    StatusRequest, StatusResponse,
};
use sandbox::cni::{NetworkReadiness, find_network};

use crate::error::{CriError, CriResult};
use crate::service::CriService;

const RUNTIME_READY: &str = "RuntimeReady";

/// The handlers a RuntimeClass may name: the default, and `wasm`, which runs each
/// container whose entrypoint is a Wasm module in Wasmtime and the others natively.
pub const RUNTIME_HANDLERS: [&str; 2] = ["", wasm_exec::decision::WASM_RUNTIME_HANDLER];

/// Those and the configured `extra_runtime_handlers` (which run as the default does).
pub fn runtime_handlers(cfg: &crate::config::Config) -> Vec<String> {
    RUNTIME_HANDLERS
        .iter()
        .map(|h| h.to_string())
        .chain(cfg.extra_runtime_handlers.iter().cloned())
        .collect()
}
const NETWORK_READY: &str = "NetworkReady";

pub fn status(svc: &CriService, req: StatusRequest) -> CriResult<StatusResponse> {
    let cfg = &svc.config;
    let (_, readiness) = find_network(&cfg.cni.conf_dir, &cfg.cni.bin_dirs);
    let network = match readiness {
        NetworkReadiness::Ready => RuntimeCondition {
            r#type: NETWORK_READY.into(),
            status: true,
            ..Default::default()
        },
        NetworkReadiness::NotReady { reason, message } => RuntimeCondition {
            r#type: NETWORK_READY.into(),
            status: false,
            reason,
            message,
        },
    };
    let runtime = RuntimeCondition {
        r#type: RUNTIME_READY.into(),
        status: true,
        ..Default::default()
    };
    let mut info = HashMap::new();
    if req.verbose {
        let mut config = serde_json::to_value(cfg.as_ref())
            .map_err(|e| CriError::Internal(format!("serialising the config: {e}")))?;
        // critest reads containerd's spelling to find where idmapped mounts must work.
        if let Some(fields) = config.as_object_mut() {
            fields.insert("stateDir".into(), serde_json::json!(cfg.state_dir));
        }
        info.insert("config".to_string(), config.to_string());
        let pod_cidr = svc.pod_cidr.lock().expect("pod CIDR").clone();
        info.insert("podCIDR".to_string(), pod_cidr);
    }
    Ok(StatusResponse {
        status: Some(RuntimeStatus {
            conditions: vec![runtime, network],
        }),
        info,
        // Features are advertised only once they really work.
        runtime_handlers: runtime_handlers(cfg)
            .into_iter()
            .map(|name| RuntimeHandler {
                name,
                features: Some(RuntimeHandlerFeatures {
                    recursive_read_only_mounts: true,
                    user_namespaces: true,
                }),
            })
            .collect(),
        features: Some(RuntimeFeatures {
            supplemental_groups_policy: true,
            // Not yet: mount options on CRI mounts, and user namespaces for pods on the
            // host network.
            mount_options: false,
            user_namespaces_host_network: false,
        }),
    })
}
