//! `CriService` is the state the handlers share, and the two tonic trait impls that route
//! each RPC to its handler (one file per RPC under `runtime/` and `image/`). Every RPC
//! passes through `respond`, so errors are mapped and logged in one place.

use std::pin::Pin;
use std::sync::Arc;

use image_store::ImageStore;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use meta_store::MetaStore;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::error::{CriError, CriResult};
use crate::{image, runtime};

/// Shared daemon state; cheap to clone.
#[derive(Clone)]
pub struct CriService {
    pub config: Arc<Config>,
    pub meta: Arc<MetaStore>,
    /// Images: pulls, the content store, the in-memory image index.
    pub images: Arc<ImageStore>,
}

impl CriService {
    /// Builds the daemon's state from the effective config and the opened metadata store.
    pub fn new(config: Config, meta: MetaStore) -> anyhow::Result<Self> {
        let meta = Arc::new(meta);
        let images = ImageStore::open(
            &config.root_dir.join("images"),
            meta.clone(),
            config.registry.clone(),
            image_store::Limits::default(),
        )?;
        Ok(Self {
            config: Arc::new(config),
            meta,
            images,
        })
    }
}

/// Maps a handler's result to the gRPC answer, logging failures once.
fn respond<T>(rpc: &'static str, result: CriResult<T>) -> Result<Response<T>, Status> {
    match result {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            match &e {
                CriError::Internal(_) => tracing::warn!(rpc, error = %e, "RPC failed"),
                CriError::Unimplemented(_) => tracing::debug!(rpc, "RPC not implemented"),
                _ => tracing::debug!(rpc, error = %e, "RPC refused"),
            }
            Err(e.into())
        }
    }
}

/// An RPC berth does not serve yet: UNIMPLEMENTED, naming it, never a fake success.
fn not_yet<T>(rpc: &'static str) -> Result<Response<T>, Status> {
    respond(rpc, Err(CriError::Unimplemented(rpc)))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(
        &self,
        r: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        respond("Version", runtime::version::version(self, r.into_inner()))
    }

    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        respond(
            "RunPodSandbox",
            runtime::sandbox_run::run_pod_sandbox(self, r.into_inner()).await,
        )
    }

    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        respond(
            "StopPodSandbox",
            runtime::sandbox_stop::stop_pod_sandbox(self, r.into_inner()).await,
        )
    }

    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        respond(
            "RemovePodSandbox",
            runtime::sandbox_remove::remove_pod_sandbox(self, r.into_inner()).await,
        )
    }

    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        respond(
            "PodSandboxStatus",
            runtime::sandbox_status::pod_sandbox_status(self, r.into_inner()).await,
        )
    }

    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        respond(
            "ListPodSandbox",
            runtime::sandbox_list::list_pod_sandbox(self, r.into_inner()).await,
        )
    }

    async fn create_container(
        &self,
        _r: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        not_yet("CreateContainer")
    }

    async fn start_container(
        &self,
        _r: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        not_yet("StartContainer")
    }

    async fn stop_container(
        &self,
        _r: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        not_yet("StopContainer")
    }

    async fn remove_container(
        &self,
        _r: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        not_yet("RemoveContainer")
    }

    async fn list_containers(
        &self,
        _r: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        not_yet("ListContainers")
    }

    async fn container_status(
        &self,
        _r: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        not_yet("ContainerStatus")
    }

    async fn update_container_resources(
        &self,
        _r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        not_yet("UpdateContainerResources")
    }

    async fn reopen_container_log(
        &self,
        _r: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        not_yet("ReopenContainerLog")
    }

    async fn exec_sync(
        &self,
        _r: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        not_yet("ExecSync")
    }

    async fn exec(
        &self,
        _r: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        not_yet("Exec")
    }

    async fn attach(
        &self,
        _r: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        not_yet("Attach")
    }

    async fn port_forward(
        &self,
        _r: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        not_yet("PortForward")
    }

    async fn container_stats(
        &self,
        _r: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        not_yet("ContainerStats")
    }

    async fn list_container_stats(
        &self,
        _r: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        not_yet("ListContainerStats")
    }

    async fn pod_sandbox_stats(
        &self,
        _r: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        not_yet("PodSandboxStats")
    }

    async fn list_pod_sandbox_stats(
        &self,
        _r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        not_yet("ListPodSandboxStats")
    }

    async fn update_runtime_config(
        &self,
        _r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        not_yet("UpdateRuntimeConfig")
    }

    async fn status(
        &self,
        r: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        respond("Status", runtime::status::status(self, r.into_inner()))
    }

    async fn checkpoint_container(
        &self,
        _r: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        not_yet("CheckpointContainer")
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _r: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        not_yet("GetContainerEvents")
    }

    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        not_yet("ListMetricDescriptors")
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        not_yet("ListPodSandboxMetrics")
    }

    async fn runtime_config(
        &self,
        r: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        respond(
            "RuntimeConfig",
            runtime::runtime_config::runtime_config(self, r.into_inner()),
        )
    }
}

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(
        &self,
        r: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        respond(
            "ListImages",
            image::image_list::list_images(self, r.into_inner()).await,
        )
    }

    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        respond(
            "ImageStatus",
            image::image_status::image_status(self, r.into_inner()).await,
        )
    }

    async fn pull_image(
        &self,
        r: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        respond(
            "PullImage",
            image::image_pull::pull_image(self, r.into_inner()).await,
        )
    }

    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        respond(
            "RemoveImage",
            image::image_remove::remove_image(self, r.into_inner()).await,
        )
    }

    async fn image_fs_info(
        &self,
        r: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        respond(
            "ImageFsInfo",
            image::image_fs_info::image_fs_info(self, r.into_inner()).await,
        )
    }
}
