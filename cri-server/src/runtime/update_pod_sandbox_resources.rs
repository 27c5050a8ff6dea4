//! UpdatePodSandboxResources (in-place pod resize, Kubernetes 1.33+): the pod-level
//! limits — the containers' sum plus the pod overhead — written to the pod's cgroup, the
//! kubelet's cgroup parent that holds all the pod's containers. The kubelet has usually
//! written them already (it calls this after resizing the pod cgroup); writing the same
//! values again is harmless, and a client other than the kubelet gets them applied.

use cri_api::v1::{
    LinuxContainerResources, UpdatePodSandboxResourcesRequest, UpdatePodSandboxResourcesResponse,
};
use sandbox::container::cgroup::{Cgroup, Hierarchy, Resources};

use crate::containers::spec::resources;
use crate::error::{CriError, CriResult, blocking};
use crate::service::CriService;

/// The pod's limits: the containers' resources plus the overhead. A dimension the request
/// leaves unlimited stays unlimited whatever the overhead.
pub fn pod_resources(
    containers: Option<&LinuxContainerResources>,
    overhead: Option<&LinuxContainerResources>,
) -> Resources {
    let sum = resources(containers);
    let extra = resources(overhead);
    let add = |a: Option<i64>, b: Option<i64>| a.map(|a| a.saturating_add(b.unwrap_or(0)));
    Resources {
        cpu_shares: sum
            .cpu_shares
            .map(|s| s.saturating_add(extra.cpu_shares.unwrap_or(0))),
        cpu_quota_us: add(sum.cpu_quota_us, extra.cpu_quota_us),
        cpu_period_us: sum.cpu_period_us,
        memory_limit_bytes: add(sum.memory_limit_bytes, extra.memory_limit_bytes),
        memory_swap_limit_bytes: add(sum.memory_swap_limit_bytes, extra.memory_swap_limit_bytes),
        pids_limit: None,
    }
}

pub async fn update_pod_sandbox_resources(
    svc: &CriService,
    req: UpdatePodSandboxResourcesRequest,
) -> CriResult<UpdatePodSandboxResourcesResponse> {
    let pod = svc.pods.status(&req.pod_sandbox_id)?;
    let parent = pod.record.spec.cgroup_parent.clone();
    if parent.is_empty() {
        return Err(CriError::FailedPrecondition(format!(
            "pod {} has no cgroup parent of its own (its containers share berth's default \
             cgroup), so it has no pod-level limits to update",
            pod.record.id
        )));
    }
    let res = pod_resources(req.resources.as_ref(), req.overhead.as_ref());
    blocking(move || {
        let rel =
            sandbox::pod::cgroup::relative_path(&parent, "").map_err(CriError::InvalidArgument)?;
        Cgroup::at(&Hierarchy::detect(), &rel)
            .create(&res)
            .map_err(|e| CriError::InvalidArgument(format!("updating the pod cgroup: {e}")))
    })
    .await??;
    Ok(UpdatePodSandboxResourcesResponse {})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overhead_is_added_to_limited_dimensions_only() {
        let containers = LinuxContainerResources {
            cpu_shares: 512,
            cpu_quota: 50_000,
            cpu_period: 100_000,
            memory_limit_in_bytes: 100 << 20,
            ..Default::default()
        };
        let overhead = LinuxContainerResources {
            cpu_shares: 10,
            cpu_quota: 5_000,
            memory_limit_in_bytes: 10 << 20,
            memory_swap_limit_in_bytes: 10 << 20,
            ..Default::default()
        };
        let r = pod_resources(Some(&containers), Some(&overhead));
        assert_eq!(r.cpu_shares, Some(522));
        assert_eq!(r.cpu_quota_us, Some(55_000));
        assert_eq!(r.cpu_period_us, Some(100_000));
        assert_eq!(r.memory_limit_bytes, Some(110 << 20));
        // The containers set no swap limit: the overhead does not make one.
        assert_eq!(r.memory_swap_limit_bytes, None);
        assert_eq!(pod_resources(None, Some(&overhead)), Resources::default());
    }
}
