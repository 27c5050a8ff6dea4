//! berth's WebAssembly side. Today: recognising what an entrypoint file is, by its bytes
//! rather than its name. Running WASI guests under Wasmtime arrives with the Wasm issue.

pub mod sniff;

pub use sniff::{BinaryKind, sniff, sniff_file};
