//! berth's configuration: one TOML file (default /etc/berth/config.toml) whose every key
//! has an embedded default, so `berth serve` runs with no file at all. Unknown keys and bad
//! values stop the daemon with an error that names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use image_store::RegistryConfig;
use serde::{Deserialize, Serialize};

pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/config.toml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The CRI socket the kubelet and crictl connect to.
    pub socket: PathBuf,
    /// Persistent data: images, layers, the metadata store.
    pub root_dir: PathBuf,
    /// Runtime state that dies with a reboot: pinned namespaces, container state.
    pub state_dir: PathBuf,
    /// Reported to the kubelet by RuntimeConfig; the kubelet must use the same.
    pub cgroup_driver: CgroupDriver,
    /// Where CDI device specs are read, in order; a later directory's spec of the same
    /// kind wins (CDI's rule: /var/run/cdi, written by drivers, over /etc/cdi).
    pub cdi_spec_dirs: Vec<PathBuf>,
    /// RuntimeClass handlers beside "" and "wasm" that run as the default one does (each
    /// container native or Wasm by the usual signs), e.g. node e2e's `test-handler`.
    pub extra_runtime_handlers: Vec<String>,
    pub cni: CniConfig,
    pub registry: RegistryConfig,
    pub streaming: StreamingConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    /// Where network configs are read from; the lexically first one is used.
    pub conf_dir: PathBuf,
    /// Where plugin binaries are looked up, in order.
    pub bin_dirs: Vec<PathBuf>,
    /// A network config template rendered into `<conf_dir>/10-berth-net.conflist` once the
    /// kubelet sets the node's pod CIDR (UpdateRuntimeConfig); empty: none.
    pub conf_template: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamingConfig {
    /// Address of the exec/attach/port-forward server; port 0 picks a free port.
    pub address: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error, warn, info, debug or trace (debug logs every RPC with its duration).
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            socket: "/run/berth/berth.sock".into(),
            root_dir: "/var/lib/berth".into(),
            state_dir: "/run/berth".into(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            cdi_spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
            extra_runtime_handlers: Vec::new(),
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            streaming: StreamingConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for CniConfig {
    fn default() -> Self {
        Self {
            conf_dir: "/etc/cni/net.d".into(),
            bin_dirs: vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()],
            conf_template: PathBuf::new(),
        }
    }
}

impl Default for StreamingConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:0".into(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Human,
        }
    }
}

