//! PodSandboxStats and ListPodSandboxStats: pod-level CPU, memory, process counts and
//! network with the stats of each of the pod's containers.

use cri_api::v1 as cri;
use sandbox::pod::PodView;

use crate::containers::stats;
use crate::error::{CriResult, blocking};
use crate::service::CriService;

fn pod_stats(svc: &CriService, pod: &PodView) -> cri::PodSandboxStats {
    let rates = &svc.containers.cpu_rates;
    let containers = svc
        .containers
        .in_pod(&pod.record.id)
        .iter()
        .map(|r| stats::container_stats(rates, r))
        .collect();
    let spec = &pod.record.spec;
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: pod.record.id.clone(),
            metadata: Some(cri::PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: spec.attempt,
            }),
            labels: spec.labels.clone().into_iter().collect(),
            annotations: spec.annotations.clone().into_iter().collect(),
        }),
        linux: Some(stats::pod_linux_stats(
            rates,
            &pod.record.id,
            &spec.cgroup_parent,
            pod.netns().as_deref(),
            containers,
        )),
        windows: None,
    }
}

pub async fn pod_sandbox_stats(
    svc: &CriService,
    req: cri::PodSandboxStatsRequest,
) -> CriResult<cri::PodSandboxStatsResponse> {
    let pod = svc.pods.status(&req.pod_sandbox_id)?;
    let svc = svc.clone();
    let s = blocking(move || pod_stats(&svc, &pod)).await?;
    Ok(cri::PodSandboxStatsResponse { stats: Some(s) })
}

pub async fn list_pod_sandbox_stats(
    svc: &CriService,
    req: cri::ListPodSandboxStatsRequest,
) -> CriResult<cri::ListPodSandboxStatsResponse> {
    let filter = req.filter.unwrap_or_default();
    let svc = svc.clone();
    let stats = blocking(move || {
        svc.pods
            .list()
            .into_iter()
            .filter(|p| filter.id.is_empty() || p.record.id.starts_with(&filter.id))
            .filter(|p| {
                filter
                    .label_selector
                    .iter()
                    .all(|(k, v)| p.record.spec.labels.get(k) == Some(v))
            })
            .map(|p| pod_stats(&svc, &p))
            .collect()
    })
    .await?;
    Ok(cri::ListPodSandboxStatsResponse { stats })
}
