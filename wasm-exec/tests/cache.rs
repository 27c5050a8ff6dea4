//! The compile cache on its own: hits, misses, and entries it must refuse to load.

mod common;

use common::*;
use sha2::Digest;
use wasm_exec::cache::{CacheError, load_artifact};
use wasm_exec::{CompileCache, Program, WasmKind};

fn only_file(dir: &std::path::Path) -> std::path::PathBuf {
    let files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.into_iter().next().unwrap()
}

#[test]
fn compiles_once_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hello = critest_module(dir.path(), "hello");
    let engine = wasm_exec::new_engine().unwrap();
    let cache_dir = dir.path().join("cache");
    let first = CompileCache::open(&cache_dir, &engine)
        .unwrap()
        .get_or_compile(&hello)
        .unwrap();
    assert!(first.compiled);
    assert_eq!(first.kind, WasmKind::Module);
    // A new cache over the same directory (a daemon restart) finds it.
    let again = CompileCache::open(&cache_dir, &engine)
        .unwrap()
        .get_or_compile(&hello)
        .unwrap();
    assert_eq!(
        again,
        wasm_exec::Artifact {
            compiled: false,
            ..first.clone()
        }
    );
    // And what it finds loads.
    let file = std::fs::File::open(&again.path).unwrap();
    let program = load_artifact(&engine, file, &again.sha256, &again.path).unwrap();
    assert!(matches!(program, Program::Module(_)));
}

#[test]
fn components_are_cached_too() {
    let dir = tempfile::tempdir().unwrap();
    let component = guest(dir.path(), "c.wasm", &component(0));
    let engine = wasm_exec::new_engine().unwrap();
    let cache = CompileCache::open(&dir.path().join("cache"), &engine).unwrap();
    assert_eq!(
        cache.get_or_compile(&component).unwrap().kind,
        WasmKind::Component
    );
    let (program, artifact) = cache.load_or_compile(&component).unwrap();
    assert!(!artifact.compiled);
    assert_eq!(program.kind(), WasmKind::Component);
}

#[test]
fn a_malformed_index_entry_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let hello = critest_module(dir.path(), "hello");
    let engine = wasm_exec::new_engine().unwrap();
    let cache = CompileCache::open(&dir.path().join("cache"), &engine).unwrap();
    cache.get_or_compile(&hello).unwrap();
    let index = only_file(&dir.path().join("cache/index"));
    std::fs::write(&index, "something else\n").unwrap();
    assert!(cache.get_or_compile(&hello).unwrap().compiled);
    assert!(!cache.get_or_compile(&hello).unwrap().compiled);
}

#[test]
fn a_foreign_artifact_is_never_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let engine = wasm_exec::new_engine().unwrap();
    // Consistent with its name and digest, but not something Wasmtime precompiled.
    let foreign = b"\x7fELF not really".to_vec();
    let sha256 = hex_sha256(&foreign);
    let path = dir.path().join(format!("{sha256}.cwasm"));
    std::fs::write(&path, &foreign).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    let err = load_artifact(&engine, file, &sha256, &path).err().unwrap();
    assert!(matches!(err, CacheError::Rejected { .. }), "{err}");
    // Real artifact, wrong digest.
    let hello = critest_module(dir.path(), "hello");
    let artifact = CompileCache::open(&dir.path().join("cache"), &engine)
        .unwrap()
        .get_or_compile(&hello)
        .unwrap();
    let file = std::fs::File::open(&artifact.path).unwrap();
    let err = load_artifact(&engine, file, &sha256, &artifact.path)
        .err()
        .unwrap();
    assert!(err.to_string().contains("was rejected: sha256 is"), "{err}");
}

#[test]
fn an_artifact_of_another_engine_config_misses() {
    let dir = tempfile::tempdir().unwrap();
    let hello = critest_module(dir.path(), "hello");
    let cache_dir = dir.path().join("cache");
    let ours = wasm_exec::new_engine().unwrap();
    CompileCache::open(&cache_dir, &ours)
        .unwrap()
        .get_or_compile(&hello)
        .unwrap();
    let mut config = wasm_exec::engine::config();
    config.epoch_interruption(false);
    let other = wasmtime::Engine::new(&config).unwrap();
    assert!(
        CompileCache::open(&cache_dir, &other)
            .unwrap()
            .get_or_compile(&hello)
            .unwrap()
            .compiled
    );
}

#[test]
fn non_wasm_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = wasm_exec::new_engine().unwrap();
    let cache = CompileCache::open(&dir.path().join("cache"), &engine).unwrap();
    let script = dir.path().join("app.wasm");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    assert!(matches!(
        cache.get_or_compile(&script),
        Err(CacheError::NotWasm(_))
    ));
    let broken = dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm\x01\0\0\0\x01\xff").unwrap();
    let err = cache.get_or_compile(&broken).unwrap_err();
    assert!(matches!(err, CacheError::Compile { .. }), "{err}");
}

fn hex_sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
