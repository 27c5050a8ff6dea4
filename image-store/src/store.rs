//! The content-addressed image store under `<root_dir>/images/`:
//!
//! ```text
//! blobs/sha256/<hex>   manifests, indexes, configs, Wasm layers (verified, immutable)
//! layers/<chain hex>/  one unpacked tar layer per chain ID, an overlayfs lowerdir
//! tmp/                 work in progress; wiped on start, so an interrupted pull leaves nothing
//! ```
//!
//! Image records live in the metadata store; an in-memory index answers List/Status.
//! Layers and blobs are shared between images and deleted (`gc`) once no image uses them
//! and no pull in flight has pinned them.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{BoxFuture, Shared};
use meta_store::MetaStore;

use crate::digest;
use crate::error::{Error, Result};
use crate::pull::Pulled;
use crate::record::{DiskUsage, ImageRecord};
use crate::registry_config::RegistryConfig;
use crate::unpack::Limits;

/// The image store. Share it behind an `Arc`.
pub struct ImageStore {
    dir: PathBuf,
    meta: Arc<MetaStore>,
    pub(crate) registry: RegistryConfig,
    pub(crate) limits: Limits,
    state: Mutex<Index>,
    /// Serialises changes to records (commit, remove, gc) without blocking readers long.
    writer: Mutex<()>,
    /// Layers and blobs in use by pulls in flight: gc must not take them away.
    pins: Mutex<HashMap<String, usize>>,
    /// One lock per chain ID / blob digest, so concurrent pulls fetch each only once.
    content_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Pulls in flight, keyed by reference + credentials + platform.
    pub(crate) inflight: Mutex<HashMap<String, Shared<BoxFuture<'static, Result<Pulled>>>>>,
    nonce: AtomicU64,
    /// Chain IDs that containers use (even unmounted ones), from the container service.
    layer_users: Mutex<Option<LayerUsers>>,
    /// Registry clients by endpoint and credentials: building one costs tens of ms, and a
    /// kept client keeps its bearer tokens.
    pub(crate) clients: Mutex<HashMap<String, oci_client::Client>>,
}

/// Tells gc which chain IDs containers still need.
pub type LayerUsers = Box<dyn Fn() -> Vec<String> + Send + Sync>;

#[derive(Default)]
struct Index {
    images: HashMap<String, Arc<ImageRecord>>,
    by_tag: HashMap<String, String>,
    by_digest: HashMap<String, String>,
}

impl Index {
    fn insert(&mut self, rec: Arc<ImageRecord>) {
        for t in &rec.repo_tags {
            self.by_tag.insert(t.clone(), rec.id.clone());
        }
        for d in &rec.repo_digests {
            self.by_digest.insert(d.clone(), rec.id.clone());
        }
        self.images.insert(rec.id.clone(), rec);
    }

    fn remove(&mut self, id: &str) -> Option<Arc<ImageRecord>> {
        let rec = self.images.remove(id)?;
        for t in &rec.repo_tags {
            if self.by_tag.get(t).is_some_and(|i| i == id) {
                self.by_tag.remove(t);
            }
        }
        for d in &rec.repo_digests {
            if self.by_digest.get(d).is_some_and(|i| i == id) {
                self.by_digest.remove(d);
            }
        }
        Some(rec)
    }

    /// Image id for an id, an unambiguous id prefix, a tag or a repo digest.
    fn resolve(&self, r: &str) -> Option<&Arc<ImageRecord>> {
        let r = r.trim();
        if r.is_empty() {
            return None;
        }
        if let Some(rec) = self.images.get(r) {
            return Some(rec);
        }
        if let Ok(parsed) = crate::ImageRef::parse(r) {
            let key = parsed.to_string();
            if let Some(id) = self.by_tag.get(&key).or_else(|| self.by_digest.get(&key)) {
                return self.images.get(id);
            }
        }
        let prefix = r.strip_prefix("sha256:").unwrap_or(r);
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut hits = self
            .images
            .values()
            .filter(|rec| rec.id["sha256:".len()..].starts_with(prefix));
        match (hits.next(), hits.next()) {
            (Some(one), None) => Some(one),
            _ => None,
        }
    }
}

/// Disk use of the store, for ImageFsInfo.
#[derive(Debug, Clone)]
pub struct FsUsage {
    /// The store directory, on the filesystem whose capacity the kubelet measures.
    pub mountpoint: PathBuf,
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// What `gc` deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Collected {
    pub layers: usize,
    pub blobs: usize,
}

