//! GetContainerEvents: created, started, stopped and deleted events as they happen, for the
//! kubelet's evented PLEG. A subscriber that falls behind skips what it missed (the kubelet
//! relists then) instead of holding the daemon's memory.

use std::pin::Pin;

use cri_api::v1::{ContainerEventResponse, GetEventsRequest};
use tokio_stream::{Stream, StreamExt, wrappers::BroadcastStream};
use tonic::Status;

use crate::error::CriResult;
use crate::service::CriService;

pub type EventStream = Pin<Box<dyn Stream<Item = Result<ContainerEventResponse, Status>> + Send>>;

pub async fn get_container_events(
    svc: &CriService,
    _req: GetEventsRequest,
) -> CriResult<EventStream> {
    let events = BroadcastStream::new(svc.containers.subscribe()).filter_map(|e| match e {
        Ok(ev) => Some(Ok(ev)),
        Err(lagged) => {
            tracing::warn!(error = %lagged, "an event subscriber fell behind");
            None
        }
    });
    Ok(Box::pin(events))
}
