//! Links `berth` as a position-dependent executable (`-no-pie`).
//!
//! The same binary runs as the daemon and, from its sealed in-memory copy, as every
//! per-container monitor, pod init and Wasm runner. As a PIE it carries ~66 000 relative
//! relocations: the loader rewrites about 1 MiB of `.data.rel.ro` in every one of those
//! processes, which became that much private memory per container and ~0.7 ms per exec.
//! Position-dependent, those pages stay clean and shared between all monitors. The price is
//! a fixed load address for the binary's own image (the heap, stacks, libraries and
//! Wasmtime's code stay randomised), the same trade Go's default builds make.
fn main() {
    println!("cargo:rustc-link-arg-bins=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
