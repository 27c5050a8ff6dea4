//! The one Wasmtime configuration berth uses. The daemon precompiles with it and the
//! runner loads with it, so a precompiled artifact is always compatible with the engine
//! that loads it (`precompile_compatibility_hash` is part of every cache key anyway).

use wasmtime::{Config, Engine, OptLevel};

/// Builds berth's engine configuration.
///
/// - Epoch interruption: the stop signal bumps the epoch, so a guest spinning in pure
///   Wasm code traps at its next loop back-edge or call instead of running on.
/// - `memory_init_cow`: data segments are mapped copy-on-write from the artifact instead
///   of copied, so instantiation is cheap and untouched pages stay shared.
/// - On-demand allocation, not the pooling allocator: a runner instantiates exactly one
///   guest per process, and the pool's up-front reservation and setup cost more than it
///   saves (measured: see the crate README).
pub fn config() -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .memory_init_cow(true)
        .cranelift_opt_level(OptLevel::Speed)
        .wasm_component_model(true);
    config
}

/// An engine with [`config`].
pub fn new_engine() -> Result<Engine, wasmtime::Error> {
    Engine::new(&config())
}
