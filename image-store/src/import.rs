//! Importing images without a registry (air-gapped nodes): an OCI image layout directory,
//! or a `docker save` tarball (manifest.json + layer tars, gzip allowed). The content goes
//! through the same verification and store as a pull.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::BoxStream;
use serde::Deserialize;
use tokio::io::AsyncReadExt;

use crate::digest;
use crate::error::{Error, Result};
use crate::ingest::{BlobSource, Ingest, Staging};
use crate::manifest::{self, Descriptor, Document, ImageManifest, PlatformChoice};
use crate::record::ImageRecord;
use crate::reference::ImageRef;
use crate::store::ImageStore;

/// Blobs that are files: `digest → path`.
struct Files(HashMap<String, PathBuf>);

impl BlobSource for Files {
    fn fetch<'a>(
        &'a self,
        desc: &'a Descriptor,
    ) -> BoxFuture<'a, Result<BoxStream<'static, io::Result<Bytes>>>> {
        async move {
            let path = self.0.get(&desc.digest).ok_or_else(|| {
                Error::NotFound(format!("blob {} is not in the archive", desc.digest))
            })?;
            let file = tokio::fs::File::open(path).await.map_err(|e| {
                Error::NotFound(format!("blob {}: {}: {e}", desc.digest, path.display()))
            })?;
            let stream = futures_util::stream::unfold(Some(file), |file| async move {
                let mut file = file?;
                let mut buf = vec![0u8; 256 * 1024];
                match file.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        Some((Ok(Bytes::from(buf)), Some(file)))
                    }
                    Err(e) => Some((Err(e), None)),
                }
            });
            Ok(stream.boxed())
        }
        .boxed()
    }
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

