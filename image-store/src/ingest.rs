//! Turning a verified manifest into a stored image, whatever the content comes from (a
//! registry or an import): every blob is hashed and counted while it streams, tar layers are
//! unpacked while they download (DiffID checked at the end), each into a temp dir renamed
//! into place only when everything matched. Layers are fetched in parallel, each at most
//! once at a time across all pulls.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use tokio::sync::mpsc;

use crate::digest::{self, Hasher};
use crate::error::{Error, Result};
use crate::manifest::{self, ConfigDoc, Descriptor, ImageManifest, LayerFormat};
use crate::record::{DiskUsage, ImageRecord, LayerRecord};
use crate::store::{ImageStore, remove_path};
use crate::user::parse_user;

/// Where blobs come from.
pub(crate) trait BlobSource: Send + Sync {
    /// The blob's bytes as they arrive; verification is the caller's job.
    fn fetch<'a>(
        &'a self,
        desc: &'a Descriptor,
    ) -> BoxFuture<'a, Result<BoxStream<'static, io::Result<Bytes>>>>;
}

/// Layers fetched at the same time per image.
const PARALLEL_LAYERS: usize = 3;

/// Reads a small blob (config) fully, verifying size and digest.
pub(crate) async fn fetch_document(
    src: &dyn BlobSource,
    desc: &Descriptor,
    what: &str,
) -> Result<Vec<u8>> {
    if desc.size > manifest::MAX_DOCUMENT {
        return Err(Error::LimitExceeded(format!(
            "{what} {} is {} bytes, more than the {} allowed",
            desc.digest,
            desc.size,
            manifest::MAX_DOCUMENT
        )));
    }
    let mut stream = src.fetch(desc).await?;
    let mut out = Vec::with_capacity(desc.size as usize);
    let mut h = Hasher::default();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| interrupted(what, &desc.digest, e))?;
        h.update(&chunk);
        if h.bytes() > desc.size {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    digest::verify(what, &desc.digest, desc.size, h)?;
    Ok(out)
}

fn interrupted(what: &str, digest: &str, e: io::Error) -> Error {
    Error::Registry(format!("{what} {digest}: download interrupted: {e}"))
}

/// Everything about the image except its names, which `commit` adds.
pub(crate) struct Ingest<'a> {
    pub store: &'a Arc<ImageStore>,
    pub source: &'a dyn BlobSource,
    pub manifest: &'a ImageManifest,
    pub manifest_digest: String,
    /// Other blobs to keep with the image (the manifest itself, an index).
    pub documents: Vec<(String, Vec<u8>)>,
    pub label: String,
}

