//! ListPodSandboxMetrics: for each ready pod, the series of its cgroup and network
//! namespace and of each running container (what `/metrics/cadvisor` shows when the
//! kubelet takes its stats from the CRI).

use cri_api::v1 as cri;
use sandbox::container::ContainerState;
use sandbox::pod::PodView;

use crate::containers::metrics::{self, Labels};
use crate::containers::{now_ns, stats};
use crate::error::{CriResult, blocking};
use crate::service::CriService;

fn pod_sandbox_metrics(svc: &CriService, pod: &PodView) -> cri::PodSandboxMetrics {
    let spec = &pod.record.spec;
    let at = now_ns();
    let cgroup_parent = &spec.cgroup_parent;
    let pod_labels = Labels {
        container: String::new(),
        id: cgroup_parent.clone(),
        image: String::new(),
        name: pod.record.id.clone(),
        namespace: spec.namespace.clone(),
        pod: spec.name.clone(),
    };
    // Without a cgroup parent from the kubelet the pod has no cgroup of its own to read.
    let pod_cgroup =
        (!cgroup_parent.is_empty()).then(|| stats::pod_cgroup_stats(cgroup_parent, &[]));
    let interfaces = stats::pod_interfaces(pod.netns().as_deref());
    let containers = svc.containers.in_pod(&pod.record.id);
    let container_metrics = containers
        .iter()
        .filter_map(|rec| {
            let ContainerState::Running { started_at_ns, .. } = svc.containers.state(rec) else {
                return None;
            };
            let sample = stats::sample(rec);
            let cgroup_path = sample
                .spec
                .as_ref()
                .and_then(|s| s.cgroup.as_ref())
                .map(|c| format!("/{}", c.path.display().to_string().trim_start_matches('/')))
                .unwrap_or_default();
            let labels = Labels {
                container: rec.name.clone(),
                id: cgroup_path,
                image: rec.image.clone(),
                name: rec.id.clone(),
                namespace: spec.namespace.clone(),
                pod: spec.name.clone(),
            };
            let (file_descriptors, sockets) = sample
                .spec
                .as_ref()
                .and_then(|s| s.cgroup.as_ref())
                .map_or((0, 0), |c| stats::open_files(&stats::cgroup_pids(&c.path)));
            let extras = metrics::Extras {
                file_descriptors,
                sockets,
                fs: sample
                    .spec
                    .as_ref()
                    .and_then(|s| stats::fs_capacity(&s.rootfs.upper)),
            };
            Some(metrics::container_metrics(
                &labels,
                &sample,
                &extras,
                started_at_ns,
            ))
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: pod.record.id.clone(),
        metrics: metrics::pod_metrics(at, &pod_labels, pod_cgroup.as_ref(), &interfaces),
        container_metrics,
    }
}

pub async fn list_pod_sandbox_metrics(
    svc: &CriService,
    _req: cri::ListPodSandboxMetricsRequest,
) -> CriResult<cri::ListPodSandboxMetricsResponse> {
    let svc = svc.clone();
    let pod_metrics = blocking(move || {
        svc.pods
            .list()
            .into_iter()
            .filter(|p| p.ready)
            .map(|p| pod_sandbox_metrics(&svc, &p))
            .collect()
    })
    .await?;
    Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
}
