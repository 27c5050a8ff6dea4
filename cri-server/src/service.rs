//! `CriService` is the state the handlers share, and the two tonic trait impls that route
//! each RPC to its handler (one file per RPC under `runtime/` and `image/`). Every RPC
//! passes through `respond`, so errors are mapped and logged in one place.

use std::sync::Arc;

use cri_api::v1 as cri;
use cri_api::v1::image_service_server::ImageService;
use cri_api::v1::runtime_service_server::RuntimeService;
use image_store::ImageStore;
use meta_store::MetaStore;
use sandbox::pod::{PodManager, PodManagerConfig};
use sandbox::trash::Trash;
use streaming::{StreamingConfig, StreamingServer};
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::containers::Containers;
use crate::daemon_streaming::DaemonStreaming;
use crate::error::{CriError, CriResult};
use crate::runtime::list_stream::ListStream;
use crate::{image, runtime};

/// Shared daemon state; cheap to clone.
#[derive(Clone)]
pub struct CriService {
    pub config: Arc<Config>,
    pub meta: Arc<MetaStore>,
    /// Images: pulls, the content store, the in-memory image index.
    pub images: Arc<ImageStore>,
    /// Pod sandboxes.
    pub pods: Arc<PodManager>,
    /// Containers: records, lifecycle, events.
    pub containers: Arc<Containers>,
    /// The server behind the URLs Exec, Attach and PortForward return.
    pub streaming: Arc<StreamingServer>,
    /// The node's pod CIDR as the kubelet last set it (UpdateRuntimeConfig); empty: unset.
    pub pod_cidr: Arc<std::sync::Mutex<String>>,
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
        // Removed containers' and pods' directories are deleted from here in the background.
        let trash = Arc::new(Trash::open(&[
            config.state_dir.join("trash"),
            config.root_dir.join("trash"),
        ])?);
        let pods = PodManager::new(
            PodManagerConfig {
                state_dir: config.state_dir.clone(),
                cni_conf_dir: config.cni.conf_dir.clone(),
                cni_bin_dirs: config.cni.bin_dirs.clone(),
                cni_cache_dir: config.root_dir.join("cni-results"),
            },
            meta.clone(),
            trash.clone(),
        )?;
        let containers = Arc::new(Containers::open(
            meta.clone(),
            &config.state_dir,
            &config.root_dir,
            trash,
        )?);
        // Layers of containers that are not mounted right now (created, exited) must
        // survive image removal as well.
        let users = containers.clone();
        images.set_layer_users(Box::new(move || users.layers_in_use()));
        for rec in containers.list() {
            containers.watch_exit(rec);
        }
        let pods = Arc::new(pods);
        let streaming = StreamingServer::start(
            StreamingConfig::new(config.streaming.address.parse()?),
            Arc::new(DaemonStreaming {
                pods: pods.clone(),
                containers: containers.clone(),
            }),
        )?;
        Ok(Self {
            config: Arc::new(config),
            meta,
            images,
            pods,
            containers,
            streaming: Arc::new(streaming),
            pod_cidr: Arc::default(),
        })
    }
}

/// Maps a handler's result to the gRPC answer, logging failures once.
fn respond<T>(rpc: &'static str, result: CriResult<T>) -> Result<Response<T>, Status> {
    match result {
        Ok(v) => Ok(Response::new(v)),
        Err(e) => {
            // NotFound is routine (the kubelet asks after what it removed); every other
            // refusal is something an operator may need to see.
            match &e {
                CriError::Internal(_) => tracing::warn!(rpc, error = %e, "RPC failed"),
                CriError::Unimplemented(_) => {
                    tracing::warn!(rpc, error = %e, "RPC not implemented")
                }
                CriError::NotFound(_) => tracing::debug!(rpc, error = %e, "RPC refused"),
                _ => tracing::warn!(rpc, error = %e, "RPC refused"),
            }
            Err(e.into())
        }
    }
}

