//! The Kubernetes Container Runtime Interface, v1, as the kubelet of the Kubernetes release
//! in `proto/VERSION` speaks it: every message, the RuntimeService and ImageService
//! servers (berth implements them) and clients (tests and tools use them).
//!
//! Generated at build time from the upstream `api.proto` of `k8s.io/cri-api`, kept in
//! `proto/` with its license; `refresh.sh` takes a newer release's file from the Go module
//! proxy. (The k8s-cri crate stops at Kubernetes 1.32; prost drops the fields it does not
//! know, so a kubelet's newer fields would be silently lost.)

/// `runtime.v1`: the CRI.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("runtime.v1");
}

/// The k8s.io/cri-api release the bindings come from, e.g. `v0.37.2`.
pub fn version() -> &'static str {
    include_str!("../proto/VERSION").trim()
}
