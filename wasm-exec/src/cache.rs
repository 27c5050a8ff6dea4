//! Compiling once: a persistent cache of precompiled modules and components.
//!
//! Key: the module's sha256 and a hash of `Engine::precompile_compatibility_hash()`, so a
//! Wasmtime upgrade or a config change simply misses. Layout under the cache dir:
//!
//! ```text
//! index/<module sha256>-<engine hash>   "berth-wasm-cache 1\n<module|component>\n<artifact sha256>\n"
//! objects/<artifact sha256>.cwasm       Wasmtime's precompiled bytes, verbatim
//! ```
//!
//! Deserializing is `unsafe` (an artifact is native code), so nothing is loaded that we
//! cannot prove we wrote: the artifact is hashed through the very file descriptor that is
//! then mapped, and must match both its name and the index entry. Anything else (a torn
//! write, a flipped bit, a foreign file) is recompiled, never executed. Files are replaced
//! only by rename, so a reader never sees a half-written object, and no fsync is needed:
//! a crash can only leave an entry that fails verification.

use std::fs::{self, File, OpenOptions};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module, Precompiled};

use crate::decision::WasmKind;
use crate::sniff::{BinaryKind, sniff};

const INDEX_MAGIC: &str = "berth-wasm-cache 1";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a WebAssembly module or component")]
    NotWasm(PathBuf),
    #[error("compiling {path}: {message}")]
    Compile { path: PathBuf, message: String },
    #[error("precompiled artifact {path} was rejected: {why}")]
    Rejected { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A compiled guest, ready to instantiate.
pub enum Program {
    Module(Module),
    Component(Component),
}

impl Program {
    pub fn kind(&self) -> WasmKind {
        match self {
            Program::Module(_) => WasmKind::Module,
            Program::Component(_) => WasmKind::Component,
        }
    }
}

/// A verified cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The precompiled file (`objects/<sha256>.cwasm`).
    pub path: PathBuf,
    /// Hex sha256 of the file; the runner checks it again before loading.
    pub sha256: String,
    pub kind: WasmKind,
    /// Compiled by this call (a miss, or a rejected entry), rather than found.
    pub compiled: bool,
}

/// Compiles Wasm bytes (module or component, told apart by the header) to Wasmtime's
/// precompiled form for `engine`.
pub fn precompile(engine: &Engine, wasm: &[u8]) -> Result<(WasmKind, Vec<u8>), String> {
    let compiled = match sniff(wasm) {
        BinaryKind::WasmModule => (WasmKind::Module, engine.precompile_module(wasm)),
        BinaryKind::WasmComponent => (WasmKind::Component, engine.precompile_component(wasm)),
        _ => return Err("not a WebAssembly module or component".to_string()),
    };
    match compiled {
        (kind, Ok(bytes)) => Ok((kind, bytes)),
        (_, Err(e)) => Err(format!("{e:#}")),
    }
}

/// Compiles Wasm bytes in memory, for runs without a cache.
pub fn compile(engine: &Engine, wasm: &[u8], path: &Path) -> Result<Program, CacheError> {
    let compiled = match sniff(wasm) {
        BinaryKind::WasmModule => Module::new(engine, wasm).map(Program::Module),
        BinaryKind::WasmComponent => Component::new(engine, wasm).map(Program::Component),
        _ => return Err(CacheError::NotWasm(path.to_path_buf())),
    };
    compiled.map_err(|e| CacheError::Compile {
        path: path.to_path_buf(),
        message: format!("{e:#}"),
    })
}

/// Loads a precompiled artifact from an open file after checking that its contents hash
/// to `sha256` (hex). `path` only names the file in errors.
pub fn load_artifact(
    engine: &Engine,
    mut file: File,
    sha256: &str,
    path: &Path,
) -> Result<Program, CacheError> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(io_err(path))?;
    let reject = |why: String| CacheError::Rejected {
        path: path.to_path_buf(),
        why,
    };
    let actual = hex::encode(Sha256::digest(&bytes));
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(reject(format!("sha256 is {actual}, expected {sha256}")));
    }
    let kind = match Engine::detect_precompiled(&bytes) {
        Some(Precompiled::Module) => WasmKind::Module,
        Some(Precompiled::Component) => WasmKind::Component,
        None => return Err(reject("not a Wasmtime precompiled artifact".to_string())),
    };
    deserialize_verified(engine, file, kind, path)
}

/// Maps an artifact whose contents were verified through this same `file`.
fn deserialize_verified(
    engine: &Engine,
    file: File,
    kind: WasmKind,
    path: &Path,
) -> Result<Program, CacheError> {
    // SAFETY: the caller checked that the bytes behind `file` are exactly what we
    // precompiled, and artifacts are never modified in place, only replaced by rename.
    let loaded = match kind {
        WasmKind::Module => {
            unsafe { Module::deserialize_open_file(engine, file) }.map(Program::Module)
        }
        // Components have no `deserialize_open_file`; the fd's /proc link is the same inode.
        WasmKind::Component => {
            let fd_path = format!("/proc/self/fd/{}", file.as_raw_fd());
            unsafe { Component::deserialize_file(engine, &fd_path) }.map(Program::Component)
        }
    };
    loaded.map_err(|e| CacheError::Rejected {
        path: path.to_path_buf(),
        why: format!("{e:#}"),
    })
}