impl Ingest<'_> {
    /// Fetches config and layers and returns the record to commit (the caller commits it
    /// while it still holds the returned pin).
    pub async fn run(self) -> Result<(ImageRecord, crate::store::Pin)> {
        let m = self.manifest;
        let config_bytes = fetch_document(self.source, &m.config, "config").await?;
        let (config, config_json) = ConfigDoc::parse(&config_bytes)?;
        let formats = m
            .layers
            .iter()
            .map(|l| manifest::layer_format(&l.media_type))
            .collect::<Result<Vec<_>>>()?;
        let diff_ids = diff_ids(&config, &m.layers, &formats)?;
        let tar_diffs: Vec<String> = formats
            .iter()
            .zip(&diff_ids)
            .filter(|(f, _)| **f == LayerFormat::Tar)
            .map(|(_, d)| d.clone())
            .collect();
        let mut chains = digest::chain_ids(&tar_diffs).into_iter();
        let chain_ids: Vec<Option<String>> = formats
            .iter()
            .map(|f| match f {
                LayerFormat::Tar => chains.next(),
                LayerFormat::Wasm => None,
            })
            .collect();

        let mut keys: Vec<String> = vec![m.config.digest.clone(), self.manifest_digest.clone()];
        keys.extend(self.documents.iter().map(|(d, _)| d.clone()));
        for (l, c) in m.layers.iter().zip(&chain_ids) {
            keys.push(c.clone().unwrap_or_else(|| l.digest.clone()));
        }
        let pin = self.store.pin(keys);

        let abort = AtomicBool::new(false);
        let this = &self;
        let abort = &abort;
        let mut jobs: Vec<BoxFuture<'_, Result<DiskUsage>>> = Vec::new();
        for ((l, c), d) in m.layers.iter().zip(&chain_ids).zip(&diff_ids) {
            jobs.push(Box::pin(async move {
                let r = match c {
                    Some(chain) => this.tar_layer(l, d, chain, abort).await,
                    None => this.wasm_layer(l, abort).await,
                };
                if r.is_err() {
                    abort.store(true, Ordering::Relaxed);
                }
                r
            }));
        }
        // Every job runs to its end (failing fast once one failed), so nothing is still
        // writing when we return.
        let usages: Vec<Result<DiskUsage>> = futures_util::stream::iter(jobs)
            .buffered(PARALLEL_LAYERS)
            .collect()
            .await;
        let mut layers = Vec::with_capacity(m.layers.len());
        let mut first_err = None;
        for ((((l, f), c), d), u) in m
            .layers
            .iter()
            .zip(&formats)
            .zip(&chain_ids)
            .zip(&diff_ids)
            .zip(usages)
        {
            match u {
                Ok(usage) => layers.push(LayerRecord {
                    digest: l.digest.clone(),
                    media_type: l.media_type.clone(),
                    size: l.size,
                    format: *f,
                    diff_id: d.clone(),
                    chain_id: c.clone(),
                    usage,
                }),
                Err(e) => {
                    // The root cause, not the "aborted" of the layers stopped because of it.
                    if first_err.is_none()
                        || matches!(first_err, Some(Error::Registry(ref s)) if s.contains("aborted"))
                    {
                        first_err = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        self.store.put_blob(&m.config.digest, &config_bytes)?;
        for (d, bytes) in &self.documents {
            self.store.put_blob(d, bytes)?;
        }
        let size = m.config.size + m.layers.iter().map(|l| l.size).sum::<u64>();
        let rec = ImageRecord {
            id: m.config.digest.clone(),
            repo_tags: Vec::new(),
            repo_digests: Vec::new(),
            size,
            user: parse_user(config.user()),
            platform: config.platform(),
            manifest_digest: self.manifest_digest.clone(),
            config: config_json,
            layers,
        };
        Ok((rec, pin))
    }

    async fn tar_layer(
        &self,
        l: &Descriptor,
        diff_id: &str,
        chain: &str,
        abort: &AtomicBool,
    ) -> Result<DiskUsage> {
        let _lock = self.store.lock_content(chain).await;
        let dest = self.store.layer_dir(chain)?;
        if dest.exists() {
            return match self.store.known_layer_usage(chain) {
                Some(u) => Ok(u),
                None => blocking(move || crate::store::du(&dest)).await,
            };
        }
        let started = Instant::now();
        let staging = Staging(self.store.tmp_path("layer"));
        std::fs::create_dir(&staging.0).map_err(|e| Error::storage("create layer dir", e))?;
        let (tx, rx) = mpsc::channel::<Msg>(16);
        let dir = staging.0.clone();
        let name = l.digest.clone();
        let limits = self.store.limits.clone();
        let unpacker = tokio::task::spawn_blocking(move || {
            let r = crate::unpack::unpack(ChannelReader::new(rx), &dir, &name, &limits)?;
            let usage = crate::store::du(&dir)?;
            Ok::<_, Error>((r, usage))
        });
        let downloaded = self
            .download(l, abort, |chunk| {
                let tx = tx.clone();
                async move { tx.send(Msg::Data(chunk)).await.is_ok() }
            })
            .await;
        if downloaded.is_ok() {
            let _ = tx.send(Msg::End).await;
        }
        drop(tx);
        let unpacked = unpacker
            .await
            .map_err(|e| Error::Storage(format!("unpack task: {e}")))?;
        downloaded?;
        let (unpacked, usage) = unpacked?;
        if unpacked.diff_id != diff_id {
            return Err(Error::Verification(format!(
                "layer {}: uncompressed content is {}, the config says {diff_id}",
                l.digest, unpacked.diff_id
            )));
        }
        std::fs::rename(&staging.0, &dest).map_err(|e| Error::storage("commit layer", e))?;
        staging.keep();
        tracing::info!(
            image = %self.label,
            layer = %l.digest,
            size = l.size,
            uncompressed = unpacked.uncompressed_size,
            entries = unpacked.entries,
            ms = started.elapsed().as_millis() as u64,
            "layer pulled"
        );
        Ok(usage)
    }

    async fn wasm_layer(&self, l: &Descriptor, abort: &AtomicBool) -> Result<DiskUsage> {
        let _lock = self.store.lock_content(&l.digest).await;
        let dest = self.store.blob_path(&l.digest)?;
        let usage = |size| DiskUsage {
            bytes: size,
            inodes: 1,
        };
        if dest.exists() {
            return Ok(usage(l.size));
        }
        let started = Instant::now();
        let staging = Staging(self.store.tmp_path("wasm"));
        let file = std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::File::create(&staging.0).map_err(|e| Error::storage("create blob", e))?,
        ));
        self.download(l, abort, |chunk| {
            let file = file.clone();
            async move {
                use std::io::Write;
                file.lock()
                    .map(|mut f| f.write_all(&chunk).is_ok())
                    .unwrap_or(false)
            }
        })
        .await?;
        std::fs::rename(&staging.0, &dest).map_err(|e| Error::storage("commit blob", e))?;
        staging.keep();
        tracing::info!(image = %self.label, layer = %l.digest, size = l.size,
            ms = started.elapsed().as_millis() as u64, "wasm layer pulled");
        Ok(usage(l.size))
    }

    /// Streams one blob to `sink`, checking size as it goes and the digest at the end.
    async fn download<F, Fut>(&self, l: &Descriptor, abort: &AtomicBool, sink: F) -> Result<()>
    where
        F: Fn(Bytes) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut stream = self.source.fetch(l).await?;
        let mut h = Hasher::default();
        while let Some(chunk) = stream.next().await {
            if abort.load(Ordering::Relaxed) {
                return Err(Error::Registry(format!(
                    "layer {}: aborted, another layer failed",
                    l.digest
                )));
            }
            let chunk = chunk.map_err(|e| interrupted("layer", &l.digest, e))?;
            h.update(&chunk);
            if h.bytes() > l.size {
                return Err(Error::Verification(format!(
                    "layer {}: more bytes than the descriptor's size {}",
                    l.digest, l.size
                )));
            }
            if !sink(chunk).await {
                // The unpacker stopped early; its own error explains why.
                return Ok(());
            }
        }
        digest::verify("layer", &l.digest, l.size, h)
    }
}

