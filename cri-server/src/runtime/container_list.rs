//! ListContainers: filters by id (or id prefix), state, pod sandbox and labels.

use cri_api::v1 as cri;
use sandbox::container::ContainerState;

use crate::error::{CriResult, blocking};
use crate::service::CriService;

pub async fn list_containers(
    svc: &CriService,
    req: cri::ListContainersRequest,
) -> CriResult<cri::ListContainersResponse> {
    let containers = svc.containers.clone();
    let filter = req.filter.unwrap_or_default();
    blocking(move || {
        let mut out = Vec::new();
        for rec in containers.list() {
            if !filter.id.is_empty() && !rec.id.starts_with(&filter.id) {
                continue;
            }
            if !filter.pod_sandbox_id.is_empty() && !rec.pod_id.starts_with(&filter.pod_sandbox_id)
            {
                continue;
            }
            if !filter
                .label_selector
                .iter()
                .all(|(k, v)| rec.labels.get(k) == Some(v))
            {
                continue;
            }
            let state = state_code(&containers.state(&rec));
            if let Some(want) = &filter.state
                && want.state != state
            {
                continue;
            }
            out.push(cri::Container {
                id: rec.id.clone(),
                pod_sandbox_id: rec.pod_id.clone(),
                metadata: Some(cri::ContainerMetadata {
                    name: rec.name.clone(),
                    attempt: rec.attempt,
                }),
                image: Some(cri::ImageSpec {
                    image: rec.image.clone(),
                    ..Default::default()
                }),
                image_ref: rec.image_ref.clone(),
                image_id: rec.image_id.clone(),
                state,
                created_at: rec.created_at_ns,
                labels: rec.labels.clone().into_iter().collect(),
                annotations: rec.annotations.clone().into_iter().collect(),
            });
        }
        cri::ListContainersResponse { containers: out }
    })
    .await
}

pub fn state_code(state: &ContainerState) -> i32 {
    (match state {
        ContainerState::Created { .. } => cri::ContainerState::ContainerCreated,
        ContainerState::Running { .. } => cri::ContainerState::ContainerRunning,
        ContainerState::Exited(_) => cri::ContainerState::ContainerExited,
    }) as i32
}