/// The cache, owned by the daemon (which fills it at container creation) and usable by a
/// runner that can see the directory.
pub struct CompileCache {
    dir: PathBuf,
    engine: Engine,
    /// Hex of the engine's compatibility hash: part of every key.
    engine_hash: String,
}

impl CompileCache {
    /// Opens (creating, mode 0700) the cache at `dir` for artifacts of `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self, CacheError> {
        for sub in ["index", "objects"] {
            let path = dir.join(sub);
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&path)
                .map_err(io_err(&path))?;
        }
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        INDEX_MAGIC.hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.to_path_buf(),
            engine: engine.clone(),
            engine_hash: format!("{:016x}", hasher.finish()),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The verified artifact for the module at `module_path`, compiling and storing it
    /// if it is missing or fails verification.
    pub fn get_or_compile(&self, module_path: &Path) -> Result<Artifact, CacheError> {
        let wasm = fs::read(module_path).map_err(io_err(module_path))?;
        self.get_or_compile_bytes(&wasm, module_path)
            .map(|(artifact, _)| artifact)
    }

    /// Like [`get_or_compile`](Self::get_or_compile), and also loads the artifact (for a
    /// runner that can see the cache). Verification and loading use one file descriptor.
    pub fn load_or_compile(&self, module_path: &Path) -> Result<(Program, Artifact), CacheError> {
        let wasm = fs::read(module_path).map_err(io_err(module_path))?;
        let (artifact, file) = self.get_or_compile_bytes(&wasm, module_path)?;
        let program = deserialize_verified(&self.engine, file, artifact.kind, &artifact.path)?;
        Ok((program, artifact))
    }

    fn get_or_compile_bytes(
        &self,
        wasm: &[u8],
        module_path: &Path,
    ) -> Result<(Artifact, File), CacheError> {
        if !sniff(wasm).is_wasm() {
            return Err(CacheError::NotWasm(module_path.to_path_buf()));
        }
        let index_path = self.dir.join("index").join(format!(
            "{}-{}",
            hex::encode(Sha256::digest(wasm)),
            self.engine_hash
        ));
        match self.lookup(&index_path) {
            Ok(found) => return Ok(found),
            Err(why) => tracing::debug!(index = %index_path.display(), %why, "compile cache miss"),
        }
        let (kind, bytes) =
            precompile(&self.engine, wasm).map_err(|message| CacheError::Compile {
                path: module_path.to_path_buf(),
                message,
            })?;
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let object_path = self.object_path(&sha256);
        self.write_atomically(&object_path, &bytes, 0o444)?;
        let kind_name = match kind {
            WasmKind::Module => "module",
            WasmKind::Component => "component",
        };
        self.write_atomically(
            &index_path,
            format!("{INDEX_MAGIC}\n{kind_name}\n{sha256}\n").as_bytes(),
            0o600,
        )?;
        let file = File::open(&object_path).map_err(io_err(&object_path))?;
        Ok((
            Artifact {
                path: object_path,
                sha256,
                kind,
                compiled: true,
            },
            file,
        ))
    }

    /// A verified hit, or why there is none.
    fn lookup(&self, index_path: &Path) -> Result<(Artifact, File), String> {
        let index = fs::read_to_string(index_path).map_err(|e| e.to_string())?;
        let mut lines = index.lines();
        let (Some(INDEX_MAGIC), Some(kind), Some(sha256), None) =
            (lines.next(), lines.next(), lines.next(), lines.next())
        else {
            return Err("malformed index entry".to_string());
        };
        let kind = match kind {
            "module" => WasmKind::Module,
            "component" => WasmKind::Component,
            _ => return Err(format!("unknown kind {kind:?}")),
        };
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("malformed artifact digest".to_string());
        }
        let path = self.object_path(sha256);
        let mut file = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != sha256 {
            tracing::warn!(artifact = %path.display(), %actual, "corrupt compile cache entry, recompiling");
            return Err(format!("{} hashes to {actual}", path.display()));
        }
        Ok((
            Artifact {
                path,
                sha256: sha256.to_string(),
                kind,
                compiled: false,
            },
            file,
        ))
    }

    fn object_path(&self, sha256: &str) -> PathBuf {
        self.dir.join("objects").join(format!("{sha256}.cwasm"))
    }

    /// Writes `bytes` to a temporary file beside `path` and renames it into place.
    fn write_atomically(&self, path: &Path, bytes: &[u8], mode: u32) -> Result<(), CacheError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!(
            "tmp.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&tmp)?;
            file.write_all(bytes)?;
            fs::rename(&tmp, path)
        };
        write().map_err(|source| {
            let _ = fs::remove_file(&tmp);
            CacheError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }
}
