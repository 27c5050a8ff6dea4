//! `berth __wasm-run`: one WASI guest in the current process.
//!
//! The monitor execs the runner as the container's process once isolation is in place,
//! so `/` is the container's rootfs, fds 0-2 are the CRI log pipes and the environment
//! is the container's. ExecSync / Exec of a Wasm module inside a container run the same
//! way with the exec's argv. The guest gets argv, env, inherited stdio, `/` preopened as
//! `/` and the working directory as `.`. Core modules run as WASI preview 1 commands
//! (`_start`), components as preview 2 commands (`wasi:cli/run`).
//!
//! Exit status:
//!
//! | status | meaning |
//! |---|---|
//! | n | the guest exited with n (`proc_exit`, `exit`); 0 when `_start`/`run` returned |
//! | 1 | a component's `run` returned an error |
//! | 134 | the guest trapped (128 + SIGABRT, like a native abort); message on stderr and in the termination log |
//! | 137 | the guest exceeded its memory limit (as if OOM-killed); the OOM marker is written |
//! | 143 / 130 | stopped by SIGTERM / SIGINT |
//! | 127 | the module file does not exist |
//! | 126 | the module cannot be compiled or instantiated (not Wasm, invalid, unknown imports) |
//! | 125 | the runner itself failed (bad options, cache I/O) |

mod limits;
mod options;
mod stop;

use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, RawFd};
use std::path::Path;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Linker, Store, Trap};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

pub use options::{ArtifactSource, PrecompiledArtifact, RunOptions, UsageError};

use crate::cache::{self, CacheError, CompileCache, Program};
use limits::GuestMemoryLimit;

/// The argument that selects the runner: `berth __wasm-run ...`.
pub const RUN_ARG: &str = "__wasm-run";

pub const EXIT_TRAP: i32 = 134;
pub const EXIT_OOM: i32 = 137;
pub const EXIT_NOT_FOUND: i32 = 127;
pub const EXIT_CANNOT_RUN: i32 = 126;
pub const EXIT_RUNNER_FAILED: i32 = 125;

/// What the OOM marker file contains.
pub const OOM_MARKER: &str = "OOMKilled\n";

/// Entry point of `berth __wasm-run ARGS...`: parses, runs, returns the exit status.
pub fn main(args: Vec<std::ffi::OsString>) -> i32 {
    match RunOptions::parse(args, std::env::vars_os()) {
        Ok(opts) => run(opts),
        Err(e) => {
            eprintln!("berth __wasm-run: {e}");
            EXIT_RUNNER_FAILED
        }
    }
}

/// Runs one guest to completion and returns the process exit status (see the module docs).
/// Guest output is flushed before returning, so the caller may end the process with `_exit`.
pub fn run(opts: RunOptions) -> i32 {
    let status = run_guest(&opts);
    // The guest writes through std's stdout, which holds an unterminated last line back.
    let _ = std::io::stdout().flush();
    status
}

fn run_guest(opts: &RunOptions) -> i32 {
    let engine = match crate::engine::new_engine() {
        Ok(engine) => engine,
        Err(e) => {
            return fail(
                opts,
                EXIT_RUNNER_FAILED,
                &format!("creating the Wasm engine: {e:#}"),
            );
        }
    };
    if let Err(e) = stop::install(&engine) {
        return fail(
            opts,
            EXIT_RUNNER_FAILED,
            &format!("installing the stop handler: {e}"),
        );
    }
    let program = match load(&engine, opts) {
        Ok(program) => program,
        Err(e) => {
            let status = match &e {
                CacheError::Io { path, source }
                    if path == &opts.module && source.kind() == std::io::ErrorKind::NotFound =>
                {
                    EXIT_NOT_FOUND
                }
                CacheError::Io { .. } => EXIT_RUNNER_FAILED,
                _ => EXIT_CANNOT_RUN,
            };
            return fail(opts, status, &e.to_string());
        }
    };
    let wasi = match wasi_builder(opts) {
        Ok(wasi) => wasi,
        Err(e) => return fail(opts, EXIT_RUNNER_FAILED, &e),
    };
    let limit = GuestMemoryLimit::new(opts.memory_limit);
    let (result, limit) = match program {
        Program::Module(module) => run_module(&engine, &module, wasi, limit),
        Program::Component(component) => run_component(&engine, &component, wasi, limit),
    };
    match result {
        Ok(status) => status,
        Err(failure) => end_abnormally(opts, failure, &limit),
    }
}

/// The precompiled artifact if the daemon handed one over and it verifies, else the cache
/// if one is reachable, else an in-process compile.
fn load(engine: &Engine, opts: &RunOptions) -> Result<Program, CacheError> {
    if let Some(artifact) = &opts.precompiled {
        let (file, name) = match &artifact.source {
            ArtifactSource::Path(path) => (File::open(path), path.clone()),
            ArtifactSource::Fd(fd) => (inherited_file(*fd), format!("fd {fd}").into()),
        };
        let loaded = file
            .map_err(|source| CacheError::Io {
                path: name.clone(),
                source,
            })
            .and_then(|file| cache::load_artifact(engine, file, &artifact.sha256, &name));
        match loaded {
            Ok(program) => return Ok(program),
            // Never run what failed verification; compiling from source is always safe.
            Err(e) => eprintln!("berth: {e}; compiling {} instead", opts.module.display()),
        }
    }
    if let Some(dir) = &opts.cache_dir {
        let cache = CompileCache::open(dir, engine)?;
        return cache
            .load_or_compile(&opts.module)
            .map(|(program, _)| program);
    }
    let wasm = std::fs::read(&opts.module).map_err(|source| CacheError::Io {
        path: opts.module.clone(),
        source,
    })?;
    cache::compile(engine, &wasm, &opts.module)
}

