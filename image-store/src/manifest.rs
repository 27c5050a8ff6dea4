//! Manifests, indexes and image configs: the subset berth reads, parsed strictly. A
//! document must be unambiguously an index or a manifest (containerd GHSA-5j5w-g665-5m35:
//! the same bytes must not mean different things depending on a Content-Type header).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest;
use crate::error::{Error, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// What we ask registries for, in order of preference.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

pub const WASM_LAYER_TYPES: &[&str] = &[
    "application/vnd.wasm.content.layer.v1+wasm",
    "application/wasm",
    "application/vnd.bytecodealliance.wasm.component.layer.v0+wasm",
];

/// Largest manifest, index or config we read into memory.
pub const MAX_DOCUMENT: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn is_wasm(&self) -> bool {
        matches!(self.architecture.as_str(), "wasm" | "wasm32")
            && (self.os.starts_with("wasi") || self.os == "wasm")
    }
    fn is_linux_amd64(&self) -> bool {
        self.os == "linux" && self.architecture == "amd64"
    }
}

/// Which platform to take from an index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlatformChoice {
    /// linux/amd64, or wasi/wasm when the index has no linux/amd64 image.
    #[default]
    Native,
    /// wasi/wasm first, linux/amd64 when there is none.
    PreferWasm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerFormat {
    /// A tar stream (gzip, zstd or plain), unpacked into a directory.
    Tar,
    /// A Wasm module or component, kept as a blob.
    Wasm,
}

pub fn layer_format(media_type: &str) -> Result<LayerFormat> {
    if WASM_LAYER_TYPES.contains(&media_type) {
        return Ok(LayerFormat::Wasm);
    }
    let tar = media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.");
    if tar && media_type.contains(".tar") {
        Ok(LayerFormat::Tar)
    } else {
        Err(Error::Unsupported(format!(
            "layer media type {media_type:?} is not supported"
        )))
    }
}

/// A parsed manifest document.
#[derive(Debug)]
pub enum Document {
    Index(Vec<Descriptor>),
    Image(ImageManifest),
}

#[derive(Debug, Clone)]
pub struct ImageManifest {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u32>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    #[serde(rename = "fsLayers")]
    fs_layers: Option<serde_json::Value>,
}

pub fn parse_document(bytes: &[u8], what: &str) -> Result<Document> {
    let bad = |m: String| Error::Unsupported(format!("{what}: {m}"));
    let raw: Raw =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
    if raw.fs_layers.is_some() || raw.schema_version == Some(1) {
        return Err(bad("Docker schema 1 manifests are not supported".into()));
    }
    if raw.schema_version != Some(2) {
        return Err(bad(format!(
            "schemaVersion {:?} is not 2",
            raw.schema_version
        )));
    }
    let mt = raw.media_type.as_deref();
    match (raw.manifests, raw.config, raw.layers) {
        (Some(m), None, None) => {
            if mt.is_some_and(|t| t != OCI_INDEX && t != DOCKER_LIST) {
                return Err(bad(format!("an index with mediaType {mt:?}")));
            }
            for d in &m {
                digest::validate(&d.digest)?;
            }
            Ok(Document::Index(m))
        }
        (None, Some(config), Some(layers)) => {
            if mt.is_some_and(|t| t != OCI_MANIFEST && t != DOCKER_MANIFEST) {
                return Err(bad(format!("a manifest with mediaType {mt:?}")));
            }
            digest::validate(&config.digest)?;
            for l in &layers {
                digest::validate(&l.digest)?;
            }
            Ok(Document::Image(ImageManifest { config, layers }))
        }
        _ => Err(bad(
            "ambiguous document: neither only `manifests` nor `config` and `layers`".into(),
        )),
    }
}

/// Picks the image for this node from an index.
pub fn select_platform(entries: &[Descriptor], choice: PlatformChoice) -> Option<&Descriptor> {
    let linux = || {
        let mut c = entries
            .iter()
            .filter(|d| d.platform.as_ref().is_some_and(Platform::is_linux_amd64));
        let first = c.clone().next();
        // Prefer the baseline variant when several amd64 variants (v2, v3) are listed.
        c.find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.variant.as_deref().is_none_or(|v| v == "v1"))
        })
        .or(first)
    };
    let wasm = || {
        entries
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(Platform::is_wasm))
    };
    match choice {
        PlatformChoice::Native => linux().or_else(wasm),
        PlatformChoice::PreferWasm => wasm().or_else(linux),
    }
}

/// The fields of an image config berth uses; the whole document is kept as JSON as well.
#[derive(Debug, Deserialize)]
pub struct ConfigDoc {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

impl ConfigDoc {
    pub fn parse(bytes: &[u8]) -> Result<(Self, serde_json::Value)> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::Unsupported(format!("image config is not JSON: {e}")))?;
        let doc: ConfigDoc = serde_json::from_value(value.clone())
            .map_err(|e| Error::Unsupported(format!("image config: {e}")))?;
        Ok((doc, value))
    }

    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }

    pub fn user(&self) -> &str {
        self.config
            .as_ref()
            .and_then(|c| c.user.as_deref())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(os: &str, arch: &str, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{}", hex::encode([n; 32])),
            size: 1,
            platform: Some(Platform {
                os: os.into(),
                architecture: arch.into(),
                variant: None,
            }),
            annotations: Default::default(),
        }
    }

    #[test]
    fn picks_linux_amd64_or_wasm() {
        let idx = vec![
            d("linux", "arm64", 1),
            d("linux", "amd64", 2),
            d("wasi", "wasm", 3),
        ];
        assert_eq!(
            select_platform(&idx, PlatformChoice::Native).unwrap(),
            &idx[1]
        );
        assert_eq!(
            select_platform(&idx, PlatformChoice::PreferWasm).unwrap(),
            &idx[2]
        );
        let only_wasm = vec![d("wasip1", "wasm", 4)];
        assert_eq!(
            select_platform(&only_wasm, PlatformChoice::Native).unwrap(),
            &only_wasm[0]
        );
        assert!(select_platform(&[d("linux", "s390x", 5)], PlatformChoice::Native).is_none());
    }

    #[test]
    fn ambiguous_documents_are_refused() {
        let dg = format!("sha256:{}", "0".repeat(64));
        let both = format!(
            r#"{{"schemaVersion":2,"manifests":[],"config":{{"digest":"{dg}","size":1}},"layers":[]}}"#
        );
        assert!(parse_document(both.as_bytes(), "m").is_err());
        let mislabelled = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","config":{{"digest":"{dg}","size":1}},"layers":[]}}"#
        );
        assert!(parse_document(mislabelled.as_bytes(), "m").is_err());
        let schema1 = r#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(matches!(
            parse_document(schema1.as_bytes(), "m"),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn layer_formats() {
        assert_eq!(
            layer_format("application/vnd.oci.image.layer.v1.tar+zstd").unwrap(),
            LayerFormat::Tar
        );
        assert_eq!(
            layer_format("application/vnd.docker.image.rootfs.diff.tar.gzip").unwrap(),
            LayerFormat::Tar
        );
        assert_eq!(layer_format("application/wasm").unwrap(), LayerFormat::Wasm);
        assert!(layer_format("text/plain").is_err());
    }
}
