//! ContainerStatus: the record plus the state the monitor recorded; reasons as the kubelet
//! expects them (Completed, Error, OOMKilled).

use std::collections::HashMap;

use cri_api::v1 as cri;
use sandbox::container::ContainerState;

use crate::containers::{ContainerRecord, wasm};
use crate::error::{CriResult, blocking};
use crate::service::CriService;

pub async fn container_status(
    svc: &CriService,
    req: cri::ContainerStatusRequest,
) -> CriResult<cri::ContainerStatusResponse> {
    let rec = svc.containers.get(&req.container_id)?;
    let containers = svc.containers.clone();
    let r = rec.clone();
    let state = blocking(move || {
        let mut state = containers.state(&r);
        if r.wasm
            && let ContainerState::Exited(exit) = &mut state
        {
            // The runner reports a guest over its memory limit, or a trap, through files.
            let (oom_marker, termination_log) = containers.wasm_files_of(&r.id);
            let (oom, message) = wasm::exit_facts(&oom_marker, &termination_log);
            exit.oom_killed |= oom;
            if exit.message.is_none() {
                exit.message = message;
            }
        }
        state
    })
    .await?;
    let mut info = HashMap::new();
    if req.verbose {
        let pid = match &state {
            ContainerState::Created { pid } | ContainerState::Running { pid, .. } => *pid,
            ContainerState::Exited(_) => 0,
        };
        info.insert(
            "info".to_string(),
            serde_json::json!({
                "pid": pid,
                "runtime": if rec.wasm { "wasm" } else { "native" },
                "runtimeReason": rec.runtime_reason,
                "notApplied": rec.not_applied,
                "stateDir": rec.dir,
                "record": &*rec,
            })
            .to_string(),
        );
    }
    Ok(cri::ContainerStatusResponse {
        status: Some(status_of(&rec, &state, svc.containers.started_at(&rec))),
        info,
    })
}

/// The CRI status of a container in `state`.
/// `started_at_ns` is when the process began running (0 if it never did).
pub fn status_of(
    rec: &ContainerRecord,
    state: &ContainerState,
    started_at_ns: i64,
) -> cri::ContainerStatus {
    let mut s = cri::ContainerStatus {
        id: rec.id.clone(),
        metadata: Some(cri::ContainerMetadata {
            name: rec.name.clone(),
            attempt: rec.attempt,
        }),
        created_at: rec.created_at_ns,
        image: Some(cri::ImageSpec {
            image: rec.image.clone(),
            ..Default::default()
        }),
        image_ref: rec.image_ref.clone(),
        image_id: rec.image_id.clone(),
        labels: rec.labels.clone().into_iter().collect(),
        annotations: rec.annotations.clone().into_iter().collect(),
        log_path: rec.log_path.clone(),
        mounts: rec
            .mounts
            .iter()
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: m.propagation,
                image: m.image.as_ref().map(|i| cri::ImageSpec {
                    image: i.image.clone(),
                    user_specified_image: i.user_specified_image.clone(),
                    image_ref: i.image_ref.clone(),
                    ..Default::default()
                }),
                image_sub_path: m.image_sub_path.clone(),
                ..Default::default()
            })
            .collect(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: rec.uid as i64,
                gid: rec.gid as i64,
                // As `id -G` shows them: the primary group first.
                supplemental_groups: std::iter::once(rec.gid)
                    .chain(
                        rec.additional_gids
                            .iter()
                            .copied()
                            .filter(|g| *g != rec.gid),
                    )
                    .map(i64::from)
                    .collect(),
            }),
        }),
        stop_signal: crate::containers::stop_signal_to_cri(&rec.stop_signal),
        ..Default::default()
    };
    match state {
        ContainerState::Created { .. } => {
            s.state = cri::ContainerState::ContainerCreated as i32;
        }
        ContainerState::Running { started_at_ns, .. } => {
            s.state = cri::ContainerState::ContainerRunning as i32;
            s.started_at = *started_at_ns;
        }
        ContainerState::Exited(exit) => {
            s.state = cri::ContainerState::ContainerExited as i32;
            s.started_at = started_at_ns;
            s.finished_at = exit.finished_at_ns;
            s.exit_code = exit.exit_code;
            s.reason = if exit.oom_killed {
                "OOMKilled"
            } else if exit.exit_code == 0 {
                "Completed"
            } else {
                "Error"
            }
            .to_string();
            s.message = exit.message.clone().unwrap_or_default();
        }
    }
    s
}
