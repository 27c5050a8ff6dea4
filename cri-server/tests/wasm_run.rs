//! `berth __wasm-run`: the WASI runner reached through the real binary's dispatch (the
//! runner's own behaviour is tested in wasm-exec against the same code).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Builds `critest/images/wasm/<name>.wat` with wabt's `wat2wasm` into `dir`.
fn module(dir: &Path, name: &str) -> PathBuf {
    let wat =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../critest/images/wasm/{name}.wat"));
    let wasm = dir.join(format!("{name}.wasm"));
    let status = Command::new("wat2wasm")
        .arg(&wat)
        .arg("-o")
        .arg(&wasm)
        .status()
        .expect("wat2wasm (wabt) is installed");
    assert!(status.success());
    wasm
}

fn wasm_run(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("__wasm-run").current_dir(dir).stdin(Stdio::null());
    cmd
}

#[test]
fn berth_wasm_run_runs_hello_with_its_args() {
    let dir = tempfile::tempdir().unwrap();
    let hello = module(dir.path(), "hello");
    let out = wasm_run(dir.path())
        .arg("--")
        .arg(&hello)
        .args(["from", "berth"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from wasm from berth\n"
    );
}

#[test]
fn berth_wasm_run_stops_on_sigterm_with_143() {
    let dir = tempfile::tempdir().unwrap();
    let looping = module(dir.path(), "loop");
    let mut child = wasm_run(dir.path())
        .arg("--")
        .arg(&looping)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "wasm loop started\n");
    let sent = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143));
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "took {:?}",
        sent.elapsed()
    );
}