/// An RPC berth does not serve yet: UNIMPLEMENTED, naming it, never a fake success.
fn not_yet<T>(rpc: &'static str) -> Result<Response<T>, Status> {
    respond(rpc, Err(CriError::Unimplemented(rpc)))
}

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
        r: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        respond(
            "CreateContainer",
            runtime::container_create::create_container(self, r.into_inner()).await,
        )
    }

    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        respond(
            "StartContainer",
            runtime::container_start::start_container(self, r.into_inner()).await,
        )
    }

    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        respond(
            "StopContainer",
            runtime::container_stop::stop_container(self, r.into_inner()).await,
        )
    }

    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        respond(
            "RemoveContainer",
            runtime::container_remove::remove_container(self, r.into_inner()).await,
        )
    }

    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        respond(
            "ListContainers",
            runtime::container_list::list_containers(self, r.into_inner()).await,
        )
    }

    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        respond(
            "ContainerStatus",
            runtime::container_status::container_status(self, r.into_inner()).await,
        )
    }

    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        respond(
            "UpdateContainerResources",
            runtime::update_container_resources::update_container_resources(self, r.into_inner())
                .await,
        )
    }

    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        respond(
            "ReopenContainerLog",
            runtime::reopen_container_log::reopen_container_log(self, r.into_inner()).await,
        )
    }

    async fn exec_sync(
        &self,
        r: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        respond(
            "ExecSync",
            runtime::exec_sync::exec_sync(self, r.into_inner()).await,
        )
    }

    async fn exec(
        &self,
        r: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        respond("Exec", runtime::exec::exec(self, r.into_inner()).await)
    }

    async fn attach(
        &self,
        r: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        respond(
            "Attach",
            runtime::attach::attach(self, r.into_inner()).await,
        )
    }

    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        respond(
            "PortForward",
            runtime::port_forward::port_forward(self, r.into_inner()).await,
        )
    }

    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        respond(
            "ContainerStats",
            runtime::container_stats::container_stats(self, r.into_inner()).await,
        )
    }

    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        respond(
            "ListContainerStats",
            runtime::list_container_stats::list_container_stats(self, r.into_inner()).await,
        )
    }

    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        respond(
            "PodSandboxStats",
            runtime::pod_sandbox_stats::pod_sandbox_stats(self, r.into_inner()).await,
        )
    }

    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        respond(
            "ListPodSandboxStats",
            runtime::pod_sandbox_stats::list_pod_sandbox_stats(self, r.into_inner()).await,
        )
    }

    async fn update_runtime_config(
        &self,
        r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        respond(
            "UpdateRuntimeConfig",
            runtime::update_runtime_config::update_runtime_config(self, r.into_inner()).await,
        )
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

    type GetContainerEventsStream = runtime::container_events::EventStream;

    async fn get_container_events(
        &self,
        r: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        respond(
            "GetContainerEvents",
            runtime::container_events::get_container_events(self, r.into_inner()).await,
        )
    }

    async fn list_metric_descriptors(
        &self,
        r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        respond(
            "ListMetricDescriptors",
            runtime::list_metric_descriptors::list_metric_descriptors(r.into_inner()),
        )
    }

    async fn list_pod_sandbox_metrics(
        &self,
        r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        respond(
            "ListPodSandboxMetrics",
            runtime::list_pod_sandbox_metrics::list_pod_sandbox_metrics(self, r.into_inner()).await,
        )
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

    type StreamPodSandboxesStream = ListStream<cri::StreamPodSandboxesResponse>;

    async fn stream_pod_sandboxes(
        &self,
        r: Request<cri::StreamPodSandboxesRequest>,
    ) -> Result<Response<Self::StreamPodSandboxesStream>, Status> {
        respond(
            "StreamPodSandboxes",
            runtime::stream_pod_sandboxes::stream_pod_sandboxes(self, r.into_inner()).await,
        )
    }

    type StreamContainersStream = ListStream<cri::StreamContainersResponse>;

    async fn stream_containers(
        &self,
        r: Request<cri::StreamContainersRequest>,
    ) -> Result<Response<Self::StreamContainersStream>, Status> {
        respond(
            "StreamContainers",
            runtime::stream_containers::stream_containers(self, r.into_inner()).await,
        )
    }

    type StreamContainerStatsStream = ListStream<cri::StreamContainerStatsResponse>;

    async fn stream_container_stats(
        &self,
        r: Request<cri::StreamContainerStatsRequest>,
    ) -> Result<Response<Self::StreamContainerStatsStream>, Status> {
        respond(
            "StreamContainerStats",
            runtime::stream_container_stats::stream_container_stats(self, r.into_inner()).await,
        )
    }

    type StreamPodSandboxStatsStream = ListStream<cri::StreamPodSandboxStatsResponse>;

    async fn stream_pod_sandbox_stats(
        &self,
        r: Request<cri::StreamPodSandboxStatsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxStatsStream>, Status> {
        respond(
            "StreamPodSandboxStats",
            runtime::stream_pod_sandbox_stats::stream_pod_sandbox_stats(self, r.into_inner()).await,
        )
    }

    type StreamPodSandboxMetricsStream = ListStream<cri::StreamPodSandboxMetricsResponse>;

    async fn stream_pod_sandbox_metrics(
        &self,
        r: Request<cri::StreamPodSandboxMetricsRequest>,
    ) -> Result<Response<Self::StreamPodSandboxMetricsStream>, Status> {
        respond(
            "StreamPodSandboxMetrics",
            runtime::stream_pod_sandbox_metrics::stream_pod_sandbox_metrics(self, r.into_inner())
                .await,
        )
    }

    async fn checkpoint_pod(
        &self,
        _r: Request<cri::CheckpointPodRequest>,
    ) -> Result<Response<cri::CheckpointPodResponse>, Status> {
        not_yet("CheckpointPod")
    }

    async fn restore_pod(
        &self,
        _r: Request<cri::RestorePodRequest>,
    ) -> Result<Response<cri::RestorePodResponse>, Status> {
        not_yet("RestorePod")
    }

    async fn update_pod_sandbox_resources(
        &self,
        r: Request<cri::UpdatePodSandboxResourcesRequest>,
    ) -> Result<Response<cri::UpdatePodSandboxResourcesResponse>, Status> {
        respond(
            "UpdatePodSandboxResources",
            runtime::update_pod_sandbox_resources::update_pod_sandbox_resources(
                self,
                r.into_inner(),
            )
            .await,
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

    type StreamImagesStream = ListStream<cri::StreamImagesResponse>;

    async fn stream_images(
        &self,
        r: Request<cri::StreamImagesRequest>,
    ) -> Result<Response<Self::StreamImagesStream>, Status> {
        respond(
            "StreamImages",
            image::stream_images::stream_images(self, r.into_inner()).await,
        )
    }
}