/// The config's `rootfs.diff_ids`, one per layer (Wasm layers are their own DiffID when
/// the config lists only the tar layers).
fn diff_ids(
    config: &ConfigDoc,
    layers: &[Descriptor],
    formats: &[LayerFormat],
) -> Result<Vec<String>> {
    let listed = config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .unwrap_or_default();
    for d in &listed {
        digest::validate(d)?;
    }
    if listed.len() == layers.len() {
        return Ok(listed);
    }
    let tars = formats.iter().filter(|f| **f == LayerFormat::Tar).count();
    if listed.len() == tars {
        let mut it = listed.into_iter();
        return Ok(layers
            .iter()
            .zip(formats)
            .map(|(l, f)| match f {
                LayerFormat::Tar => it.next().unwrap_or_default(),
                LayerFormat::Wasm => l.digest.clone(),
            })
            .collect());
    }
    Err(Error::Unsupported(format!(
        "image config lists {} diff_ids for {} layers",
        listed.len(),
        layers.len()
    )))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Storage(format!("blocking task: {e}")))?
}

/// A temp path removed on drop unless kept.
pub(crate) struct Staging(pub PathBuf);

impl Staging {
    pub fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = remove_path(&self.0) {
            tracing::warn!(error = %e, "could not remove a partial layer");
        }
    }
}

enum Msg {
    Data(Bytes),
    /// The blob ended and its digest and size matched.
    End,
}

/// The unpacker's side of the download: blocking reads from the async downloader. Ending
/// without `End` (the download failed or was cut) is an error, never a clean EOF.
struct ChannelReader {
    rx: mpsc::Receiver<Msg>,
    cur: Bytes,
    ended: bool,
}

impl ChannelReader {
    fn new(rx: mpsc::Receiver<Msg>) -> Self {
        Self {
            rx,
            cur: Bytes::new(),
            ended: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.cur = b,
                Some(Msg::End) => self.ended = true,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "download did not complete",
                    ));
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur = self.cur.slice(n..);
        Ok(n)
    }
}
