//! Pulling from registries with `oci-client`: mirrors and insecure hosts per registry host,
//! credentials from the CRI request, one pull per image at a time (later callers share the
//! first one's result), and canonical names whatever endpoint served the content.

use std::io;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::digest;
use crate::error::{Error, Result};
use crate::ingest::{BlobSource, Ingest};
use crate::manifest::{self, Descriptor, Document, PlatformChoice};
use crate::record::ImageRecord;
use crate::reference::{ImageRef, Target};
use crate::registry_config::RegistryConfig;
use crate::store::ImageStore;

/// Registry credentials as the CRI's AuthConfig carries them.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Basic {
        username: String,
        password: String,
    },
    /// An OAuth2 refresh token, exchanged at the registry's token service for access.
    IdentityToken(String),
    /// A bearer token for the registry itself.
    RegistryToken(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credentials::IdentityToken(_) => write!(f, "IdentityToken(<redacted>)"),
            Credentials::RegistryToken(_) => write!(f, "RegistryToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// From the CRI AuthConfig fields; `None` when all are empty. `auth` is base64
    /// `user:password`; an identity token is an OAuth2 refresh token.
    pub fn from_auth_config(
        username: &str,
        password: &str,
        auth: &str,
        identity_token: &str,
        registry_token: &str,
    ) -> Result<Option<Self>> {
        if !registry_token.is_empty() {
            return Ok(Some(Credentials::RegistryToken(registry_token.to_string())));
        }
        if !identity_token.is_empty() {
            return Ok(Some(Credentials::IdentityToken(identity_token.to_string())));
        }
        if !auth.is_empty() {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| Error::InvalidArgument(format!("auth.auth is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| Error::InvalidArgument("auth.auth is not UTF-8".into()))?;
            let (u, p) = decoded.split_once(':').ok_or_else(|| {
                Error::InvalidArgument("auth.auth is not base64(user:password)".into())
            })?;
            return Ok(Some(Credentials::Basic {
                username: u.to_string(),
                password: p.to_string(),
            }));
        }
        if !username.is_empty() || !password.is_empty() {
            return Ok(Some(Credentials::Basic {
                username: username.to_string(),
                password: password.to_string(),
            }));
        }
        Ok(None)
    }

    /// Part of the de-duplication key, so no pull shares another's credentials.
    fn fingerprint(&self) -> String {
        match self {
            Credentials::Basic { username, password } => {
                digest::sha256_of(format!("b\0{username}\0{password}").as_bytes())
            }
            Credentials::IdentityToken(t) => digest::sha256_of(format!("i\0{t}").as_bytes()),
            Credentials::RegistryToken(t) => digest::sha256_of(format!("t\0{t}").as_bytes()),
        }
    }

    /// The credentials as oci-client takes them; an identity token is exchanged first.
    async fn to_oci(&self, ep: &Endpoint, image: &ImageRef) -> Result<RegistryAuth> {
        Ok(match self {
            Credentials::IdentityToken(t) => exchange_refresh_token(ep, image, t).await?,
            c => c.to_oci_direct(),
        })
    }

    fn to_oci_direct(&self) -> RegistryAuth {
        match self {
            Credentials::IdentityToken(_) => RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                RegistryAuth::Basic(username.clone(), password.clone())
            }
            Credentials::RegistryToken(t) => RegistryAuth::Bearer(t.clone()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PullRequest {
    pub reference: String,
    pub credentials: Option<Credentials>,
    pub platform: PlatformChoice,
}

/// A finished pull.
#[derive(Debug, Clone)]
pub struct Pulled {
    pub image: Arc<ImageRecord>,
}

/// One place to fetch from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// host[:port] as used in URLs.
    host: String,
    http: bool,
    /// Accept any TLS certificate (insecure hosts).
    any_cert: bool,
    mirror: bool,
}

/// Mirrors first, then the host itself (unless mirrors_only). Loopback and `insecure`
/// hosts are tried over TLS without verification, then plain HTTP, as containerd does.
fn endpoints(cfg: &RegistryConfig, host: &str) -> Vec<Endpoint> {
    let hc = cfg.hosts.get(host).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for m in &hc.mirrors {
        let (http, rest) = match m.strip_prefix("http://") {
            Some(r) => (true, r),
            None => (false, m.strip_prefix("https://").unwrap_or(m)),
        };
        out.push(Endpoint {
            host: rest.split('/').next().unwrap_or(rest).to_string(),
            http,
            any_cert: false,
            mirror: true,
        });
    }
    if !hc.mirrors_only {
        if hc.insecure || is_loopback(host) {
            for http in [false, true] {
                out.push(Endpoint {
                    host: host.to_string(),
                    http,
                    any_cert: true,
                    mirror: false,
                });
            }
        } else {
            out.push(Endpoint {
                host: host.to_string(),
                http: false,
                any_cert: false,
                mirror: false,
            });
        }
    }
    out
}

fn is_loopback(host: &str) -> bool {
    let h = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    h == "localhost" || h.starts_with("127.") || h == "[::1]"
}

impl ImageStore {
    /// Pulls an image; concurrent pulls of the same reference with the same credentials
    /// share one pull. The pull runs to its end even if every caller went away.
    pub async fn pull(self: &Arc<Self>, req: PullRequest) -> Result<Pulled> {
        let image = ImageRef::parse(&req.reference)?;
        let key = format!(
            "{image}\0{}\0{:?}",
            req.credentials
                .as_ref()
                .map(Credentials::fingerprint)
                .unwrap_or_default(),
            req.platform
        );
        let shared = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            match inflight.get(&key) {
                Some(f) => {
                    tracing::debug!(image = %image, "joining a pull in flight");
                    f.clone()
                }
                None => {
                    let store = self.clone();
                    let k = key.clone();
                    let task = tokio::spawn(async move {
                        let r = store.pull_once(image, req.credentials, req.platform).await;
                        store
                            .inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&k);
                        r
                    });
                    let f = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(Error::Storage(format!("pull task failed: {e}")))
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(key, f.clone());
                    f
                }
            }
        };
        shared.await
    }

    async fn pull_once(
        self: &Arc<Self>,
        image: ImageRef,
        creds: Option<Credentials>,
        platform: PlatformChoice,
    ) -> Result<Pulled> {
        let started = std::time::Instant::now();
        let mut last_err = None;
        for ep in endpoints(&self.registry, &image.registry) {
            // Credentials belong to the image's registry; mirrors are asked anonymously.
            let auth = match (&creds, ep.mirror) {
                (Some(c), false) => match c.to_oci(&ep, &image).await {
                    Ok(a) => a,
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                },
                _ => RegistryAuth::Anonymous,
            };
            let client = self.client_for(&ep, creds.as_ref().filter(|_| !ep.mirror))?;
            let src = RegistrySource::new(client, &ep, &image, auth);
            let resolved = match src.resolve(&image, platform).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(image = %image, endpoint = %ep.host, error = %e, "endpoint failed");
                    last_err = Some(e);
                    continue;
                }
            };
            if ep.mirror {
                tracing::info!(image = %image, mirror = %ep.host, "pulling through mirror");
            }
            let result = async {
                let (rec, pin) = Ingest {
                    store: self,
                    source: &src,
                    manifest: &resolved.manifest,
                    manifest_digest: resolved.manifest_digest.clone(),
                    documents: resolved.documents.clone(),
                    label: image.to_string(),
                }
                .run()
                .await?;
                let rec = self.commit(
                    rec,
                    image.tagged(),
                    Some(image.with_digest(&resolved.top_digest)),
                )?;
                drop(pin);
                Ok::<_, Error>(rec)
            }
            .await;
            return match result {
                Ok(rec) => {
                    tracing::info!(image = %image, id = %rec.id, ms = started.elapsed().as_millis() as u64, "image pulled");
                    Ok(Pulled { image: rec })
                }
                Err(e) => {
                    // Layers that made it in before the failure belong to no image.
                    if let Err(ge) = self.gc() {
                        tracing::warn!(error = %ge, "cleanup after a failed pull");
                    }
                    Err(e)
                }
            };
        }
        Err(last_err.unwrap_or_else(|| {
            Error::Registry(format!("no endpoint configured for {}", image.registry))
        }))
    }
}

/// Clients kept at most; beyond, the cache starts over (credentials come and go).
const MAX_CLIENTS: usize = 64;

impl ImageStore {
    /// A client for `ep`, shared by pulls with the same credentials (an oci-client keeps
    /// the first credentials it sees per registry, so never across different ones).
    fn client_for(&self, ep: &Endpoint, creds: Option<&Credentials>) -> Result<Client> {
        let key = format!(
            "{}\0{}\0{}\0{}",
            ep.host,
            ep.http,
            ep.any_cert,
            creds.map(Credentials::fingerprint).unwrap_or_default()
        );
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        // Access tokens from an identity token expire: such pulls get a fresh client.
        let keep = !matches!(creds, Some(Credentials::IdentityToken(_)));
        if let Some(c) = clients.get(&key).filter(|_| keep) {
            return Ok(c.clone());
        }
        let config = ClientConfig {
            protocol: if ep.http {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: ep.any_cert,
            platform_resolver: None,
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            read_timeout: Some(std::time::Duration::from_secs(60)),
            ..Default::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| Error::Registry(format!("registry client: {e}")))?;
        if keep {
            if clients.len() >= MAX_CLIENTS {
                clients.clear();
            }
            clients.insert(key, client.clone());
        }
        Ok(client)
    }
}

struct Resolved {
    /// What the reference resolved to (an index or a manifest): the repo digest.
    top_digest: String,
    manifest_digest: String,
    manifest: manifest::ImageManifest,
    documents: Vec<(String, Vec<u8>)>,
}

struct RegistrySource {
    client: Client,
    /// The repository at this endpoint.
    repo: Reference,
    auth: RegistryAuth,
}

impl RegistrySource {
    fn new(client: Client, ep: &Endpoint, image: &ImageRef, auth: RegistryAuth) -> Self {
        let tag = match &image.target {
            Target::Tag(t) => t.clone(),
            Target::Digest(_) => "latest".into(),
        };
        Self {
            client,
            repo: Reference::with_tag(ep.host.clone(), image.repository.clone(), tag),
            auth,
        }
    }

    fn at(&self, target: &Target) -> Reference {
        match target {
            Target::Tag(t) => Reference::with_tag(
                self.repo.registry().into(),
                self.repo.repository().into(),
                t.clone(),
            ),
            Target::Digest(d) => Reference::with_digest(
                self.repo.registry().into(),
                self.repo.repository().into(),
                d.clone(),
            ),
        }
    }

    async fn manifest(
        &self,
        target: &Target,
        expect_size: Option<u64>,
    ) -> Result<(Vec<u8>, String)> {
        let r = self.at(target);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&r, &self.auth, manifest::ACCEPTED)
            .await
            .map_err(|e| map_oci(e, &r.whole()))?;
        if bytes.len() as u64 > manifest::MAX_DOCUMENT {
            return Err(Error::LimitExceeded(format!(
                "manifest {} is too large",
                r.whole()
            )));
        }
        let got = digest::sha256_of(&bytes);
        if let Target::Digest(d) = target
            && *d != got
        {
            return Err(Error::Verification(format!(
                "manifest {}: content digest is {got}",
                r.whole()
            )));
        }
        if let Some(s) = expect_size
            && s != bytes.len() as u64
        {
            return Err(Error::Verification(format!(
                "manifest {}: {} bytes, the index says {s}",
                r.whole(),
                bytes.len()
            )));
        }
        Ok((bytes.to_vec(), got))
    }

    async fn resolve(&self, image: &ImageRef, platform: PlatformChoice) -> Result<Resolved> {
        let (top, top_digest) = self.manifest(&image.target, None).await?;
        let mut documents = vec![(top_digest.clone(), top.clone())];
        let (manifest, manifest_digest) = match manifest::parse_document(&top, &image.to_string())?
        {
            Document::Image(m) => (m, top_digest.clone()),
            Document::Index(entries) => {
                let pick = manifest::select_platform(&entries, platform).ok_or_else(|| {
                    Error::Unsupported(format!(
                        "{image}: no linux/amd64 or wasi/wasm image in the index"
                    ))
                })?;
                let (bytes, d) = self
                    .manifest(&Target::Digest(pick.digest.clone()), Some(pick.size))
                    .await?;
                let m = match manifest::parse_document(&bytes, &pick.digest)? {
                    Document::Image(m) => m,
                    Document::Index(_) => {
                        return Err(Error::Unsupported(format!("{image}: nested index")));
                    }
                };
                documents.push((d.clone(), bytes));
                (m, d)
            }
        };
        Ok(Resolved {
            top_digest,
            manifest_digest,
            manifest,
            documents,
        })
    }
}

impl BlobSource for RegistrySource {
    fn fetch<'a>(
        &'a self,
        desc: &'a Descriptor,
    ) -> BoxFuture<'a, Result<BoxStream<'static, io::Result<Bytes>>>> {
        async move {
            let s = self
                .client
                .pull_blob_stream(&self.repo, desc.digest.as_str())
                .await
                .map_err(|e| map_oci(e, &desc.digest))?;
            Ok(s.stream.map_err(io::Error::other).boxed())
        }
        .boxed()
    }
}

