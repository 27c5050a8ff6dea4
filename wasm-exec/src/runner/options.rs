//! `berth __wasm-run` options: parsed here, and built by the daemon with
//! [`RunOptions::to_args`], so both sides agree on one syntax.
//!
//! ```text
//! berth __wasm-run [--module PATH] [--cwd DIR] [--memory-limit BYTES]
//!                  [--oom-marker PATH] [--termination-log PATH]
//!                  [--precompiled PATH | --precompiled-fd N] [--precompiled-sha256 HEX]
//!                  [--cache-dir DIR] -- ARGV0 [ARGS...]
//! ```
//!
//! The guest's environment is the runner's own (the monitor execs it with the container
//! env), never a flag: flags are visible in `/proc/<pid>/cmdline`, secrets must not be.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// Where the daemon's precompiled artifact comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSource {
    /// A path the runner can open.
    Path(PathBuf),
    /// A descriptor inherited across exec, opened by the daemon side before pivot_root.
    Fd(RawFd),
}

/// A precompiled artifact handed to the runner, with the sha256 it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrecompiledArtifact {
    pub source: ArtifactSource,
    pub sha256: String,
}

/// One guest run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// The module or component (as the runner sees it). Defaults to `argv[0]`.
    pub module: PathBuf,
    /// The guest's argv, entrypoint first.
    pub argv: Vec<String>,
    /// The guest's environment.
    pub env: Vec<(String, String)>,
    /// Preopened as `.`; the runner's working directory if `None`.
    pub cwd: Option<PathBuf>,
    /// Cap on the guest's linear memories, in bytes.
    pub memory_limit: Option<u64>,
    /// Written (`OOMKilled`) when the guest exceeds `memory_limit`.
    pub oom_marker: Option<PathBuf>,
    /// Receives the reason of an abnormal end (trap, memory limit), if still empty.
    pub termination_log: Option<PathBuf>,
    /// The daemon's precompiled artifact; compiled in-process (or via `cache_dir`) if
    /// absent or rejected.
    pub precompiled: Option<PrecompiledArtifact>,
    /// A compile cache the runner may use directly (host-side runs).
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("{0} needs a value")]
    MissingValue(String),
    #[error("invalid value {value:?} for {flag}")]
    InvalidValue { flag: String, value: String },
    #[error("unknown option {0}")]
    UnknownOption(String),
    #[error("no module given (expected `-- ARGV0 [ARGS...]`)")]
    NoArgv,
    #[error("--precompiled-sha256 is required with --precompiled or --precompiled-fd")]
    MissingSha256,
}

impl RunOptions {
    /// Parses the arguments after `__wasm-run`; the environment comes from `env`.
    pub fn parse(
        args: impl IntoIterator<Item = OsString>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<RunOptions, UsageError> {
        let mut opts = RunOptions {
            env: env
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
            ..RunOptions::default()
        };
        let mut module = None;
        let mut source = None;
        let mut sha256 = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let flag = arg.to_string_lossy().into_owned();
            if flag == "--" {
                break;
            }
            let mut value = || -> Result<OsString, UsageError> {
                args.next()
                    .ok_or_else(|| UsageError::MissingValue(flag.clone()))
            };
            match flag.as_str() {
                "--module" => module = Some(PathBuf::from(value()?)),
                "--cwd" => opts.cwd = Some(value()?.into()),
                "--memory-limit" => opts.memory_limit = Some(number(&flag, value()?)?),
                "--oom-marker" => opts.oom_marker = Some(value()?.into()),
                "--termination-log" => opts.termination_log = Some(value()?.into()),
                "--precompiled" => source = Some(ArtifactSource::Path(value()?.into())),
                "--precompiled-fd" => source = Some(ArtifactSource::Fd(number(&flag, value()?)?)),
                "--precompiled-sha256" => sha256 = Some(value()?.to_string_lossy().into_owned()),
                "--cache-dir" => opts.cache_dir = Some(value()?.into()),
                _ => return Err(UsageError::UnknownOption(flag)),
            }
        }
        opts.argv = args.map(|a| a.to_string_lossy().into_owned()).collect();
        let argv0 = opts.argv.first().ok_or(UsageError::NoArgv)?;
        opts.module = module.unwrap_or_else(|| PathBuf::from(argv0));
        opts.precompiled = match (source, sha256) {
            (Some(source), Some(sha256)) => Some(PrecompiledArtifact { source, sha256 }),
            (Some(_), None) => return Err(UsageError::MissingSha256),
            (None, _) => None,
        };
        Ok(opts)
    }