/// Command-line values that take precedence over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub socket: Option<PathBuf>,
    pub root_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    /// Loads the effective configuration. An explicitly named file must exist; the default
    /// path may be absent, in which case the embedded defaults apply.
    pub fn load(explicit: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let (path, required) = match explicit {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
        };
        let mut config = match std::fs::read_to_string(&path) {
            Ok(text) => Config::parse(&text).map_err(|message| ConfigError::Parse {
                path: path.display().to_string(),
                message,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Config::default(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                });
            }
        };
        config.apply(overrides);
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(config)
    }

    /// Parses TOML text; the error names the offending key.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    fn apply(&mut self, o: &Overrides) {
        if let Some(s) = &o.socket {
            self.socket = s.clone();
        }
        if let Some(r) = &o.root_dir {
            self.root_dir = r.clone();
        }
        if let Some(s) = &o.state_dir {
            self.state_dir = s.clone();
        }
        if let Some(f) = o.log_format {
            self.log.format = f;
        }
        if let Some(l) = &o.log_level {
            self.log.level = l.clone();
        }
    }

    /// Checks what the types alone cannot, naming the key of the first bad value.
    pub fn validate(&self) -> Result<(), String> {
        for (key, path) in [
            ("socket", &self.socket),
            ("root_dir", &self.root_dir),
            ("state_dir", &self.state_dir),
            ("cni.conf_dir", &self.cni.conf_dir),
        ] {
            if !path.is_absolute() {
                return Err(format!("{key}: {} is not an absolute path", path.display()));
            }
        }
        for (i, d) in self.cni.bin_dirs.iter().enumerate() {
            if !d.is_absolute() {
                return Err(format!(
                    "cni.bin_dirs[{i}]: {} is not an absolute path",
                    d.display()
                ));
            }
        }
        if self.cni.bin_dirs.is_empty() {
            return Err("cni.bin_dirs: at least one directory is needed".into());
        }
        let template = &self.cni.conf_template;
        if !template.as_os_str().is_empty() {
            if !template.is_absolute() {
                return Err(format!(
                    "cni.conf_template: {} is not an absolute path",
                    template.display()
                ));
            }
            crate::runtime::update_runtime_config::check_template(template)
                .map_err(|e| format!("cni.conf_template: {}: {e}", template.display()))?;
        }
        if self.cgroup_driver == CgroupDriver::Systemd {
            return Err("cgroup_driver: \"systemd\" is not supported yet; use \"cgroupfs\"".into());
        }
        if self.streaming.address.parse::<SocketAddr>().is_err() {
            return Err(format!(
                "streaming.address: {:?} is not an IP:port address (e.g. 127.0.0.1:0)",
                self.streaming.address
            ));
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(format!(
                "log.level: {:?} is not one of error, warn, info, debug, trace",
                self.log.level
            ));
        }
        self.registry.validate()
    }

    /// The defaults as a documented TOML file (`berth config default`).
    pub fn default_toml() -> String {
        let body = toml::to_string_pretty(&Config::default()).expect("defaults serialise");
        format!(
            "# berth configuration. Every key is optional: this file shows the defaults.\n\
             # Registry settings go per host, for example:\n\
             #   [registry.hosts.\"registry.k8s.io\"]\n\
             #   mirrors = [\"http://127.0.0.1:5000\"]   # tried in order before the host\n\
             #   insecure = false                       # plain HTTP to the host itself\n\
             #   mirrors_only = false                   # never fall back to the host\n\n{body}"
        )
    }

    /// The metadata store file.
    pub fn meta_store_path(&self) -> PathBuf {
        self.root_dir.join("meta.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn default_toml_round_trips() {
        let text = Config::default_toml();
        assert_eq!(Config::parse(&text).unwrap(), Config::default());
    }

    #[test]
    fn shipped_config_file_parses_and_validates() {
        let text = include_str!("../../deploy/config.toml");
        let c = Config::parse(text).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse("sockett = \"/x\"").unwrap_err();
        assert!(e.contains("sockett"), "{e}");
        let e = Config::parse("[cni]\nconfdir = \"/x\"").unwrap_err();
        assert!(e.contains("confdir"), "{e}");
        let e = Config::parse("[registry.hosts.\"docker.io\"]\nmirror = []").unwrap_err();
        assert!(e.contains("mirror"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = Config::parse("cgroup_driver = \"cgroupv3\"").unwrap_err();
        assert!(e.contains("cgroup_driver"), "{e}");
        let e = Config::parse("[log]\nformat = \"xml\"").unwrap_err();
        assert!(e.contains("format"), "{e}");
        let e = Config::parse("socket = 5").unwrap_err();
        assert!(e.contains("socket"), "{e}");

        let mut c = Config::default();
        c.log.level = "loud".into();
        assert!(c.validate().unwrap_err().starts_with("log.level"));
        let c = Config {
            root_dir: "relative".into(),
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().starts_with("root_dir"));
        let mut c = Config::default();
        c.streaming.address = "localhost".into();
        assert!(c.validate().unwrap_err().starts_with("streaming.address"));
    }

    #[test]
    fn registry_hosts_parse() {
        let c = Config::parse(
            "[registry.hosts.\"registry.k8s.io\"]\nmirrors = [\"http://127.0.0.1:5000\"]\n\
             [registry.hosts.\"127.0.0.1:5000\"]\ninsecure = true\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.registry.hosts["registry.k8s.io"].mirrors,
            ["http://127.0.0.1:5000"]
        );
        assert!(c.registry.hosts["127.0.0.1:5000"].insecure);
    }

    #[test]
    fn overrides_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "socket = \"/a.sock\"\nroot_dir = \"/a\"\n").unwrap();
        let o = Overrides {
            socket: Some("/b.sock".into()),
            ..Default::default()
        };
        let c = Config::load(Some(&f), &o).unwrap();
        assert_eq!(c.socket, PathBuf::from("/b.sock"));
        assert_eq!(c.root_dir, PathBuf::from("/a"));
    }

    #[test]
    fn an_explicit_file_must_exist() {
        let e = Config::load(
            Some(Path::new("/nonexistent/berth.toml")),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/berth.toml"));
    }
}