/// Docker's OAuth2 flow for identity tokens: ask `/v2/` for the bearer challenge, then
/// trade the refresh token for an access token at the realm it names.
async fn exchange_refresh_token(
    ep: &Endpoint,
    image: &ImageRef,
    refresh_token: &str,
) -> Result<RegistryAuth> {
    let unreachable = |e: reqwest::Error| Error::Registry(format!("{}: {e}", ep.host));
    let http = reqwest::Client::builder()
        .danger_accept_invalid_certs(ep.any_cert)
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(unreachable)?;
    let scheme = if ep.http { "http" } else { "https" };
    let res = http
        .get(format!("{scheme}://{}/v2/", ep.host))
        .send()
        .await
        .map_err(unreachable)?;
    let challenge = res
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_bearer_challenge)
        .ok_or_else(|| {
            Error::Unauthorized(format!(
                "{}: an identity token was given, but the registry names no token service",
                ep.host
            ))
        })?;
    let scope = format!("repository:{}:pull", image.repository);
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
        ("client_id", "berth"),
        ("scope", scope.as_str()),
    ];
    if let Some(s) = &challenge.service {
        form.push(("service", s.as_str()));
    }
    let res = http
        .post(&challenge.realm)
        .form(&form)
        .send()
        .await
        .map_err(unreachable)?;
    if !res.status().is_success() {
        return Err(Error::Unauthorized(format!(
            "{}: the token service refused the identity token ({})",
            ep.host,
            res.status()
        )));
    }
    #[derive(serde::Deserialize)]
    struct Token {
        access_token: Option<String>,
        token: Option<String>,
    }
    let t: Token = res.json().await.map_err(unreachable)?;
    t.access_token
        .or(t.token)
        .map(RegistryAuth::Bearer)
        .ok_or_else(|| {
            Error::Unauthorized(format!("{}: the token service returned no token", ep.host))
        })
}

