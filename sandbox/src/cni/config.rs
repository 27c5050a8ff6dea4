//! Network configuration discovery, as libcni does it: the lexically first `.conflist`,
//! `.conf` or `.json` file in the conf dir wins; a single-plugin `.conf` is wrapped into a
//! list. The network is ready only when that config parses and every plugin it names
//! (plus `loopback`, which berth runs first) exists in one of the bin dirs.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// A parsed network configuration list.
#[derive(Debug, Clone)]
pub struct NetworkConfigList {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    /// Each plugin's raw config, in order.
    pub plugins: Vec<Value>,
}

impl NetworkConfigList {
    /// The `type` of each plugin, in order.
    pub fn plugin_types(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str).map(str::to_string))
            .collect()
    }
}

/// Whether pods can be networked, and if not, why (for the NetworkReady condition).
#[derive(Debug, Clone, PartialEq)]
pub enum NetworkReadiness {
    Ready,
    NotReady { reason: String, message: String },
}

#[derive(Deserialize)]
struct RawList {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    name: String,
    plugins: Vec<Value>,
}

/// Loads the network berth would use, and checks that it can be run.
pub fn find_network(
    conf_dir: &Path,
    bin_dirs: &[PathBuf],
) -> (Option<NetworkConfigList>, NetworkReadiness) {
    let not_ready = |reason: &str, message: String| NetworkReadiness::NotReady {
        reason: reason.to_string(),
        message,
    };
    let files = match config_files(conf_dir) {
        Ok(f) => f,
        Err(e) => {
            return (
                None,
                not_ready(
                    "NetworkPluginNotReady",
                    format!("cannot read CNI conf dir {}: {e}", conf_dir.display()),
                ),
            );
        }
    };
    let Some(path) = files.into_iter().next() else {
        return (
            None,
            not_ready(
                "NetworkPluginNotReady",
                format!("no CNI network config found in {}", conf_dir.display()),
            ),
        );
    };
    let list = match load(&path) {
        Ok(l) => l,
        Err(e) => {
            return (
                None,
                not_ready(
                    "NetworkPluginNotReady",
                    format!("CNI config {}: {e}", path.display()),
                ),
            );
        }
    };
    let mut needed = vec!["loopback".to_string()];
    needed.extend(list.plugin_types());
    let missing: Vec<_> = needed
        .iter()
        .filter(|t| find_plugin(bin_dirs, t).is_none())
        .cloned()
        .collect();
    if !missing.is_empty() {
        let dirs: Vec<_> = bin_dirs.iter().map(|d| d.display().to_string()).collect();
        return (
            Some(list),
            not_ready(
                "NetworkPluginNotReady",
                format!(
                    "CNI plugin(s) {} not found in {}",
                    missing.join(", "),
                    dirs.join(":")
                ),
            ),
        );
    }
    (Some(list), NetworkReadiness::Ready)
}

/// Finds an executable plugin binary by type name.
pub fn find_plugin(bin_dirs: &[PathBuf], plugin_type: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    if plugin_type.is_empty() || plugin_type.contains('/') {
        return None;
    }
    bin_dirs.iter().map(|d| d.join(plugin_type)).find(|p| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

fn config_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let path = entry?.path();
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        if matches!(ext, "conflist" | "conf" | "json") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn load(path: &Path) -> Result<NetworkConfigList, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    let is_list =
        path.extension().is_some_and(|e| e == "conflist") || value.get("plugins").is_some();
    let raw = if is_list {
        serde_json::from_value::<RawList>(value).map_err(|e| e.to_string())?
    } else {
        // A single plugin config: the list takes its name and version.
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .ok_or("missing \"name\"")?
            .to_string();
        let cni_version = value
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        RawList {
            cni_version,
            name,
            plugins: vec![value],
        }
    };
    if raw.plugins.is_empty() {
        return Err("the plugin list is empty".into());
    }
    if raw
        .plugins
        .iter()
        .any(|p| p.get("type").and_then(Value::as_str).is_none())
    {
        return Err("a plugin has no \"type\"".into());
    }
    Ok(NetworkConfigList {
        path: path.to_path_buf(),
        name: raw.name,
        cni_version: raw.cni_version,
        plugins: raw.plugins,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn plugin(dir: &Path, name: &str) {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn readiness_needs_config_and_every_plugin() {
        let conf = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let bins = vec![bin.path().to_path_buf()];
        let (_, r) = find_network(conf.path(), &bins);
        assert!(
            matches!(r, NetworkReadiness::NotReady { ref message, .. } if message.contains("no CNI network config"))
        );

        std::fs::write(
            conf.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#,
        )
        .unwrap();
        // A later file must not win over the lexically first one.
        std::fs::write(
            conf.path().join("20-b.conf"),
            r#"{"name":"b","type":"ptp"}"#,
        )
        .unwrap();
        plugin(bin.path(), "bridge");
        let (list, r) = find_network(conf.path(), &bins);
        assert_eq!(list.unwrap().name, "a");
        match r {
            NetworkReadiness::NotReady { message, .. } => {
                assert!(message.contains("loopback, portmap"), "{message}")
            }
            NetworkReadiness::Ready => panic!("plugins are missing"),
        }
        plugin(bin.path(), "portmap");
        plugin(bin.path(), "loopback");
        assert_eq!(find_network(conf.path(), &bins).1, NetworkReadiness::Ready);
    }

    #[test]
    fn single_plugin_conf_becomes_a_list() {
        let conf = tempfile::tempdir().unwrap();
        std::fs::write(
            conf.path().join("99.conf"),
            r#"{"cniVersion":"0.4.0","name":"solo","type":"bridge"}"#,
        )
        .unwrap();
        let (list, _) = find_network(conf.path(), &[]);
        let list = list.unwrap();
        assert_eq!(list.plugin_types(), ["bridge"]);
        assert_eq!(list.cni_version, "0.4.0");
    }
}
