//! The image service end to end: the real `berth serve` against a real local registry
//! (Debian's docker-registry, started per test on a free loopback port), with images the
//! tests build and push themselves. Also the real crictl.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Daemon;
use cri_api::v1::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::{Client, Reference};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------- the registry

/// A docker-registry process with its own config and storage; killed on drop.
struct Registry {
    child: Child,
    port: u16,
    storage: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Registry {
    fn start() -> Registry {
        Self::start_with(None, None)
    }

    /// `storage`: share another registry's content; `users`: require these htpasswd logins.
    fn start_with(storage: Option<&Path>, users: Option<&[(&str, &str)]>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("berth-registry-")
            .tempdir()
            .unwrap();
        let storage = storage
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("storage"));
        std::fs::create_dir_all(&storage).unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some(users) = users {
            let file = dir.path().join("htpasswd");
            let lines: String = users
                .iter()
                .map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 5).unwrap()))
                .collect();
            std::fs::write(&file, lines).unwrap();
            config += &format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                file.display()
            );
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        let r = Registry {
            child,
            port,
            storage,
            _dir: dir,
        };
        wait_for_port(port);
        r
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps a blob's bytes (to corrupt it on purpose).
    fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- test images

fn sha256(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

#[derive(Clone, Copy)]
enum Compression {
    None,
    Gzip,
    Zstd,
}

struct Blob {
    data: Vec<u8>,
    digest: String,
    media_type: String,
}

struct TestImage {
    config: Blob,
    layers: Vec<Blob>,
    manifest: Blob,
}

/// A tar with regular files (and their parent dirs implied).
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A tar entry with raw path/link bytes, for layers no honest tool would write.
fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    let old = h.as_old_mut();
    old.name[..path.len()].copy_from_slice(path.as_bytes());
    if let Some(l) = link {
        old.linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_entry_type(kind);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    if kind == tar::EntryType::Char {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn compress(tar: &[u8], c: Compression, docker: bool) -> (Vec<u8>, String) {
    let (data, oci_suffix) = match c {
        Compression::None => (tar.to_vec(), ""),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(tar).unwrap();
            (gz.finish().unwrap(), "+gzip")
        }
        Compression::Zstd => (zstd::encode_all(tar, 3).unwrap(), "+zstd"),
    };
    let mt = if docker {
        "application/vnd.docker.image.rootfs.diff.tar.gzip".to_string()
    } else {
        format!("application/vnd.oci.image.layer.v1.tar{oci_suffix}")
    };
    (data, mt)
}

/// An image from layer tars; `docker` picks Docker schema 2 media types over OCI.
fn image(layer_tars: &[(Vec<u8>, Compression)], user: &str, arch: &str, docker: bool) -> TestImage {
    let layers: Vec<Blob> = layer_tars
        .iter()
        .map(|(t, c)| {
            let (data, media_type) = compress(t, *c, docker);
            Blob {
                digest: sha256(&data),
                data,
                media_type,
            }
        })
        .collect();
    let diff_ids: Vec<String> = layer_tars.iter().map(|(t, _)| sha256(t)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"User": user, "Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let (mt_manifest, mt_config) = if docker {
        (
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.container.image.v1+json",
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
        )
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": mt_manifest,
        "config": {"mediaType": mt_config, "digest": sha256(&config), "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({
            "mediaType": l.media_type, "digest": l.digest, "size": l.data.len()
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    TestImage {
        config: Blob {
            digest: sha256(&config),
            data: config,
            media_type: mt_config.into(),
        },
        layers,
        manifest: Blob {
            digest: sha256(&manifest),
            data: manifest,
            media_type: mt_manifest.into(),
        },
    }
}

fn simple_image(marker: &str, user: &str) -> TestImage {
    image(
        &[(
            tar_of(&[
                ("bin/marker", marker.as_bytes()),
                ("etc/passwd", b"root:x:0:0::/:/bin/sh\n"),
            ]),
            Compression::Gzip,
        )],
        user,
        "amd64",
        false,
    )
}

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn push_client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    })
}

/// Pushes blobs and the manifest under `repo:tag`.
async fn push(host: &str, repo: &str, tag: &str, img: &TestImage) {
    let c = push_client();
    let r = Reference::with_tag(host.into(), repo.into(), tag.into());
    for b in img.layers.iter().chain([&img.config]) {
        c.push_blob(&r, b.data.clone(), &b.digest).await.unwrap();
    }
    put_manifest(&c, &r, &img.manifest).await;
}

async fn put_manifest(c: &Client, r: &Reference, m: &Blob) {
    c.push_manifest_raw(
        r,
        m.data.clone(),
        http::HeaderValue::from_str(&m.media_type).unwrap(),
    )
    .await
    .unwrap();
}

/// Pushes `images` by digest and an OCI index of them under `repo:tag`; returns its digest.
async fn push_index(
    host: &str,
    repo: &str,
    tag: &str,
    images: &[(&TestImage, &str, &str)],
) -> String {
    let c = push_client();
    let mut entries = Vec::new();
    for (img, os, arch) in images {
        let r = Reference::with_digest(host.into(), (*repo).into(), img.manifest.digest.clone());
        for b in img.layers.iter().chain([&img.config]) {
            c.push_blob(&r, b.data.clone(), &b.digest).await.unwrap();
        }
        put_manifest(&c, &r, &img.manifest).await;
        entries.push(serde_json::json!({
            "mediaType": img.manifest.media_type, "digest": img.manifest.digest,
            "size": img.manifest.data.len(), "platform": {"os": os, "architecture": arch}
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let blob = Blob {
        digest: sha256(&index),
        data: index,
        media_type: "application/vnd.oci.image.index.v1+json".into(),
    };
    let r = Reference::with_tag(host.into(), repo.into(), tag.into());
    put_manifest(&c, &r, &blob).await;
    blob.digest
}

// ---------------------------------------------------------------- CRI helpers

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec {
        image: image.into(),
        ..Default::default()
    })
}

async fn pull(d: &Daemon, image: &str) -> Result<String, tonic::Status> {
    pull_with(d, image, None).await
}

async fn pull_with(
    d: &Daemon,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    let r = d
        .images()
        .await
        .pull_image(PullImageRequest {
            image: spec(image),
            auth,
            sandbox_config: None,
        })
        .await?;
    Ok(r.into_inner().image_ref)
}

async fn status(d: &Daemon, image: &str) -> Option<cri_api::v1::Image> {
    d.images()
        .await
        .image_status(ImageStatusRequest {
            image: spec(image),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner()
        .image
}

async fn list(d: &Daemon) -> Vec<cri_api::v1::Image> {
    d.images()
        .await
        .list_images(ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images
}

async fn remove(d: &Daemon, image: &str) {
    d.images()
        .await
        .remove_image(RemoveImageRequest { image: spec(image) })
        .await
        .unwrap();
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn store(d: &Daemon) -> PathBuf {
    d.root.join("images")
}

/// After a failed pull: no temp dirs, no layers, no blobs beyond `keep_layers`.
fn assert_nothing_left(d: &Daemon, keep_layers: usize) {
    let s = store(d);
    assert!(
        names(&s.join("tmp")).is_empty(),
        "tmp: {:?}",
        names(&s.join("tmp"))
    );
    assert_eq!(
        names(&s.join("layers")).len(),
        keep_layers,
        "layers: {:?}",
        names(&s.join("layers"))
    );
}

fn mirror_config(host: &str, reg: &Registry) -> String {
    format!(
        "[registry.hosts.\"{host}\"]\nmirrors = [\"http://{}\"]\n",
        reg.host()
    )
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread")]
async fn pull_list_status_remove_round_trip() {
    let reg = Registry::start();
    let host = reg.host();
    // One image with a gzip, a zstd and an uncompressed layer; config User "1002".
    let a = image(
        &[
            (tar_of(&[("bin/a", b"gzip layer")]), Compression::Gzip),
            (tar_of(&[("bin/b", b"zstd layer")]), Compression::Zstd),
            (tar_of(&[("bin/c", b"plain layer")]), Compression::None),
        ],
        "1002",
        "amd64",
        false,
    );
    push(&host, "test/a", "1.0", &a).await;
    // Docker schema 2 media types, User "www-data:1004".
    let b = image(
        &[(tar_of(&[("bin/b", b"docker")]), Compression::Gzip)],
        "www-data:1004",
        "amd64",
        true,
    );
    push(&host, "test/b", "latest", &b).await;
    // A multi-platform index: only the amd64 image must be taken.
    let amd = simple_image("amd64", "");
    let arm = image(
        &[(tar_of(&[("arm", b"arm")]), Compression::Gzip)],
        "",
        "arm64",
        false,
    );
    let index_digest = push_index(
        &host,
        "test/multi",
        "v1",
        &[(&arm, "linux", "arm64"), (&amd, "linux", "amd64")],
    )
    .await;

    let d = Daemon::start_with_config(&mirror_config("registry.k8s.io", &reg));

    // Pull directly from the (loopback, hence plain-HTTP) registry.
    let a_ref = format!("{host}/test/a:1.0");
    let id = pull(&d, &a_ref).await.unwrap();
    assert_eq!(id, a.config.digest, "image_ref is the config digest");
    let img = status(&d, &a_ref).await.expect("status by tag");
    assert_eq!(img.repo_tags, std::slice::from_ref(&a_ref));
    assert_eq!(
        img.repo_digests,
        [format!("{host}/test/a@{}", a.manifest.digest)]
    );
    assert_eq!(img.uid.map(|u| u.value), Some(1002));
    assert_eq!(img.username, "");
    assert!(img.size > 0);
    for r in [
        id.clone(),
        id[7..19].to_string(),
        img.repo_digests[0].clone(),
    ] {
        assert_eq!(status(&d, &r).await.as_ref(), Some(&img), "status by {r}");
    }
    // Three layers, each unpacked once into its own directory.
    let layers = names(&store(&d).join("layers"));
    assert_eq!(layers.len(), 3);
    let found: BTreeSet<String> = layers
        .iter()
        .flat_map(|l| names(&store(&d).join("layers").join(l).join("bin")))
        .collect();
    assert_eq!(found, ["a", "b", "c"].map(String::from).into());

    // Through the mirror: the canonical name is kept in tags and digests.
    let canonical = "registry.k8s.io/test/a:1.0";
    assert_eq!(pull(&d, canonical).await.unwrap(), id);
    let img = status(&d, canonical).await.unwrap();
    assert_eq!(img.repo_tags, [a_ref.clone(), canonical.to_string()]);
    assert!(
        img.repo_digests
            .contains(&format!("registry.k8s.io/test/a@{}", a.manifest.digest))
    );
    assert!(
        !d.log().contains("registry.k8s.io/v2"),
        "the real registry.k8s.io was contacted"
    );

    // Docker schema 2, and a username from "www-data:1004".
    let b_id = pull(&d, &format!("{host}/test/b")).await.unwrap();
    let bs = status(&d, &format!("{host}/test/b:latest")).await.unwrap();
    assert_eq!(
        (bs.id.as_str(), bs.username.as_str(), bs.uid),
        (b_id.as_str(), "www-data", None)
    );

    // An index resolves to its linux/amd64 image; the repo digest is the index's.
    let m_id = pull(&d, &format!("{host}/test/multi:v1")).await.unwrap();
    assert_eq!(m_id, amd.config.digest);
    let ms = status(&d, &m_id).await.unwrap();
    assert_eq!(
        ms.repo_digests,
        [format!("{host}/test/multi@{index_digest}")]
    );
    // ... and by digest too, with no tag.
    remove(&d, &m_id).await;
    let by_digest = format!("{host}/test/multi@{index_digest}");
    assert_eq!(pull(&d, &by_digest).await.unwrap(), m_id);
    let ms = status(&d, &by_digest).await.unwrap();
    assert!(ms.repo_tags.is_empty());

    // ListImages, with and without a filter; verbose status carries the config.
    let all = list(&d).await;
    assert_eq!(all.len(), 3);
    let filtered = d
        .images()
        .await
        .list_images(ListImagesRequest {
            filter: Some(ImageFilter {
                image: spec(canonical),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].id, id);
    let verbose = d
        .images()
        .await
        .image_status(ImageStatusRequest {
            image: spec(&id),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["User"], "1002");
    assert_eq!(info["wasm"], false);

    // ImageFsInfo: the store directory and what it uses.
    let fs = d
        .images()
        .await
        .image_fs_info(ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    let f = &fs.image_filesystems[0];
    assert_eq!(
        f.fs_id.as_ref().unwrap().mountpoint,
        store(&d).display().to_string()
    );
    assert!(f.used_bytes.unwrap().value > 0 && f.inodes_used.unwrap().value > 3);
    assert!(f.timestamp > 0);

    // RemoveImage by one tag removes the image with all its tags, and its layers.
    remove(&d, canonical).await;
    assert_eq!(status(&d, &a_ref).await, None);
    assert_eq!(status(&d, &id).await, None);
    assert_eq!(
        names(&store(&d).join("layers")).len(),
        2,
        "b's and multi's layers stay"
    );
    // Unknown images: an empty status and a successful remove, as the CRI says.
    remove(&d, "registry.k8s.io/never/pulled:1").await;
    remove(&d, &b_id).await;
    remove(&d, &by_digest).await;
    assert!(list(&d).await.is_empty());
    assert!(names(&store(&d).join("layers")).is_empty());
    assert!(names(&store(&d).join("blobs/sha256")).is_empty());

    // The images survive a restart (records in the metadata store).
    pull(&d, canonical).await.unwrap();
    let mut d = d;
    d.stop();
    d.spawn();
    assert_eq!(status(&d, canonical).await.unwrap().id, id);
}

#[tokio::test(flavor = "multi_thread")]
async fn crictl_pull_images_inspecti_rmi() {
    let reg = Registry::start();
    let img = simple_image("crictl", "www-data");
    push(&reg.host(), "e2e/busybox", "1.29", &img).await;
    let d = Daemon::start_with_config(&mirror_config("registry.k8s.io", &reg));
    let name = "registry.k8s.io/e2e/busybox:1.29";

    let out = d.crictl(&["pull", name]);
    assert!(
        out.status.success(),
        "crictl pull: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&img.config.digest));

    let out = d.crictl(&["images", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["images"][0]["repoTags"][0], name);
    assert_eq!(v["images"][0]["username"], "www-data");

    let out = d.crictl(&["inspecti", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status"]["id"], img.config.digest);
    assert_eq!(v["info"]["imageSpec"]["config"]["User"], "www-data");

    let out = d.crictl(&["rmi", name]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = d.crictl(&["images", "-q"]);
    assert!(String::from_utf8_lossy(&out.stdout).trim().is_empty());

    let out = d.crictl(&["imagefsinfo", "-o", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_auth_success_and_failure() {
    // Push to an open registry, then serve the same storage with htpasswd auth.
    let open = Registry::start();
    let img = simple_image("private", "");
    push(&open.host(), "private/app", "v1", &img).await;
    let locked = Registry::start_with(Some(&open.storage), Some(&[("alice", "s3cret")]));
    let d = Daemon::start();
    let name = format!("{}/private/app:v1", locked.host());

    let e = pull(&d, &name).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("refused access"), "{}", e.message());

    let wrong = AuthConfig {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let e = pull_with(&d, &name, Some(wrong)).await.unwrap_err();
    assert!(e.message().contains("refused access"), "{}", e.message());
    assert!(list(&d).await.is_empty());

    let right = AuthConfig {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&d, &name, Some(right)).await.unwrap(),
        img.config.digest
    );
    remove(&d, &name).await;

    // The docker-config `auth` form: base64("user:password").
    let b64 = AuthConfig {
        auth: "YWxpY2U6czNjcmV0".into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&d, &name, Some(b64)).await.unwrap(),
        img.config.digest
    );
}

/// A TCP proxy in front of the registry that, while `cut` is set, drops the connection
/// after `after` bytes of the response to a request for `blob`.
struct CuttingProxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

fn cutting_proxy(upstream: u16, blob: String, after: usize) -> CuttingProxy {
    proxy(upstream, blob, after, false)
}

/// Like `cutting_proxy`, but the response stalls (instead of ending) while `cut` is set.
fn stalling_proxy(upstream: u16, blob: String, after: usize) -> CuttingProxy {
    proxy(upstream, blob, after, true)
}

fn proxy(upstream: u16, blob: String, after: usize, stall: bool) -> CuttingProxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cut = Arc::new(AtomicBool::new(true));
    let c = cut.clone();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let armed = Arc::new(AtomicBool::new(false));
            let (c1, s1) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (armed1, blob1) = (armed.clone(), blob.clone());
            std::thread::spawn(move || {
                pipe(c1, s1, |chunk| {
                    if String::from_utf8_lossy(chunk).contains(&format!("/blobs/{blob1}")) {
                        armed1.store(true, Ordering::SeqCst);
                    }
                    true
                })
            });
            let c = c.clone();
            std::thread::spawn(move || {
                let mut sent = 0;
                pipe(server, client, |chunk| {
                    if armed.load(Ordering::SeqCst) && c.load(Ordering::SeqCst) {
                        sent += chunk.len();
                        if !stall {
                            return sent < after;
                        }
                        while sent >= after && c.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    true
                })
            });
        }
    });
    CuttingProxy { port, cut }
}

/// Copies `from` to `to` while `keep` says so, then shuts both down.
fn pipe(mut from: TcpStream, mut to: TcpStream, mut keep: impl FnMut(&[u8]) -> bool) {
    use std::io::Read;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !keep(&buf[..n]) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_pulls_leave_nothing_and_the_next_pull_succeeds() {
    let reg = Registry::start();
    // Two layers: a small one that will make it, and a big one that is cut mid-blob.
    let img = image(
        &[
            (tar_of(&[("small", b"fine")]), Compression::Gzip),
            (tar_of(&[("big", &noise(4 << 20, 7))]), Compression::Gzip),
        ],
        "",
        "amd64",
        false,
    );
    push(&reg.host(), "flaky/app", "v1", &img).await;
    let proxy = cutting_proxy(reg.port, img.layers[1].digest.clone(), 256 * 1024);
    let d = Daemon::start();
    let name = format!("127.0.0.1:{}/flaky/app:v1", proxy.port);

    let e = pull(&d, &name).await.unwrap_err();
    assert!(
        e.message().contains(&img.layers[1].digest),
        "{}",
        e.message()
    );
    assert!(list(&d).await.is_empty());
    assert_nothing_left(&d, 0);
    assert!(names(&store(&d).join("blobs/sha256")).is_empty());

    proxy.cut.store(false, Ordering::SeqCst);
    assert_eq!(pull(&d, &name).await.unwrap(), img.config.digest);
    assert_eq!(names(&store(&d).join("layers")).len(), 2);
    assert!(names(&store(&d).join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_killed_mid_pull_leaves_nothing_after_restart() {
    let reg = Registry::start();
    let img = image(
        &[(tar_of(&[("big", &noise(4 << 20, 5))]), Compression::Gzip)],
        "",
        "amd64",
        false,
    );
    push(&reg.host(), "crash/app", "v1", &img).await;
    let proxy = stalling_proxy(reg.port, img.layers[0].digest.clone(), 512 * 1024);
    let mut d = Daemon::start();
    let name = format!("127.0.0.1:{}/crash/app:v1", proxy.port);
    let mut client = d.images().await;
    let n = name.clone();
    let pulling = tokio::spawn(async move {
        client
            .pull_image(PullImageRequest {
                image: spec(&n),
                ..Default::default()
            })
            .await
    });
    // Wait until the layer is being unpacked into its temp dir, then crash.
    let tmp = store(&d).join("tmp");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !names(&tmp).iter().any(|n| n.starts_with("layer-")) {
        assert!(
            Instant::now() < deadline,
            "the pull never started unpacking"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.kill9();
    assert!(pulling.await.unwrap().is_err());
    assert!(
        !names(&tmp).is_empty(),
        "the crash left a partial layer behind, as a crash does"
    );

    proxy.cut.store(false, Ordering::SeqCst);
    d.spawn();
    assert!(list(&d).await.is_empty());
    assert_nothing_left(&d, 0);
    assert_eq!(pull(&d, &name).await.unwrap(), img.config.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_with_the_wrong_digest_is_refused() {
    let reg = Registry::start();
    let img = image(
        &[(tar_of(&[("f", &noise(64 * 1024, 3))]), Compression::None)],
        "",
        "amd64",
        false,
    );
    push(&reg.host(), "bad/app", "v1", &img).await;
    // Same length, different bytes: only the digest can tell.
    let data = reg.blob_data(&img.layers[0].digest);
    let good = std::fs::read(&data).unwrap();
    let mut evil = good.clone();
    let last = evil.len() - 2000;
    evil[last] ^= 0xff;
    std::fs::write(&data, &evil).unwrap();

    let d = Daemon::start();
    let name = format!("{}/bad/app:v1", reg.host());
    let e = pull(&d, &name).await.unwrap_err();
    assert!(e.message().contains("digest"), "{}", e.message());
    assert!(list(&d).await.is_empty());
    assert_nothing_left(&d, 0);

    std::fs::write(&data, &good).unwrap();
    assert_eq!(pull(&d, &name).await.unwrap(), img.config.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_layer_whose_diff_id_does_not_match_the_config_is_refused() {
    let reg = Registry::start();
    let mut img = simple_image("diff", "");
    // The config claims other uncompressed content than the layer has.
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha256(b"something else")]},
    }))
    .unwrap();
    img.config = Blob {
        digest: sha256(&config),
        data: config,
        media_type: "application/vnd.oci.image.config.v1+json".into(),
    };
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": img.config.media_type, "digest": img.config.digest, "size": img.config.data.len()},
        "layers": [{"mediaType": img.layers[0].media_type, "digest": img.layers[0].digest, "size": img.layers[0].data.len()}],
    }))
    .unwrap();
    img.manifest = Blob {
        digest: sha256(&manifest),
        data: manifest,
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
    };
    push(&reg.host(), "diff/app", "v1", &img).await;
    let d = Daemon::start();
    let e = pull(&d, &format!("{}/diff/app:v1", reg.host()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("the config says"), "{}", e.message());
    assert!(list(&d).await.is_empty());
    assert_nothing_left(&d, 0);
    assert!(names(&store(&d).join("blobs/sha256")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pulls_of_one_image_do_the_work_once() {
    let reg = Registry::start();
    let img = image(
        &[
            (tar_of(&[("a", &noise(2 << 20, 11))]), Compression::Gzip),
            (tar_of(&[("b", &noise(2 << 20, 13))]), Compression::Zstd),
        ],
        "",
        "amd64",
        false,
    );
    push(&reg.host(), "busy/app", "v1", &img).await;
    let d = Daemon::start();
    let name = format!("{}/busy/app:v1", reg.host());
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let mut c = d.images().await;
        let name = name.clone();
        tasks.push(tokio::spawn(async move {
            c.pull_image(PullImageRequest {
                image: spec(&name),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().image_ref)
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), img.config.digest);
    }
    let log = d.log();
    for l in &img.layers {
        let n = log
            .lines()
            .filter(|line| line.contains("layer pulled") && line.contains(&l.digest))
            .count();
        assert_eq!(n, 1, "layer {} fetched {n} times", l.digest);
    }
    assert_eq!(list(&d).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn malicious_layers_are_refused_or_contained() {
    let reg = Registry::start();
    let d = Daemon::start();
    // Outside the store but inside the daemon's temp dir: nothing may appear here.
    let outside = d.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let o = outside.display().to_string();

    type Layer = Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>;
    let cases: Vec<(&str, Layer, bool)> = vec![
        (
            "traversal",
            Box::new(|b| {
                raw_entry(
                    b,
                    "../../outside/pwned",
                    tar::EntryType::Regular,
                    None,
                    b"x",
                )
            }),
            true,
        ),
        (
            "absolute",
            {
                let o = o.clone();
                Box::new(move |b| {
                    raw_entry(
                        b,
                        &format!("{o}/pwned"),
                        tar::EntryType::Regular,
                        None,
                        b"x",
                    )
                })
            },
            false,
        ),
        (
            "symlink escape then write through it",
            {
                let o = o.clone();
                Box::new(move |b| {
                    raw_entry(b, "evil", tar::EntryType::Symlink, Some(&o), b"");
                    raw_entry(b, "evil/pwned", tar::EntryType::Regular, None, b"x");
                })
            },
            false,
        ),
        (
            "hardlink to outside",
            {
                let o = o.clone();
                Box::new(move |b| {
                    std::fs::write(format!("{o}/target"), b"t").unwrap();
                    raw_entry(
                        b,
                        "lnk",
                        tar::EntryType::Link,
                        Some(&format!("{o}/target")),
                        b"",
                    );
                })
            },
            true,
        ),
        (
            "whiteout of ../x",
            Box::new(|b| raw_entry(b, "a/../../.wh.outside", tar::EntryType::Regular, None, b"")),
            true,
        ),
        (
            "device node",
            {
                let o = o.clone();
                Box::new(move |b| {
                    raw_entry(b, &format!("{o}/null"), tar::EntryType::Char, None, b"")
                })
            },
            false,
        ),
    ];
    for (i, (what, layer, refused)) in cases.into_iter().enumerate() {
        let mut b = tar::Builder::new(Vec::new());
        layer(&mut b);
        let tar = b.into_inner().unwrap();
        let img = image(&[(tar, Compression::Gzip)], "", "amd64", false);
        let repo = format!("evil/case{i}");
        push(&reg.host(), &repo, "v1", &img).await;
        let r = pull(&d, &format!("{}/{repo}:v1", reg.host())).await;
        if refused {
            let e = r.expect_err(what);
            assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{what}: {e:?}");
            assert!(
                e.message().contains("unsafe layer"),
                "{what}: {}",
                e.message()
            );
        }
        let mut left = names(&outside);
        left.remove("target");
        assert!(left.is_empty(), "{what}: written outside: {left:?}");
        if let Ok(target) = std::fs::metadata(outside.join("target")) {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(target.nlink(), 1, "{what}: hardlinked from the layer");
        }
        assert!(
            names(&store(&d).join("tmp")).is_empty(),
            "{what}: tmp left behind"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn leftovers_of_interrupted_pulls_are_removed_on_start() {
    let reg = Registry::start();
    let img = simple_image("lost", "");
    push(&reg.host(), "lost/app", "v1", &img).await;
    let name = format!("{}/lost/app:v1", reg.host());
    let mut d = Daemon::start();
    pull(&d, &name).await.unwrap();
    d.stop();
    let s = store(&d);
    std::fs::create_dir_all(s.join("tmp/layer-123-0/usr/bin")).unwrap();
    std::fs::write(s.join("tmp/blob-123-1"), b"partial").unwrap();
    let orphan = s.join("layers").join("ab".repeat(32));
    std::fs::create_dir_all(orphan.join("etc")).unwrap();
    // The image's own layer vanishes while berth is down.
    let layer = s.join("layers").join(
        &sha256(&tar_of(&[
            ("bin/marker", b"lost"),
            ("etc/passwd", b"root:x:0:0::/:/bin/sh\n"),
        ]))[7..],
    );
    assert!(layer.exists());
    std::fs::remove_dir_all(&layer).unwrap();
    d.spawn();
    // The socket is bound before the store opens: one answered RPC means it has.
    assert_eq!(
        status(&d, &name).await,
        None,
        "an image without its layer was kept"
    );
    assert!(names(&s.join("tmp")).is_empty());
    assert!(
        !orphan.exists(),
        "an unreferenced layer survived the restart"
    );
    assert_eq!(pull(&d, &name).await.unwrap(), img.config.digest);
    assert!(layer.join("bin/marker").exists());
}

fn berth_import(d: &Daemon, path: &Path) -> std::process::Output {
    Command::new(common::berth_bin())
        .args(["image", "import"])
        .arg(path)
        .arg("--config")
        .arg(&d.config_path)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn berth_image_import_oci_layout_and_docker_archive() {
    let mut d = Daemon::start();
    let work = tempfile::tempdir().unwrap();

    // An OCI image layout directory.
    let oci = simple_image("airgap-oci", "1002");
    let layout = work.path().join("layout");
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    for b in oci.layers.iter().chain([&oci.config, &oci.manifest]) {
        std::fs::write(layout.join("blobs/sha256").join(&b.digest[7..]), &b.data).unwrap();
    }
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": oci.manifest.media_type, "digest": oci.manifest.digest,
        "size": oci.manifest.data.len(),
        "annotations": {"io.containerd.image.name": "registry.k8s.io/airgap/oci:v1"}
    }]});
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();

    // A gzipped `docker save` tarball: manifest.json, the config, an uncompressed layer tar.
    let layer_tar = tar_of(&[("bin/docker-marker", b"docker save")]);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"User": "www-data"},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&layer_tar)]},
    }))
    .unwrap();
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    let manifest = serde_json::json!([{
        "Config": config_name, "RepoTags": ["airgap/docker:v2"], "Layers": ["abc/layer.tar"]
    }]);
    let mut archive = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("manifest.json", manifest.to_string().into_bytes()),
        (config_name.as_str(), config.clone()),
        ("abc/layer.tar", layer_tar.clone()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        archive.append_data(&mut h, name, &data[..]).unwrap();
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&archive.into_inner().unwrap()).unwrap();
    let tarball = work.path().join("docker.tar.gz");
    std::fs::write(&tarball, gz.finish().unwrap()).unwrap();

    // While berth runs, the store is locked: a clear refusal.
    let out = berth_import(&d, &layout);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));

    d.stop();
    for (path, id) in [(&layout, &oci.config.digest), (&tarball, &sha256(&config))] {
        let out = berth_import(&d, path);
        assert!(
            out.status.success(),
            "import {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(id.as_str()));
    }
    d.spawn();
    let o = status(&d, "registry.k8s.io/airgap/oci:v1")
        .await
        .expect("imported OCI layout");
    assert_eq!(
        (o.id.as_str(), o.uid.map(|u| u.value)),
        (oci.config.digest.as_str(), Some(1002))
    );
    assert_eq!(
        o.repo_digests,
        [format!(
            "registry.k8s.io/airgap/oci@{}",
            oci.manifest.digest
        )]
    );
    let dk = status(&d, "docker.io/airgap/docker:v2")
        .await
        .expect("imported docker archive");
    assert_eq!(dk.username, "www-data");
    let layer = store(&d).join("layers").join(&sha256(&layer_tar)[7..]);
    assert_eq!(
        std::fs::read(layer.join("bin/docker-marker")).unwrap(),
        b"docker save"
    );
    assert!(names(&store(&d).join("tmp")).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn wasm_images_are_recorded_as_wasm() {
    let reg = Registry::start();
    let host = reg.host();
    // A wasi/wasm image whose one layer is a Wasm module (kept as a blob, not unpacked).
    let module = b"\0asm\x01\0\0\0".to_vec();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "wasm", "os": "wasi",
        "config": {"Entrypoint": ["/hello.wasm"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&module)]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len()},
        "layers": [{"mediaType": "application/wasm", "digest": sha256(&module), "size": module.len()}],
    }))
    .unwrap();
    let wasm = TestImage {
        config: Blob {
            digest: sha256(&config),
            data: config,
            media_type: String::new(),
        },
        layers: vec![Blob {
            digest: sha256(&module),
            data: module.clone(),
            media_type: "application/wasm".into(),
        }],
        manifest: Blob {
            digest: sha256(&manifest),
            data: manifest,
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        },
    };
    let native = simple_image("native", "");
    push_index(
        &host,
        "wasm/hello",
        "v1",
        &[(&native, "linux", "amd64"), (&wasm, "wasi", "wasm")],
    )
    .await;
    let d = Daemon::start();
    let name = format!("{host}/wasm/hello:v1");

    // A Wasm runtime handler selects the wasi/wasm image of the index.
    let id = d
        .images()
        .await
        .pull_image(PullImageRequest {
            image: Some(ImageSpec {
                image: name.clone(),
                runtime_handler: "wasmtime".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .image_ref;
    assert_eq!(id, wasm.config.digest);
    let verbose = d
        .images()
        .await
        .image_status(ImageStatusRequest {
            image: spec(&id),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["wasm"], true);
    assert_eq!(info["platform"]["os"], "wasi");
    assert_eq!(info["layers"][0]["media_type"], "application/wasm");
    assert_eq!(info["layers"][0]["format"], "wasm");
    let blob = store(&d)
        .join("blobs/sha256")
        .join(&wasm.layers[0].digest[7..]);
    assert_eq!(std::fs::read(blob).unwrap(), module);
    assert!(names(&store(&d).join("layers")).is_empty());

    // Without it, the same name is the native image.
    assert_eq!(pull(&d, &name).await.unwrap(), native.config.digest);
}

/// An overlay mount, unmounted on drop.
struct Overlay(PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn layers_under_a_mounted_rootfs_survive_remove_image() {
    let reg = Registry::start();
    let img = simple_image("in-use", "");
    push(&reg.host(), "busy/rootfs", "v1", &img).await;
    let mut d = Daemon::start();
    let name = format!("{}/busy/rootfs:v1", reg.host());
    pull(&d, &name).await.unwrap();
    let layers = names(&store(&d).join("layers"));
    let layer = store(&d).join("layers").join(layers.first().unwrap());

    // A container's rootfs: the layer as an overlay lowerdir.
    let work = tempfile::tempdir().unwrap();
    let (upper, wdir, target) = (
        work.path().join("u"),
        work.path().join("w"),
        work.path().join("m"),
    );
    for p in [&upper, &wdir, &target] {
        std::fs::create_dir(p).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        layer.display(),
        upper.display(),
        wdir.display()
    );
    let st = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &opts])
        .arg(&target)
        .status()
        .unwrap();
    assert!(st.success(), "mount overlay");
    let mounted = Overlay(target.clone());

    remove(&d, &name).await;
    assert_eq!(status(&d, &name).await, None);
    assert!(layer.exists(), "a mounted layer was deleted");
    assert_eq!(std::fs::read(target.join("bin/marker")).unwrap(), b"in-use");

    // Once the rootfs is gone, the next collection (here: at start) frees the layer.
    drop(mounted);
    d.stop();
    d.spawn();
    assert!(list(&d).await.is_empty());
    assert!(!layer.exists(), "an unused layer survived");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_tag_follows_the_registry() {
    let reg = Registry::start();
    let (old, new) = (simple_image("old", ""), simple_image("new", ""));
    let d = Daemon::start();
    let name = format!("{}/moving/app:latest", reg.host());
    push(&reg.host(), "moving/app", "latest", &old).await;
    assert_eq!(pull(&d, &name).await.unwrap(), old.config.digest);
    assert_eq!(
        pull(&d, &name).await.unwrap(),
        old.config.digest,
        "a re-pull is idempotent"
    );
    assert_eq!(status(&d, &name).await.unwrap().repo_tags.len(), 1);

    push(&reg.host(), "moving/app", "latest", &new).await;
    assert_eq!(pull(&d, &name).await.unwrap(), new.config.digest);
    assert_eq!(status(&d, &name).await.unwrap().id, new.config.digest);
    // The old image keeps its digest but loses the tag, as with containerd.
    let o = status(&d, &old.config.digest).await.unwrap();
    assert!(o.repo_tags.is_empty(), "{:?}", o.repo_tags);
    assert_eq!(
        o.repo_digests,
        [format!("{}/moving/app@{}", reg.host(), old.manifest.digest)]
    );
    assert_eq!(list(&d).await.len(), 2);
}

const ACCESS: &str = "access-8f3a";

/// A token-auth front for an open registry, like Docker Hub's: requests without
/// `Authorization: Bearer ACCESS` get a bearer challenge, `POST /token` trades the refresh
/// token `refresh` for ACCESS, and authorised requests pass through, one per connection.
fn token_gate(upstream: u16, refresh: &'static str) -> u16 {
    use std::io::Read;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        // A TLS ClientHello (berth tries TLS first on loopback): plain HTTP only.
                        Ok(_) if chunk[0] == 0x16 && buf.is_empty() => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or_default().to_string();
                let header = |name: &str| {
                    head.split("\r\n").find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                };
                let respond = |conn: &mut TcpStream, status: &str, extra: &str, body: &str| {
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
                        body.len()
                    );
                };
                if request_line.starts_with("POST /token") {
                    let len: usize = header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
                    if body.contains("grant_type=refresh_token")
                        && body.contains(&format!("refresh_token={refresh}"))
                    {
                        respond(
                            &mut conn,
                            "200 OK",
                            "",
                            &format!("{{\"access_token\":\"{ACCESS}\"}}"),
                        );
                    } else {
                        respond(
                            &mut conn,
                            "401 Unauthorized",
                            "",
                            "{\"error\":\"invalid_grant\"}",
                        );
                    }
                    return;
                }
                if header("authorization").as_deref() != Some(&format!("Bearer {ACCESS}")) {
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"berth-test\"\r\n"
                    );
                    respond(
                        &mut conn,
                        "401 Unauthorized",
                        &challenge,
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                    );
                    return;
                }
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let mut forwarded = format!("{request_line}\r\nConnection: close\r\n");
                for l in lines
                    .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
                {
                    forwarded += l;
                    forwarded += "\r\n";
                }
                forwarded += "\r\n";
                if up.write_all(forwarded.as_bytes()).is_err()
                    || up.write_all(&buf[head_end..]).is_err()
                {
                    return;
                }
                let (c2, u2) = (conn.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || pipe(c2, u2, |_| true));
                pipe(up, conn, |_| true);
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_token_auth_with_identity_and_registry_tokens() {
    let reg = Registry::start();
    let img = simple_image("token", "");
    push(&reg.host(), "tok/app", "v1", &img).await;
    let gate = token_gate(reg.port, "refresh-ok");
    let d = Daemon::start();
    let name = format!("127.0.0.1:{gate}/tok/app:v1");

    let e = pull(&d, &name).await.unwrap_err();
    assert!(e.message().contains("refused access"), "{}", e.message());
    let bad = AuthConfig {
        identity_token: "refresh-bad".into(),
        ..Default::default()
    };
    let e = pull_with(&d, &name, Some(bad)).await.unwrap_err();
    assert!(
        e.message().contains("refused the identity token"),
        "{}",
        e.message()
    );
    assert!(list(&d).await.is_empty());

    // The OAuth2 refresh-token exchange (docker login's identity token).
    let ok = AuthConfig {
        identity_token: "refresh-ok".into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&d, &name, Some(ok)).await.unwrap(),
        img.config.digest
    );
    remove(&d, &name).await;
    // A registry token is sent as the bearer token itself.
    let direct = AuthConfig {
        registry_token: ACCESS.into(),
        ..Default::default()
    };
    assert_eq!(
        pull_with(&d, &name, Some(direct)).await.unwrap(),
        img.config.digest
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn short_names_are_docker_io_library_latest() {
    let reg = Registry::start();
    let img = simple_image("hub", "");
    push(&reg.host(), "library/busybox", "latest", &img).await;
    let d = Daemon::start_with_config(&format!(
        "{}mirrors_only = true\n",
        mirror_config("docker.io", &reg)
    ));
    assert_eq!(pull(&d, "busybox").await.unwrap(), img.config.digest);
    let s = status(&d, "docker.io/library/busybox:latest")
        .await
        .unwrap();
    assert_eq!(s.repo_tags, ["docker.io/library/busybox:latest"]);
    assert_eq!(
        s.repo_digests,
        [format!("docker.io/library/busybox@{}", img.manifest.digest)]
    );
    for r in [
        "busybox",
        "busybox:latest",
        "library/busybox",
        "index.docker.io/library/busybox",
    ] {
        assert_eq!(status(&d, r).await.as_ref(), Some(&s), "status by {r}");
    }
}
