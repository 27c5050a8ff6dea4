//! Per-registry-host settings: mirrors tried before the host itself, and whether the host
//! may be reached over plain HTTP. Modelled on containerd's hosts.toml and CRI-O's
//! registries.conf, but kept in berth's one config file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `[registry]` in the config file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Settings per registry host (`registry.k8s.io`, `docker.io`, `127.0.0.1:5000`, ...).
    pub hosts: BTreeMap<String, RegistryHost>,
}

/// `[registry.hosts."<host>"]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryHost {
    /// Endpoints tried in order before the host itself, e.g. `http://127.0.0.1:5000`
    /// (scheme and host:port; a path is ignored). Images pulled through a mirror keep their
    /// canonical name. Mirrors are asked anonymously: the pull's credentials belong to the
    /// host itself.
    pub mirrors: Vec<String>,
    /// Reach the host itself with unverified TLS, then plain HTTP. Loopback hosts
    /// (`localhost`, `127.x`, `[::1]`) are treated so without this, as containerd does.
    pub insecure: bool,
    /// Never fall back to the host itself when every mirror failed.
    pub mirrors_only: bool,
}

impl RegistryConfig {
    /// Checks every value, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        for (host, h) in &self.hosts {
            if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
                return Err(format!(
                    "registry.hosts.\"{host}\": not a registry host name (expected e.g. registry.k8s.io or 127.0.0.1:5000)"
                ));
            }
            for (i, m) in h.mirrors.iter().enumerate() {
                let rest = m
                    .strip_prefix("http://")
                    .or_else(|| m.strip_prefix("https://"));
                match rest {
                    Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => {}
                    _ => {
                        return Err(format!(
                            "registry.hosts.\"{host}\".mirrors[{i}]: {m:?} is not an http:// or https:// endpoint"
                        ));
                    }
                }
            }
            if h.mirrors_only && h.mirrors.is_empty() {
                return Err(format!(
                    "registry.hosts.\"{host}\".mirrors_only: set, but no mirrors are listed"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirror_must_be_an_http_endpoint() {
        let mut c = RegistryConfig::default();
        c.hosts.insert(
            "registry.k8s.io".into(),
            RegistryHost {
                mirrors: vec!["127.0.0.1:5000".into()],
                ..Default::default()
            },
        );
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("registry.hosts.\"registry.k8s.io\".mirrors[0]"),
            "{e}"
        );
        c.hosts.get_mut("registry.k8s.io").unwrap().mirrors = vec!["http://127.0.0.1:5000".into()];
        c.validate().unwrap();
    }
}
