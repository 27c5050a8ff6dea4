//! The berth daemon: configuration, the CRI gRPC services on a unix socket, and the one
//! place where domain errors become gRPC status codes. The CRI types stay in this crate;
//! the domain crates (`image-store`, `sandbox`, `wasm-exec`, `meta-store`) never see them.

pub mod client;
pub mod config;
pub mod containers;
pub mod daemon_streaming;
pub mod deadline;
pub mod error;
pub mod image;
pub mod logging;
pub mod metadata;
pub mod runtime;
pub mod server;
pub mod service;
