//! The daemon's life: directories, claiming the socket, serving both CRI services, and a
//! graceful stop on SIGTERM/SIGINT (stop accepting, finish in-flight calls, remove the
//! socket).

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use cri_api::v1::image_service_server::ImageServiceServer;
use cri_api::v1::runtime_service_server::RuntimeServiceServer;
use meta_store::MetaStore;
use tokio::net::UnixListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::logging::RpcLogLayer;
use crate::service::CriService;

/// Largest gRPC message either way; ListContainers on a full node is big.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// How long in-flight calls may take to finish after SIGTERM/SIGINT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

const SOCKET_MODE: u32 = 0o660;
const SOCKET_DIR_MODE: u32 = 0o750;
/// Our data is nobody else's business (CVE-2024-25621: world-traversable state dirs).
const PRIVATE_DIR_MODE: u32 = 0o700;

pub async fn serve(config: Config) -> anyhow::Result<()> {
    // Before the socket exists: a SIGTERM that arrives as soon as clients can connect
    // must already find our handler.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let socket_dir = config
        .socket
        .parent()
        .context("the socket path has no parent directory")?
        .to_path_buf();
    ensure_dir(&socket_dir, SOCKET_DIR_MODE)?;
    for dir in [&config.root_dir, &config.state_dir] {
        // The state dir may hold the socket (the default); it keeps the socket dir's mode.
        let mode = if *dir == socket_dir {
            SOCKET_DIR_MODE
        } else {
            PRIVATE_DIR_MODE
        };
        ensure_dir(dir, mode)?;
    }
    claim_socket(&config.socket).await?;

    let meta = MetaStore::open(&config.meta_store_path())?;
    let listener = UnixListener::bind(&config.socket)
        .with_context(|| format!("binding {}", config.socket.display()))?;
    std::fs::set_permissions(&config.socket, std::fs::Permissions::from_mode(SOCKET_MODE))?;

    let socket = config.socket.clone();
    let service = CriService::new(config, meta)?;
    tracing::info!(
        socket = %socket.display(),
        version = env!("CARGO_PKG_VERSION"),
        "berth is serving the CRI"
    );
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel();
    let stop = async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "shutting down: no new calls, finishing in-flight ones"
        );
        let _ = stopping_tx.send(());
    };
    let serving = tonic::transport::Server::builder()
        .layer(RpcLogLayer)
        .layer(crate::deadline::DeadlineLayer)
        .add_service(
            RuntimeServiceServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .add_service(
            ImageServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_SIZE)
                .max_encoding_message_size(MAX_MESSAGE_SIZE),
        )
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), stop);
    // A client that never closes its connection must not hold the daemon hostage.
    let grace_expired = async {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = serving => r,
        _ = grace_expired => {
            tracing::warn!(grace_s = SHUTDOWN_GRACE.as_secs(), "in-flight calls did not finish in time; stopping anyway");
            Ok(())
        }
    };
    // Remove the socket even when serving failed, so the next start finds no stale file.
    if let Err(e) = std::fs::remove_file(&socket)
        && e.kind() != ErrorKind::NotFound
    {
        tracing::warn!(socket = %socket.display(), error = %e, "could not remove the socket");
    }
    result.context("serving the CRI")?;
    tracing::info!("berth stopped");
    Ok(())
}

fn ensure_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", dir.display()))
}

/// Refuses to start when a live server answers on the socket; replaces a stale one.
async fn claim_socket(socket: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(socket) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", socket.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; refusing to replace it",
            socket.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(_) => {
            let who = describe_server(socket).await;
            bail!(
                "{who} already answers on {}; refusing to start a second one",
                socket.display()
            )
        }
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %socket.display(), "replacing a stale socket");
            std::fs::remove_file(socket)
                .with_context(|| format!("removing the stale socket {}", socket.display()))
        }
        Err(e) => Err(e).with_context(|| format!("probing {}", socket.display())),
    }
}

/// Names whatever answers on the socket, for the refusal message.
async fn describe_server(socket: &Path) -> String {
    let ask = async {
        let channel = crate::client::connect(socket).await.ok()?;
        let v = crate::client::runtime(channel)
            .version(cri_api::v1::VersionRequest::default())
            .await
            .ok()?
            .into_inner();
        Some(format!("{} {}", v.runtime_name, v.runtime_version))
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Some(who)) => who,
        _ => "a server".to_string(),
    }
}
