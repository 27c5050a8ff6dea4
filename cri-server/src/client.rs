//! A CRI client over the unix socket, for the daemon's own checks and for tests.

use std::path::Path;

use cri_api::v1::image_service_client::ImageServiceClient;
use cri_api::v1::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Connects to a CRI socket. Fails fast when nothing listens there.
pub async fn connect(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    Endpoint::from_static("http://berth.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

pub fn runtime(channel: Channel) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(channel).max_decoding_message_size(crate::server::MAX_MESSAGE_SIZE)
}

pub fn images(channel: Channel) -> ImageServiceClient<Channel> {
    ImageServiceClient::new(channel).max_decoding_message_size(crate::server::MAX_MESSAGE_SIZE)
}
