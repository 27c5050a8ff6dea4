//! `berth`: the daemon and its small command-line companions.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cri_server::config::{Config, LogFormat, Overrides};

#[derive(Parser)]
#[command(
    name = "berth",
    version,
    about = "A Kubernetes CRI runtime for native Linux and WebAssembly containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the CRI on a unix socket.
    Serve {
        /// Configuration file [default: /etc/berth/config.toml, optional]
        #[arg(long)]
        config: Option<PathBuf>,
        /// CRI socket path (overrides `socket`)
        #[arg(long)]
        socket: Option<PathBuf>,
        /// Persistent data directory (overrides `root_dir`)
        #[arg(long)]
        root: Option<PathBuf>,
        /// Runtime state directory (overrides `state_dir`)
        #[arg(long)]
        state: Option<PathBuf>,
        /// Log format (overrides `log.format`)
        #[arg(long, value_parser = parse_log_format)]
        log_format: Option<LogFormat>,
        /// Log level (overrides `log.level`)
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Image helpers for nodes without a registry.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the built-in defaults as TOML.
    Default,
    /// Load a config file (and the defaults), check it, and print the effective result.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout directory or a docker-archive tarball (`docker save`)
    /// into the image store. Stop berth first: its metadata store admits one process.
    Import {
        /// The OCI layout directory or the tarball (gzip allowed)
        path: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Persistent data directory (overrides `root_dir`)
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "human" => Ok(LogFormat::Human),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("{s:?} is not \"human\" or \"json\"")),
    }
}

fn main() -> ExitCode {
    // The container monitor and exec helper (`berth __monitor ...`) are single-threaded
    // processes that fork containers: they must run before any runtime, thread or logger.
    if std::env::args_os().nth(1).as_deref() == Some("__monitor".as_ref()) {
        // What a container process runs in place of execve when it is a Wasm guest.
        sandbox::container::set_self_entry(run_in_container);
        std::process::exit(sandbox::monitor::main(
            std::env::args_os().skip(2).collect(),
        ));
    }
    // A WASI guest as a container's (or an exec's) process: it owns its signals and
    // threads, so it too starts before anything else.
    if std::env::args_os().nth(1).as_deref() == Some(wasm_exec::runner::RUN_ARG.as_ref()) {
        std::process::exit(wasm_exec::runner::main(
            std::env::args_os().skip(2).collect(),
        ));
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("berth: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The entry point a container process runs in place (see `Process::exec_self`):
/// `berth __wasm-run ...` with the container's environment.
fn run_in_container(
    args: Vec<std::ffi::OsString>,
    env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
) -> i32 {
    match args.get(1) {
        Some(a) if a == wasm_exec::runner::RUN_ARG => {
            match wasm_exec::runner::RunOptions::parse(args.into_iter().skip(2), env) {
                Ok(opts) => {
                    // `ps` shows the module, not the monitor this process was forked from.
                    if let Some(name) = opts.module.file_name() {
                        let _ = nix::sys::prctl::set_name(
                            &std::ffi::CString::new(name.as_encoded_bytes().to_vec())
                                .unwrap_or_default(),
                        );
                    }
                    wasm_exec::runner::run(opts)
                }
                Err(e) => {
                    eprintln!("berth {}: {e}", wasm_exec::runner::RUN_ARG);
                    wasm_exec::runner::EXIT_RUNNER_FAILED
                }
            }
        }
        _ => {
            eprintln!("berth: no in-container entry point {:?}", args.get(1));
            wasm_exec::runner::EXIT_RUNNER_FAILED
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            config,
            socket,
            root,
            state,
            log_format,
            log_level,
        } => {
            let overrides = Overrides {
                socket,
                root_dir: root,
                state_dir: state,
                log_format,
                log_level,
            };
            let config = Config::load(config.as_deref(), &overrides)?;
            cri_server::logging::init(&config.log);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(cri_server::server::serve(config))
        }
        Command::Image {
            command: ImageCommand::Import { path, config, root },
        } => {
            let overrides = Overrides {
                root_dir: root,
                ..Overrides::default()
            };
            let config = Config::load(config.as_deref(), &overrides)?;
            cri_server::logging::init(&config.log);
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(cri_server::image::import::import(&config, &path))
        }
        Command::Config { command } => match command {
            ConfigCommand::Default => {
                print!("{}", Config::default_toml());
                Ok(())
            }
            ConfigCommand::Check { config } => {
                let config = Config::load(config.as_deref(), &Overrides::default())?;
                print!("{}", toml::to_string_pretty(&config)?);
                Ok(())
            }
        },
    }
}
