//! The image service's domain: pulling images from registries, the content-addressed
//! store under the root dir, and unpacking layers so that they cannot escape.
//!
//! Registry configuration (mirrors, insecure hosts) is defined here because pulling is
//! the only thing that uses it; the daemon's config embeds [`RegistryConfig`].

pub mod digest;
pub mod error;
mod import;
mod ingest;
pub mod manifest;
mod pull;
pub mod record;
pub mod reference;
pub mod registry_config;
mod store;
pub mod unpack;
pub mod user;

pub use error::{Error, Result};
pub use manifest::{LayerFormat, Platform, PlatformChoice};
pub use pull::{Credentials, PullRequest, Pulled};
pub use record::{DiskUsage, ImageRecord, LayerRecord};
pub use reference::ImageRef;
pub use registry_config::{RegistryConfig, RegistryHost};
pub use store::{Collected, FsUsage, ImageStore, LayerUsers};
pub use unpack::Limits;
pub use user::{ImageUser, parse_user};
