//! Test guests: the critest WAT modules and a few small ones, compiled from text.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Compiles `critest/images/wasm/<name>.wat` into `dir/<name>.wasm`.
pub fn critest_module(dir: &Path, name: &str) -> PathBuf {
    let wat =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../critest/images/wasm/{name}.wat"));
    let wasm = wat::parse_file(&wat).unwrap_or_else(|e| panic!("{}: {e}", wat.display()));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    path
}

/// Compiles WAT text (a core module or a component) into `dir/<name>`.
pub fn guest(dir: &Path, name: &str, text: &str) -> PathBuf {
    let wasm = wat::parse_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    let path = dir.join(name);
    std::fs::write(&path, wasm).unwrap();
    path
}

pub const EXIT_3: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))"#;

pub const TRAP: &str = r#"(module
  (memory (export "memory") 1)
  (func $boom unreachable)
  (func (export "_start") (call $boom)))"#;

/// Spins in pure Wasm forever: only an epoch check can stop it.
pub const SPIN: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (loop $l (br $l))))"#;

pub const MISSING_IMPORT: &str = r#"(module
  (import "wasi_snapshot_preview1" "no_such_call" (func))
  (memory (export "memory") 1)
  (func (export "_start")))"#;

/// Prints every environment variable, one per line.
pub const PRINT_ENV: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $get (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  ;; 0 iovec, 16 nwritten, 20 count, 24 buffer size, 32 "\n", 1024 pointers, 8192 strings
  (data (i32.const 32) "\n")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16))))
  (func $strlen (param $p i32) (result i32) (local $n i32)
    (block $done (loop $next
      (br_if $done (i32.eqz (i32.load8_u (i32.add (local.get $p) (local.get $n)))))
      (local.set $n (i32.add (local.get $n) (i32.const 1)))
      (br $next)))
    (local.get $n))
  (func (export "_start") (local $i i32) (local $s i32)
    (drop (call $sizes (i32.const 20) (i32.const 24)))
    (drop (call $get (i32.const 1024) (i32.const 8192)))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.load (i32.const 20))))
      (local.set $s (i32.load (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))))
      (call $write (local.get $s) (call $strlen (local.get $s)))
      (call $write (i32.const 32) (i32.const 1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))))"#;

/// Opens `greeting.txt` relative to the preopen `.` (fd 4; `/` is fd 3) and copies it to
/// stdout; exits 2 if it cannot.
pub const CAT_GREETING: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  ;; 0 iovec, 16 count, 20 opened fd, 64 path, 1024 buffer
  (data (i32.const 64) "greeting.txt")
  (func (export "_start")
    (if (call $path_open (i32.const 4) (i32.const 0) (i32.const 64) (i32.const 12) (i32.const 0)
          (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 20))
      (then (call $exit (i32.const 2))))
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 1024))
    (drop (call $fd_read (i32.load (i32.const 20)) (i32.const 0) (i32.const 1) (i32.const 16)))
    (i32.store (i32.const 4) (i32.load (i32.const 16)))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;

/// A WASI preview 2 command component: prints through `wasi:cli/stdout` and returns `ok`
/// (or `err` when `$status` is 1) from `wasi:cli/run`.
pub fn component(status: u32) -> String {
    format!(
        r#"(component
  (import "wasi:io/error@0.2.0" (instance $io-error (export "error" (type (sub resource)))))
  (alias export $io-error "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $error (type $e))
    (export "error" (type $err (eq $e)))
    (type $own-err (own $err))
    (type $stream-error (variant (case "last-operation-failed" $own-err) (case "closed")))
    (export "stream-error" (type $se (eq $stream-error)))
    (export "output-stream" (type $os (sub resource)))
    (type $borrow-os (borrow $os))
    (type $bytes (list u8))
    (type $write-result (result (error $se)))
    (export "[method]output-stream.blocking-write-and-flush"
      (func (param "self" $borrow-os) (param "contents" $bytes) (result $write-result)))))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type $o))
    (export "output-stream" (type $os (eq $o)))
    (type $own-os (own $os))
    (export "get-stdout" (func (result $own-os)))))
  (core module $Memory (memory (export "memory") 1))
  (core instance $memory (instantiate $Memory))
  (core func $get-stdout (canon lower (func $stdout "get-stdout")))
  (core func $write (canon lower (func $streams "[method]output-stream.blocking-write-and-flush")
    (memory $memory "memory")))
  (core module $Main
    (import "host" "memory" (memory 1))
    (import "host" "get-stdout" (func $get-stdout (result i32)))
    (import "host" "write" (func $write (param i32 i32 i32 i32)))
    (data (i32.const 16) "hello from a component\n")
    (func (export "run") (result i32)
      (call $write (call $get-stdout) (i32.const 16) (i32.const 23) (i32.const 64))
      (i32.const {status})))
  (core instance $main (instantiate $Main (with "host" (instance
    (export "memory" (memory $memory "memory"))
    (export "get-stdout" (func $get-stdout))
    (export "write" (func $write))))))
  (func $run (result (result)) (canon lift (core func $main "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))"#
    )
}

/// Writes a line without its newline, then exits 0: the tail must not be lost.
pub const NO_NEWLINE: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "no newline")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 10))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))"#;