impl ImageStore {
    /// Opens the store in `dir` (created if missing): removes what interrupted pulls left
    /// in `tmp/`, loads the image records, and deletes layers and blobs no image uses.
    pub fn open(
        dir: &Path,
        meta: Arc<MetaStore>,
        registry: RegistryConfig,
        limits: Limits,
    ) -> Result<Arc<Self>> {
        for sub in ["blobs/sha256", "layers", "tmp"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::storage(format!("create {}", dir.join(sub).display()), e))?;
        }
        let tmp = dir.join("tmp");
        let mut leftovers = 0;
        for entry in std::fs::read_dir(&tmp).map_err(|e| Error::storage(tmp.display(), e))? {
            let entry = entry.map_err(|e| Error::storage(tmp.display(), e))?;
            remove_path(&entry.path())?;
            leftovers += 1;
        }
        if leftovers > 0 {
            tracing::info!(count = leftovers, "removed leftovers of interrupted pulls");
        }
        let mut index = Index::default();
        for (key, rec) in meta.list::<ImageRecord>()? {
            match rec {
                Ok(rec) => {
                    // An image whose content vanished (deleted by hand, a lost disk) would
                    // fail every container start: forget it, so the next pull restores it.
                    if let Some(missing) = missing_content(dir, &rec) {
                        tracing::warn!(image = %key, missing = %missing.display(), "image content is missing; forgetting the image");
                        meta.delete::<ImageRecord>(&key)?;
                        continue;
                    }
                    index.insert(Arc::new(rec))
                }
                Err(e) => {
                    tracing::warn!(image = %key, error = %e, "skipping unreadable image record")
                }
            }
        }
        let store = Arc::new(Self {
            dir: dir.to_path_buf(),
            meta,
            registry,
            limits,
            state: Mutex::new(index),
            writer: Mutex::new(()),
            pins: Mutex::new(HashMap::new()),
            content_locks: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            nonce: AtomicU64::new(0),
            layer_users: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
        });
        let c = store.gc()?;
        if c != Collected::default() {
            tracing::info!(
                layers = c.layers,
                blobs = c.blobs,
                "removed unused layers and blobs"
            );
        }
        Ok(store)
    }

    /// Registers who else uses layers (created containers whose rootfs is not mounted
    /// yet); gc keeps what it lists. Mounted layers are found without it.
    pub fn set_layer_users(&self, users: LayerUsers) {
        *self.layer_users.lock().unwrap_or_else(|p| p.into_inner()) = Some(users);
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The unpacked directory of a tar layer (an overlayfs lowerdir).
    pub fn layer_dir(&self, chain_id: &str) -> Result<PathBuf> {
        Ok(self.dir.join("layers").join(digest::hex_of(chain_id)?))
    }

    /// Where a blob (manifest, config, Wasm layer) is kept.
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(digest::hex_of(digest)?))
    }

    /// Every image, from memory.
    pub fn list(&self) -> Vec<Arc<ImageRecord>> {
        self.index().images.values().cloned().collect()
    }

    /// The image an id, id prefix, tag or repo digest names; `None` when unknown.
    pub fn get(&self, reference: &str) -> Option<Arc<ImageRecord>> {
        self.index().resolve(reference).cloned()
    }

    /// Removes the image `reference` names, with all its tags (as containerd does), and
    /// then the layers and blobs nothing uses any more. Unknown images are not an error:
    /// returns whether an image was removed.
    pub fn remove(&self, reference: &str) -> Result<bool> {
        let removed = {
            let _w = self.writer();
            let Some(id) = self.index().resolve(reference).map(|r| r.id.clone()) else {
                return Ok(false);
            };
            self.meta.delete::<ImageRecord>(&id)?;
            self.index().remove(&id)
        };
        if let Some(rec) = &removed {
            tracing::info!(image = %rec.id, tags = ?rec.repo_tags, "image removed");
            self.gc()?;
        }
        Ok(removed.is_some())
    }

    /// Deletes layers and blobs that no image references and no pull has pinned.
    pub fn gc(&self) -> Result<Collected> {
        let mut trash = Vec::new();
        let mut collected = Collected::default();
        {
            let _w = self.writer();
            let mut keep: HashSet<String> = HashSet::new();
            for rec in self.index().images.values() {
                keep.extend(referenced(rec));
            }
            let pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
            keep.extend(
                pins.keys()
                    .map(|k| k.strip_prefix("sha256:").unwrap_or(k).to_string()),
            );
            // Layers under a container's rootfs stay until it is gone, whatever happened to
            // the image (containerd keeps such snapshots too).
            keep.extend(mounted_layers(&self.dir.join("layers")));
            let users = self.layer_users.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(users) = users.as_ref() {
                keep.extend(
                    users()
                        .iter()
                        .map(|k| k.strip_prefix("sha256:").unwrap_or(k).to_string()),
                );
            }
            for (sub, count) in [
                ("layers", &mut collected.layers),
                ("blobs/sha256", &mut collected.blobs),
            ] {
                let d = self.dir.join(sub);
                for e in std::fs::read_dir(&d).map_err(|e| Error::storage(d.display(), e))? {
                    let e = e.map_err(|e| Error::storage(d.display(), e))?;
                    let name = e.file_name().to_string_lossy().into_owned();
                    if keep.contains(&name) {
                        continue;
                    }
                    // Renamed away under the lock, deleted after it: a pull that pins the
                    // name later finds it absent and fetches it again.
                    let t = self.tmp_path("gc");
                    std::fs::rename(e.path(), &t).map_err(|e| Error::storage("gc rename", e))?;
                    trash.push(t);
                    *count += 1;
                }
            }
        }
        for t in trash {
            remove_path(&t)?;
        }
        Ok(collected)
    }

    /// Disk use of the store (layers as measured when unpacked, blobs as they are).
    pub fn fs_usage(&self) -> Result<FsUsage> {
        let mut used = DiskUsage::default();
        let mut seen = HashSet::new();
        for rec in self.list() {
            for l in &rec.layers {
                if l.chain_id.is_some() && seen.insert(l.chain_id.clone()) {
                    used.bytes += l.usage.bytes;
                    used.inodes += l.usage.inodes;
                }
            }
        }
        let top = du(&self.dir.join("blobs"))?;
        used.bytes += top.bytes;
        used.inodes += top.inodes + 3; // + the store, layers and tmp directories
        Ok(FsUsage {
            mountpoint: self.dir.clone(),
            used_bytes: used.bytes,
            inodes_used: used.inodes,
        })
    }

    /// A fresh, unused path under `tmp/`.
    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        let n = self.nonce.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join("tmp")
            .join(format!("{what}-{}-{n}", std::process::id()))
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Usage recorded for a layer some image already has.
    pub(crate) fn known_layer_usage(&self, chain_id: &str) -> Option<DiskUsage> {
        self.index()
            .images
            .values()
            .flat_map(|r| r.layers.iter())
            .find(|l| l.chain_id.as_deref() == Some(chain_id))
            .map(|l| l.usage)
    }

    /// Keeps `keys` (chain IDs, blob digests) from gc until the guard drops.
    pub(crate) fn pin(self: &Arc<Self>, keys: Vec<String>) -> Pin {
        let mut pins = self.pins.lock().unwrap_or_else(|p| p.into_inner());
        for k in &keys {
            *pins.entry(k.clone()).or_default() += 1;
        }
        Pin {
            store: self.clone(),
            keys,
        }
    }

    /// The lock for one piece of content (chain ID or blob digest).
    pub(crate) async fn lock_content(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = self.content_locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.retain(|_, m| Arc::strong_count(m) > 1);
            locks.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }

    /// Writes a small verified blob (manifest, config) unless it is there already.
    pub(crate) fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<()> {
        let path = self.blob_path(digest)?;
        if path.exists() {
            return Ok(());
        }
        let tmp = self.tmp_path("blob");
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::storage("write blob", e))?;
        f.write_all(bytes)
            .map_err(|e| Error::storage("write blob", e))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(|e| Error::storage("store blob", e))
    }

    /// Makes everything written so far durable, then records the image: `tag` moves to it
    /// from any other image, `repo_digest` is added. Existing tags and digests of the same
    /// image are kept.
    pub(crate) fn commit(
        &self,
        mut rec: ImageRecord,
        tag: Option<String>,
        repo_digest: Option<String>,
    ) -> Result<Arc<ImageRecord>> {
        let dir = std::fs::File::open(&self.dir).map_err(|e| Error::storage("open store", e))?;
        crate::unpack::syncfs(std::os::fd::AsFd::as_fd(&dir))
            .map_err(|e| Error::storage("syncfs", e))?;
        let _w = self.writer();
        let (previous, old_owner) = {
            let idx = self.index();
            let previous = idx.images.get(&rec.id).cloned();
            let old_owner = tag
                .as_ref()
                .and_then(|t| idx.by_tag.get(t))
                .filter(|id| **id != rec.id)
                .and_then(|id| idx.images.get(id).cloned());
            (previous, old_owner)
        };
        if let Some(p) = &previous {
            rec.repo_tags = p.repo_tags.clone();
            rec.repo_digests = p.repo_digests.clone();
        }
        if let Some(t) = &tag
            && !rec.repo_tags.contains(t)
        {
            rec.repo_tags.push(t.clone());
        }
        if let Some(d) = &repo_digest
            && !rec.repo_digests.contains(d)
        {
            rec.repo_digests.push(d.clone());
        }
        let old_owner = old_owner.map(|o| {
            let mut o = (*o).clone();
            o.repo_tags.retain(|t| Some(t) != tag.as_ref());
            o
        });
        if let Some(o) = &old_owner {
            self.meta.put(&o.id, o)?;
        }
        self.meta.put(&rec.id, &rec)?;
        let rec = Arc::new(rec);
        let mut idx = self.index();
        if let Some(o) = old_owner {
            idx.remove(&o.id);
            idx.insert(Arc::new(o));
        }
        idx.remove(&rec.id);
        idx.insert(rec.clone());
        Ok(rec)
    }
}