struct BearerChallenge {
    realm: String,
    service: Option<String>,
}

/// `Bearer realm="https://auth/token",service="registry"`.
fn parse_bearer_challenge(h: &str) -> Option<BearerChallenge> {
    let (scheme, params) = h.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, after) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"')?;
                (&q[..end], &q[end + 1..])
            }
            None => after.split_once(',').map_or((after, ""), |(v, r)| (v, r)),
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            _ => {}
        }
        rest = after.trim_start_matches([',', ' ']);
    }
    Some(BearerChallenge {
        realm: realm?,
        service,
    })
}

fn map_oci(e: OciDistributionError, what: &str) -> Error {
    use OciDistributionError as E;
    match &e {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => Error::Unauthorized(format!(
            "{what}: the registry refused access (check the credentials): {e}"
        )),
        E::ImageManifestNotFoundError(_) => Error::NotFound(format!("{what}: not found: {e}")),
        E::RegistryError { envelope, .. } => {
            let codes = format!("{envelope:?}").to_ascii_lowercase();
            if codes.contains("unknown") {
                Error::NotFound(format!("{what}: not found: {e}"))
            } else if codes.contains("denied") || codes.contains("unauthorized") {
                Error::Unauthorized(format!("{what}: {e}"))
            } else {
                Error::Registry(format!("{what}: {e}"))
            }
        }
        E::ServerError { code: 404, .. } => Error::NotFound(format!("{what}: not found: {e}")),
        E::DigestError(_) => Error::Verification(format!("{what}: {e}")),
        _ => Error::Registry(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry_config::RegistryHost;

    #[test]
    fn mirrors_first_then_the_host() {
        let mut cfg = RegistryConfig::default();
        cfg.hosts.insert(
            "registry.k8s.io".into(),
            RegistryHost {
                mirrors: vec!["http://127.0.0.1:5000".into()],
                ..Default::default()
            },
        );
        let eps = endpoints(&cfg, "registry.k8s.io");
        assert_eq!(eps.len(), 2);
        assert_eq!(
            (eps[0].host.as_str(), eps[0].http, eps[0].mirror),
            ("127.0.0.1:5000", true, true)
        );
        assert_eq!(
            (eps[1].host.as_str(), eps[1].http),
            ("registry.k8s.io", false)
        );
        cfg.hosts.get_mut("registry.k8s.io").unwrap().mirrors_only = true;
        assert_eq!(endpoints(&cfg, "registry.k8s.io").len(), 1);
        // Loopback registries are reachable over plain HTTP without configuration.
        let local = endpoints(&RegistryConfig::default(), "127.0.0.1:5000");
        assert!(local.iter().any(|e| e.http));
        assert!(
            !endpoints(&RegistryConfig::default(), "gcr.io")
                .iter()
                .any(|e| e.http)
        );
    }

    #[test]
    fn bearer_challenges() {
        let c = parse_bearer_challenge(
            r#"Bearer realm="https://auth.io/token",service="registry.io",scope="a:b""#,
        )
        .unwrap();
        assert_eq!(
            (c.realm.as_str(), c.service.as_deref()),
            ("https://auth.io/token", Some("registry.io"))
        );
        assert!(parse_bearer_challenge(r#"Basic realm="x""#).is_none());
        assert!(parse_bearer_challenge("Bearer service=x").is_none());
    }

    #[test]
    fn credentials_from_the_cri_fields() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        assert_eq!(
            Credentials::from_auth_config("", "", &b64, "", "").unwrap(),
            Some(Credentials::Basic {
                username: "alice".into(),
                password: "s3cret".into()
            })
        );
        assert_eq!(
            Credentials::from_auth_config("bob", "pw", "", "", "").unwrap(),
            Some(Credentials::Basic {
                username: "bob".into(),
                password: "pw".into()
            })
        );
        assert_eq!(
            Credentials::from_auth_config("", "", "", "", "tok").unwrap(),
            Some(Credentials::RegistryToken("tok".into()))
        );
        assert_eq!(
            Credentials::from_auth_config("", "", "", "", "").unwrap(),
            None
        );
        assert!(Credentials::from_auth_config("", "", "!!", "", "").is_err());
    }
}