impl ImageStore {
    /// Imports every image in `path`: an OCI layout directory, or a docker-archive tarball.
    pub async fn import(self: &Arc<Self>, path: &Path) -> Result<Vec<Arc<ImageRecord>>> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", path.display())))?;
        if meta.is_dir() {
            return self.import_oci_layout(path).await;
        }
        // A tarball: unpacked with our own safe unpacker into a scratch dir first.
        let staging = Staging(self.tmp_path("import"));
        std::fs::create_dir(&staging.0).map_err(|e| Error::storage("create import dir", e))?;
        let (file, dir, limits) = (path.to_path_buf(), staging.0.clone(), self.limits.clone());
        tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&file)
                .map_err(|e| Error::InvalidArgument(format!("{}: {e}", file.display())))?;
            crate::unpack::unpack(f, &dir, "import archive", &limits)
        })
        .await
        .map_err(|e| Error::Storage(format!("import: {e}")))??;
        if staging.0.join("manifest.json").exists() {
            self.import_docker_archive(&staging.0).await
        } else if staging.0.join("index.json").exists() {
            self.import_oci_layout(&staging.0).await
        } else {
            Err(Error::InvalidArgument(format!(
                "{}: neither a docker-archive (manifest.json) nor an OCI layout (index.json)",
                path.display()
            )))
        }
    }

    async fn import_oci_layout(self: &Arc<Self>, dir: &Path) -> Result<Vec<Arc<ImageRecord>>> {
        let index = read_small(&dir.join("index.json"))?;
        let Document::Index(entries) = manifest::parse_document(&index, "index.json")? else {
            return Err(Error::Unsupported(
                "index.json is not an image index".into(),
            ));
        };
        let mut files = HashMap::new();
        let blobs = dir.join("blobs/sha256");
        for e in std::fs::read_dir(&blobs)
            .map_err(|e| Error::InvalidArgument(format!("{}: {e}", blobs.display())))?
        {
            let e = e.map_err(|e| Error::storage(blobs.display(), e))?;
            files.insert(
                format!("sha256:{}", e.file_name().to_string_lossy()),
                e.path(),
            );
        }
        let src = Files(files);
        let mut out = Vec::new();
        for entry in &entries {
            let name = entry
                .annotations
                .get("io.containerd.image.name")
                .or_else(|| entry.annotations.get("org.opencontainers.image.ref.name"))
                .and_then(|n| ImageRef::parse(n).ok().filter(|_| n.contains('/')));
            let top = crate::ingest::fetch_document(&src, entry, "manifest").await?;
            let (m, manifest_digest, mut documents) =
                match manifest::parse_document(&top, &entry.digest)? {
                    Document::Image(m) => (m, entry.digest.clone(), vec![]),
                    Document::Index(inner) => {
                        let pick = manifest::select_platform(&inner, PlatformChoice::Native)
                            .ok_or_else(|| {
                                Error::Unsupported(format!(
                                    "{}: no linux/amd64 or wasi/wasm image",
                                    entry.digest
                                ))
                            })?;
                        let bytes = crate::ingest::fetch_document(&src, pick, "manifest").await?;
                        let Document::Image(m) = manifest::parse_document(&bytes, &pick.digest)?
                        else {
                            return Err(Error::Unsupported(format!(
                                "{}: nested index",
                                pick.digest
                            )));
                        };
                        (m, pick.digest.clone(), vec![(pick.digest.clone(), bytes)])
                    }
                };
            documents.push((entry.digest.clone(), top));
            let tag = name.as_ref().and_then(ImageRef::tagged);
            let repo_digest = name.as_ref().map(|n| n.with_digest(&entry.digest));
            out.push(
                self.import_one(
                    &src,
                    &m,
                    manifest_digest,
                    documents,
                    tag.into_iter().collect(),
                    repo_digest,
                )
                .await?,
            );
        }
        Ok(out)
    }

    async fn import_docker_archive(self: &Arc<Self>, dir: &Path) -> Result<Vec<Arc<ImageRecord>>> {
        let entries: Vec<DockerEntry> =
            serde_json::from_slice(&read_small(&dir.join("manifest.json"))?)
                .map_err(|e| Error::InvalidArgument(format!("manifest.json: {e}")))?;
        let mut out = Vec::new();
        for entry in entries {
            let mut files = HashMap::new();
            let mut describe = |rel: &str, media_type: &str| -> Result<Descriptor> {
                let path = inside(dir, rel)?;
                let (digest, size) = hash_file(&path)?;
                files.insert(digest.clone(), path);
                Ok(Descriptor {
                    media_type: media_type.into(),
                    digest,
                    size,
                    platform: None,
                    annotations: Default::default(),
                })
            };
            let config = describe(
                &entry.config,
                "application/vnd.docker.container.image.v1+json",
            )?;
            let layers = entry
                .layers
                .iter()
                .map(|l| describe(l, "application/vnd.docker.image.rootfs.diff.tar"))
                .collect::<Result<Vec<_>>>()?;
            // A schema 2 manifest for what the archive holds, so the image looks pulled.
            let manifest_json = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": manifest::DOCKER_MANIFEST,
                "config": config,
                "layers": layers,
            }))
            .map_err(|e| Error::Storage(e.to_string()))?;
            let manifest_digest = digest::sha256_of(&manifest_json);
            let tags = entry
                .repo_tags
                .unwrap_or_default()
                .iter()
                .map(|t| ImageRef::parse(t).map(|r| r.tagged().unwrap_or_else(|| r.to_string())))
                .collect::<Result<Vec<_>>>()?;
            let m = ImageManifest { config, layers };
            let src = Files(files);
            out.push(
                self.import_one(
                    &src,
                    &m,
                    manifest_digest.clone(),
                    vec![(manifest_digest, manifest_json)],
                    tags,
                    None,
                )
                .await?,
            );
        }
        Ok(out)
    }

    async fn import_one(
        self: &Arc<Self>,
        src: &Files,
        m: &ImageManifest,
        manifest_digest: String,
        documents: Vec<(String, Vec<u8>)>,
        tags: Vec<String>,
        repo_digest: Option<String>,
    ) -> Result<Arc<ImageRecord>> {
        let result = async {
            let (rec, pin) = Ingest {
                store: self,
                source: src,
                manifest: m,
                manifest_digest,
                documents,
                label: tags
                    .first()
                    .cloned()
                    .unwrap_or_else(|| m.config.digest.clone()),
            }
            .run()
            .await?;
            let mut rec = self.commit(rec, tags.first().cloned(), repo_digest)?;
            for t in tags.iter().skip(1) {
                rec = self.commit((*rec).clone(), Some(t.clone()), None)?;
            }
            drop(pin);
            Ok(rec)
        }
        .await;
        if result.is_err() {
            let _ = self.gc();
        }
        result
    }
}

/// A path named by an archive, which must stay inside it.
fn inside(dir: &Path, rel: &str) -> Result<PathBuf> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::InvalidArgument(format!(
            "archive path {rel:?} leaves the archive"
        )));
    }
    let full = dir.join(p);
    let canon = full
        .canonicalize()
        .map_err(|e| Error::InvalidArgument(format!("archive path {rel:?}: {e}")))?;
    let root = dir
        .canonicalize()
        .map_err(|e| Error::storage(dir.display(), e))?;
    if !canon.starts_with(&root) {
        return Err(Error::InvalidArgument(format!(
            "archive path {rel:?} leaves the archive"
        )));
    }
    Ok(canon)
}

fn read_small(p: &Path) -> Result<Vec<u8>> {
    let m = std::fs::metadata(p)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", p.display())))?;
    if m.len() > manifest::MAX_DOCUMENT {
        return Err(Error::LimitExceeded(format!(
            "{} is too large",
            p.display()
        )));
    }
    std::fs::read(p).map_err(|e| Error::InvalidArgument(format!("{}: {e}", p.display())))
}

fn hash_file(p: &Path) -> Result<(String, u64)> {
    use std::io::Read;
    let mut f = std::fs::File::open(p)
        .map_err(|e| Error::InvalidArgument(format!("{}: {e}", p.display())))?;
    let mut h = digest::Hasher::default();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::storage(p.display(), e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let size = h.bytes();
    Ok((h.finish(), size))
}