    /// The arguments that [`parse`](Self::parse) turns back into these options (minus
    /// the environment, which the caller passes as the process environment).
    pub fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |flag: &str, value: OsString| {
            args.push(flag.into());
            args.push(value);
        };
        if self.argv.first().map(PathBuf::from).as_ref() != Some(&self.module) {
            push("--module", self.module.clone().into());
        }
        if let Some(cwd) = &self.cwd {
            push("--cwd", cwd.clone().into());
        }
        if let Some(limit) = self.memory_limit {
            push("--memory-limit", limit.to_string().into());
        }
        if let Some(path) = &self.oom_marker {
            push("--oom-marker", path.clone().into());
        }
        if let Some(path) = &self.termination_log {
            push("--termination-log", path.clone().into());
        }
        if let Some(artifact) = &self.precompiled {
            match &artifact.source {
                ArtifactSource::Path(path) => push("--precompiled", path.clone().into()),
                ArtifactSource::Fd(fd) => push("--precompiled-fd", fd.to_string().into()),
            }
            push("--precompiled-sha256", artifact.sha256.clone().into());
        }
        if let Some(dir) = &self.cache_dir {
            push("--cache-dir", dir.clone().into());
        }
        args.push("--".into());
        args.extend(self.argv.iter().map(OsString::from));
        args
    }
}

fn number<T: std::str::FromStr>(flag: &str, value: OsString) -> Result<T, UsageError> {
    let value = value.to_string_lossy();
    value.parse().map_err(|_| UsageError::InvalidValue {
        flag: flag.to_string(),
        value: value.into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn parses_flags_argv_and_env() {
        let opts = RunOptions::parse(
            os(&[
                "--memory-limit",
                "33554432",
                "--oom-marker",
                "/oom",
                "--",
                "/hello.wasm",
                "a",
                "--b",
            ]),
            [("K".into(), "V".into())],
        )
        .unwrap();
        assert_eq!(opts.module, PathBuf::from("/hello.wasm"));
        assert_eq!(opts.argv, ["/hello.wasm", "a", "--b"]);
        assert_eq!(opts.env, [("K".to_string(), "V".to_string())]);
        assert_eq!(opts.memory_limit, Some(32 << 20));
        assert_eq!(opts.oom_marker, Some(PathBuf::from("/oom")));
    }

    #[test]
    fn round_trips_through_to_args() {
        let opts = RunOptions {
            module: "/app/main.wasm".into(),
            argv: vec!["main".into(), "x".into()],
            cwd: Some("/app".into()),
            memory_limit: Some(1 << 20),
            oom_marker: Some("/run/oom".into()),
            termination_log: Some("/dev/termination-log".into()),
            precompiled: Some(PrecompiledArtifact {
                source: ArtifactSource::Fd(3),
                sha256: "ab".repeat(32),
            }),
            cache_dir: None,
            env: vec![],
        };
        assert_eq!(RunOptions::parse(opts.to_args(), []).unwrap(), opts);
    }

    #[test]
    fn rejects_bad_usage() {
        assert_eq!(RunOptions::parse(os(&["--"]), []), Err(UsageError::NoArgv));
        assert_eq!(
            RunOptions::parse(os(&["--cwd"]), []),
            Err(UsageError::MissingValue("--cwd".into()))
        );
        assert!(matches!(
            RunOptions::parse(os(&["--memory-limit", "lots", "--", "/m"]), []),
            Err(UsageError::InvalidValue { .. })
        ));
        assert_eq!(
            RunOptions::parse(os(&["--precompiled-fd", "3", "--", "/m"]), []),
            Err(UsageError::MissingSha256)
        );
        assert_eq!(
            RunOptions::parse(os(&["--frob", "--", "/m"]), []),
            Err(UsageError::UnknownOption("--frob".into()))
        );
    }
}
