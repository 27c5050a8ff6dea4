//! ListMetricDescriptors: the metric families ListPodSandboxMetrics reports (cAdvisor's
//! names and labels; see `containers::metrics`). The kubelet asks once, at startup.

use cri_api::v1::{ListMetricDescriptorsRequest, ListMetricDescriptorsResponse};

use crate::containers::metrics;
use crate::error::CriResult;

pub fn list_metric_descriptors(
    _req: ListMetricDescriptorsRequest,
) -> CriResult<ListMetricDescriptorsResponse> {
    Ok(ListMetricDescriptorsResponse {
        descriptors: metrics::descriptors(),
    })
}
