//! The image service's domain: pulling images from registries, the content-addressed
//! store under the root dir, and unpacking layers so that they cannot escape.
//!
//! Registry configuration (mirrors, insecure hosts) is defined here because pulling is
//! the only thing that uses it; the daemon's config embeds [`RegistryConfig`].

pub mod registry_config;

pub use registry_config::{RegistryConfig, RegistryHost};
