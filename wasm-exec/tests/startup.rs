//! Startup cost of the engine choices, for the numbers in the README. Run in release:
//! `cargo test --release -p wasm-exec --test startup -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig, Store,
};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;

/// Fresh engine, load the precompiled module, instantiate, run `_start`: what one runner
/// process does per container.
fn one_start(config: &Config, artifact: &std::path::Path) -> Duration {
    let start = Instant::now();
    let engine = Engine::new(config).unwrap();
    // SAFETY: the artifact was just produced by `precompile_module` for this config.
    let module = unsafe { Module::deserialize_file(&engine, artifact) }.unwrap();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).unwrap();
    let mut store = Store::new(&engine, WasiCtxBuilder::new().build_p1());
    store.set_epoch_deadline(1);
    let instance = linker.instantiate(&mut store, &module).unwrap();
    let run = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .unwrap();
    run.call(&mut store, ()).unwrap();
    start.elapsed()
}

fn median(config: &Config, artifact: &std::path::Path) -> Duration {
    let mut times: Vec<_> = (0..51).map(|_| one_start(config, artifact)).collect();
    times.sort();
    times[times.len() / 2]
}

#[test]
#[ignore = "a measurement, not a check"]
fn pooling_versus_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let hello = std::fs::read(common::critest_module(dir.path(), "hello")).unwrap();
    let on_demand = wasm_exec::engine::config();
    let mut pooling = wasm_exec::engine::config();
    pooling.allocation_strategy(InstanceAllocationStrategy::Pooling(
        PoolingAllocationConfig::default(),
    ));
    for (name, config) in [("on-demand", &on_demand), ("pooling", &pooling)] {
        let engine = Engine::new(config).unwrap();
        let artifact = dir.path().join(format!("{name}.cwasm"));
        std::fs::write(&artifact, engine.precompile_module(&hello).unwrap()).unwrap();
        eprintln!(
            "{name}: median engine+load+instantiate+run {:?}",
            median(config, &artifact)
        );
    }
}