/// Layer directory names used as overlay lowerdirs by any mount namespace on the host (a
/// container's rootfs is mounted in its own namespace, so each is read once).
fn mounted_layers(layers_dir: &Path) -> HashSet<String> {
    let prefix = format!("{}/", layers_dir.display());
    let mut seen_ns = HashSet::new();
    let mut out = HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let pids = procs
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().bytes().all(|b| b.is_ascii_digit()));
    for pid in std::iter::once("self".into()).chain(pids) {
        let proc_dir = Path::new("/proc").join(&pid);
        // Processes come and go while we look; a vanished one is simply skipped.
        let Ok(ns) = std::fs::read_link(proc_dir.join("ns/mnt")) else {
            continue;
        };
        if !seen_ns.insert(ns) {
            continue;
        }
        let Ok(mountinfo) = std::fs::read_to_string(proc_dir.join("mountinfo")) else {
            continue;
        };
        for line in mountinfo.lines() {
            let Some((_, tail)) = line.split_once(" - ") else {
                continue;
            };
            let mut f = tail.split(' ');
            if f.next() != Some("overlay") {
                continue;
            }
            let opts = f.nth(1).unwrap_or_default();
            for opt in opts.split(',') {
                let Some(lower) = opt.strip_prefix("lowerdir=") else {
                    continue;
                };
                for p in lower.split(':') {
                    if let Some(rest) = p.strip_prefix(&prefix) {
                        out.insert(rest.split('/').next().unwrap_or(rest).to_string());
                    }
                }
            }
        }
    }
    out
}