/// Takes ownership of a descriptor handed down across exec, if it really is open.
fn inherited_file(fd: RawFd) -> std::io::Result<File> {
    // SAFETY: F_GETFD only queries the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd is open and was passed to this process for exactly this purpose;
    // nothing else in the runner knows its number.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn wasi_builder(opts: &RunOptions) -> Result<WasiCtxBuilder, String> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stdio().args(&opts.argv).envs(&opts.env);
    wasi.preopened_dir("/", "/", FsPerms::ReadWrite)
        .map_err(|e| format!("preopening /: {e:#}"))?;
    let cwd = opts.cwd.as_deref().unwrap_or(Path::new("."));
    wasi.preopened_dir(cwd, ".", FsPerms::ReadWrite)
        .map_err(|e| format!("preopening {} as .: {e:#}", cwd.display()))?;
    Ok(wasi)
}

/// Why a guest did not end with a status of its own.
enum Failure {
    /// Compiling to an instance failed (imports, start function): the module cannot run.
    Instantiate(wasmtime::Error),
    /// The guest started and then failed (trap, interrupt, limit).
    Run(wasmtime::Error),
}

struct ModuleState {
    wasi: WasiP1Ctx,
    limit: GuestMemoryLimit,
}

fn run_module(
    engine: &Engine,
    module: &wasmtime::Module,
    wasi: WasiCtxBuilder,
    limit: GuestMemoryLimit,
) -> (Result<i32, Failure>, GuestMemoryLimit) {
    let mut wasi = wasi;
    let mut store = Store::new(
        engine,
        ModuleState {
            wasi: wasi.build_p1(),
            limit,
        },
    );
    store.limiter(|state| &mut state.limit);
    store.set_epoch_deadline(1);
    store.epoch_deadline_trap();
    let result = (|| {
        let mut linker: Linker<ModuleState> = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |state| &mut state.wasi)
            .map_err(Failure::Instantiate)?;
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(Failure::Instantiate)?;
        let start = instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .map_err(|e| {
                Failure::Instantiate(e.context("not a WASI command (no `_start` export)"))
            })?;
        start.call(&mut store, ()).map(|()| 0).map_err(Failure::Run)
    })();
    (result, std::mem::take(&mut store.data_mut().limit))
}

struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limit: GuestMemoryLimit,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

fn run_component(
    engine: &Engine,
    component: &wasmtime::component::Component,
    wasi: WasiCtxBuilder,
    limit: GuestMemoryLimit,
) -> (Result<i32, Failure>, GuestMemoryLimit) {
    let mut wasi = wasi;
    let state = ComponentState {
        ctx: wasi.build(),
        table: ResourceTable::new(),
        limit,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limit);
    store.set_epoch_deadline(1);
    store.epoch_deadline_trap();
    let result = (|| {
        let mut linker = wasmtime::component::Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(Failure::Instantiate)?;
        let command =
            wasmtime_wasi::p2::bindings::sync::Command::instantiate(&mut store, component, &linker)
                .map_err(Failure::Instantiate)?;
        match command.wasi_cli_run().call_run(&mut store) {
            Ok(Ok(())) => Ok(0),
            Ok(Err(())) => Ok(1),
            Err(e) => Err(Failure::Run(e)),
        }
    })();
    (result, std::mem::take(&mut store.data_mut().limit))
}

/// Maps a failure to the exit status and records why.
fn end_abnormally(opts: &RunOptions, failure: Failure, limit: &GuestMemoryLimit) -> i32 {
    let (error, instantiating) = match failure {
        Failure::Instantiate(e) => (e, true),
        Failure::Run(e) => (e, false),
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return exit.0;
    }
    if let (Some((granted, wanted)), Some(max)) = (limit.exceeded(), limit.limit()) {
        if let Some(marker) = &opts.oom_marker
            && let Err(e) = std::fs::write(marker, OOM_MARKER)
        {
            eprintln!("berth: writing the OOM marker {}: {e}", marker.display());
        }
        let message = format!(
            "guest memory limit exceeded: {} of linear memory in use, {} requested, limit {}",
            mib(granted),
            mib(wanted),
            mib(max)
        );
        return fail(opts, EXIT_OOM, &message);
    }
    if let Some(signo) = stop::requested()
        && error.downcast_ref::<Trap>() == Some(&Trap::Interrupt)
    {
        return 128 + signo;
    }
    if instantiating {
        return fail(
            opts,
            EXIT_CANNOT_RUN,
            &format!("cannot instantiate {}: {error:#}", opts.module.display()),
        );
    }
    fail(opts, EXIT_TRAP, &describe_trap(&error))
}

/// The trap first ("wasm trap: ..."), then the wasm backtrace.
fn describe_trap(error: &wasmtime::Error) -> String {
    let what = match error.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(),
        None => format!("wasm guest failed: {error:#}"),
    };
    match error.downcast_ref::<wasmtime::WasmBacktrace>() {
        Some(backtrace) => format!("{what}\n{backtrace}"),
        None => what,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// Reports `message` on stderr (the CRI log) and in the termination log, returns `status`.
fn fail(opts: &RunOptions, status: i32, message: &str) -> i32 {
    let _ = writeln!(std::io::stderr(), "berth: {message}");
    if let Some(path) = &opts.termination_log {
        write_termination_log(path, message);
    }
    status
}

/// Writes the message unless the guest already left one there.
fn write_termination_log(path: &Path, message: &str) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut file) = file
        && file.metadata().is_ok_and(|m| m.len() == 0)
    {
        let _ = file.write_all(message.as_bytes());
    }
}
