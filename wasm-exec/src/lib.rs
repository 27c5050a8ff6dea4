//! berth's WebAssembly side: which containers are Wasm ([`decide`], over entrypoints told
//! apart by their bytes with [`sniff`]), one Wasmtime configuration ([`engine`]), a
//! persistent compile cache ([`cache`]), and the runner behind `berth __wasm-run`
//! ([`runner`]) that executes one WASI guest as a container's process.

pub mod cache;
pub mod decision;
pub mod engine;
pub mod runner;
pub mod sniff;

pub use cache::{Artifact, CacheError, CompileCache, Program, precompile};
pub use decision::{Decision, DecisionError, DecisionInput, Runtime, WasmKind, decide};
pub use engine::new_engine;
pub use runner::{RunOptions, run};
pub use sniff::{BinaryKind, sniff, sniff_file};