/// The first layer directory or Wasm blob of `rec` that is not on disk.
fn missing_content(dir: &Path, rec: &ImageRecord) -> Option<PathBuf> {
    let hex = |d: &str| d.strip_prefix("sha256:").unwrap_or(d).to_string();
    rec.layers
        .iter()
        .map(|l| match &l.chain_id {
            Some(c) => dir.join("layers").join(hex(c)),
            None => dir.join("blobs/sha256").join(hex(&l.digest)),
        })
        .find(|p| !p.exists())
}

/// Hex names of the layers and blobs an image needs.
fn referenced(rec: &ImageRecord) -> Vec<String> {
    let hex = |d: &str| d.strip_prefix("sha256:").unwrap_or(d).to_string();
    let mut out = vec![hex(&rec.id), hex(&rec.manifest_digest)];
    for d in &rec.repo_digests {
        if let Some((_, dg)) = d.split_once('@') {
            out.push(hex(dg));
        }
    }
    for l in &rec.layers {
        match &l.chain_id {
            Some(c) => out.push(hex(c)),
            None => out.push(hex(&l.digest)),
        }
    }
    out
}

/// A set of pins, released on drop.
pub(crate) struct Pin {
    store: Arc<ImageStore>,
    keys: Vec<String>,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut pins = self.store.pins.lock().unwrap_or_else(|p| p.into_inner());
        for k in &self.keys {
            if let Some(n) = pins.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    pins.remove(k);
                }
            }
        }
    }
}

/// Removes a file or a whole tree (layers may hold read-only dirs; we are root).
pub(crate) fn remove_path(p: &Path) -> Result<()> {
    let r = match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    r.map_err(|e| Error::storage(format!("remove {}", p.display()), e))
}

/// Allocated bytes and inodes below `p` (not following symlinks).
pub(crate) fn du(p: &Path) -> Result<DiskUsage> {
    use std::os::unix::fs::MetadataExt;
    let mut u = DiskUsage::default();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let m = std::fs::symlink_metadata(&d).map_err(|e| Error::storage(d.display(), e))?;
        u.bytes += m.blocks() * 512;
        u.inodes += 1;
        if m.is_dir() {
            for e in std::fs::read_dir(&d).map_err(|e| Error::storage(d.display(), e))? {
                stack.push(e.map_err(|e| Error::storage(d.display(), e))?.path());
            }
        }
    }
    Ok(u)
}
