//! What the store remembers about an image, in the metadata store's "images" table.

use serde::{Deserialize, Serialize};

use crate::manifest::{LayerFormat, Platform};
use crate::user::ImageUser;

/// One image: keyed by its id, the config digest (as containerd does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// `sha256:<hex>` of the config blob.
    pub id: String,
    /// `registry/repo:tag`, canonical names (never a mirror's).
    pub repo_tags: Vec<String>,
    /// `registry/repo@sha256:<digest the name resolved to>`.
    pub repo_digests: Vec<String>,
    /// Bytes of the image's content as distributed (config + layers).
    pub size: u64,
    /// The config's `User`, parsed.
    pub user: ImageUser,
    pub platform: Platform,
    /// Digest of the platform-specific image manifest.
    pub manifest_digest: String,
    /// The image config blob, parsed; ImageStatus verbose shows it.
    pub config: serde_json::Value,
    pub layers: Vec<LayerRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as distributed.
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub format: LayerFormat,
    /// sha256 of the uncompressed content.
    pub diff_id: String,
    /// For tar layers: the chain ID naming its unpacked directory. Wasm layers are kept as
    /// blobs (`ImageStore::blob_path(digest)`) instead.
    pub chain_id: Option<String>,
    /// Disk use of the unpacked directory (or blob).
    pub usage: DiskUsage,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub bytes: u64,
    pub inodes: u64,
}

impl ImageRecord {
    /// A Wasm image: its platform is wasi/wasm, or it carries Wasm layers.
    pub fn is_wasm(&self) -> bool {
        self.platform.is_wasm() || self.layers.iter().any(|l| l.format == LayerFormat::Wasm)
    }
}

impl meta_store::Record for ImageRecord {
    const TABLE: &'static str = "images";
    const VERSION: u32 = 1;
}
