//! The runner as the container's process: the real binary, real Wasmtime, real guests.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use wasm_exec::CompileCache;

const RUNNER: &str = env!("CARGO_BIN_EXE_berth-wasm-run");

fn runner(dir: &Path) -> Command {
    let mut cmd = Command::new(RUNNER);
    cmd.current_dir(dir).env_clear().stdin(Stdio::null());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.code().is_some(),
        "runner died from a signal: {:?}",
        out.status
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn hello_prints_its_args() {
    let dir = tempfile::tempdir().unwrap();
    let hello = critest_module(dir.path(), "hello");
    let out = run(runner(dir.path()).arg("--").arg(&hello).args(["a", "b c"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from wasm a b c\n");
}

#[test]
fn the_guest_sees_the_runner_environment() {
    let dir = tempfile::tempdir().unwrap();
    let module = guest(dir.path(), "env.wasm", PRINT_ENV);
    let out = run(runner(dir.path())
        .env("GREETING", "hi there")
        .env("EMPTY", "")
        .arg("--")
        .arg(&module));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut lines: Vec<_> = stdout(&out).lines().map(str::to_string).collect();
    lines.sort();
    assert_eq!(lines, ["EMPTY=", "GREETING=hi there"]);
}

#[test]
fn the_working_directory_is_preopened_as_dot() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(work.join("greeting.txt"), "from the cwd\n").unwrap();
    let module = guest(dir.path(), "cat", CAT_GREETING);
    let out = run(runner(&work).arg("--").arg(&module));
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "from the cwd\n"),
        "{}",
        stderr(&out)
    );
    // `--cwd` picks another directory.
    std::fs::write(dir.path().join("greeting.txt"), "from --cwd\n").unwrap();
    let out = run(runner(&work)
        .arg("--cwd")
        .arg(dir.path())
        .arg("--")
        .arg(&module));
    assert_eq!(stdout(&out), "from --cwd\n", "{}", stderr(&out));
}

#[test]
fn the_exit_code_is_the_guests() {
    let dir = tempfile::tempdir().unwrap();
    let module = guest(dir.path(), "exit3.wasm", EXIT_3);
    let out = run(runner(dir.path()).arg("--").arg(&module));
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stderr(&out), "");
}

#[test]
fn a_trap_exits_134_with_the_message_on_stderr_and_in_the_termination_log() {
    let dir = tempfile::tempdir().unwrap();
    let module = guest(dir.path(), "trap.wasm", TRAP);
    let log = dir.path().join("termination-log");
    let out = run(runner(dir.path())
        .arg("--termination-log")
        .arg(&log)
        .arg("--")
        .arg(&module));
    assert_eq!(out.status.code(), Some(134));
    let err = stderr(&out);
    assert!(
        err.starts_with("berth: wasm trap: wasm `unreachable` instruction executed\n"),
        "{err}"
    );
    assert!(err.contains("wasm backtrace"), "{err}");
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(
        message.starts_with("wasm trap: wasm `unreachable` instruction executed"),
        "{message}"
    );
    // A message the guest left there itself is kept.
    std::fs::write(&log, "mine\n").unwrap();
    run(runner(dir.path())
        .arg("--termination-log")
        .arg(&log)
        .arg("--")
        .arg(&module));
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "mine\n");
}

#[test]
fn exceeding_the_memory_limit_exits_137_and_leaves_the_oom_marker() {
    let dir = tempfile::tempdir().unwrap();
    let memhog = critest_module(dir.path(), "memhog");
    let marker = dir.path().join("oom");
    let out = run(runner(dir.path())
        .args(["--memory-limit", &(32u64 << 20).to_string(), "--oom-marker"])
        .arg(&marker)
        .arg("--")
        .arg(&memhog));
    assert_eq!(out.status.code(), Some(137), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "OOMKilled\n");
    assert_eq!(stdout(&out), "allocated 16 MiB\n");
    assert!(
        stderr(&out).contains("guest memory limit exceeded"),
        "{}",
        stderr(&out)
    );
    // Under the limit nothing is marked.
    let hello = critest_module(dir.path(), "hello");
    std::fs::remove_file(&marker).unwrap();
    let out = run(runner(dir.path())
        .args(["--memory-limit", "1048576", "--oom-marker"])
        .arg(&marker)
        .arg("--")
        .arg(&hello));
    assert_eq!(out.status.code(), Some(0));
    assert!(!marker.exists());
}

/// Starts a guest, waits for its first line (if it prints), signals it and returns the
/// exit code and how long it took to exit after the signal.
fn stop(module: &Path, signal: i32, first_line: Option<&str>) -> (Option<i32>, Duration) {
    let mut child = runner(module.parent().unwrap())
        .arg("--")
        .arg(module)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    match first_line {
        Some(expected) => {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            assert_eq!(line, expected);
        }
        None => std::thread::sleep(Duration::from_millis(300)),
    }
    let sent = Instant::now();
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), None);
    (status.code(), sent.elapsed())
}

#[test]
fn sigterm_stops_a_sleeping_guest_with_143_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let module = critest_module(dir.path(), "loop");
    let (code, took) = stop(&module, libc::SIGTERM, Some("wasm loop started\n"));
    assert_eq!(code, Some(143));
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

#[test]
fn sigterm_and_sigint_interrupt_a_spinning_guest() {
    let dir = tempfile::tempdir().unwrap();
    let module = guest(dir.path(), "spin.wasm", SPIN);
    let (code, took) = stop(&module, libc::SIGTERM, None);
    assert_eq!(code, Some(143));
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(stop(&module, libc::SIGINT, None).0, Some(130));
}

#[test]
fn modules_that_cannot_run_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(runner(dir.path()).args(["--", "/no/such/module.wasm"]));
    assert_eq!(out.status.code(), Some(127));
    assert!(
        stderr(&out).contains("/no/such/module.wasm"),
        "{}",
        stderr(&out)
    );

    let elf = dir.path().join("app.wasm");
    std::fs::copy("/bin/true", &elf).unwrap();
    let out = run(runner(dir.path()).arg("--").arg(&elf));
    assert_eq!(out.status.code(), Some(126));
    assert!(
        stderr(&out).contains("is not a WebAssembly module or component"),
        "{}",
        stderr(&out)
    );

    let module = guest(dir.path(), "import.wasm", MISSING_IMPORT);
    let out = run(runner(dir.path()).arg("--").arg(&module));
    assert_eq!(out.status.code(), Some(126));
    assert!(stderr(&out).contains("no_such_call"), "{}", stderr(&out));

    let out = run(runner(dir.path()).args(["--bogus", "--", "x"]));
    assert_eq!(out.status.code(), Some(125));
}

#[test]
fn components_run_as_wasi_cli_commands() {
    let dir = tempfile::tempdir().unwrap();
    let ok = guest(dir.path(), "ok.wasm", &component(0));
    assert_eq!(
        wasm_exec::sniff_file(&ok).unwrap(),
        wasm_exec::BinaryKind::WasmComponent
    );
    let out = run(runner(dir.path()).arg("--").arg(&ok));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello from a component\n");
    // `run` returning `err` is exit status 1.
    let err = guest(dir.path(), "err.wasm", &component(1));
    let out = run(runner(dir.path()).arg("--").arg(&err));
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(1), "hello from a component\n")
    );
}

/// Time from spawn to the first line on stdout.
fn first_line_after_spawn(cmd: &mut Command) -> (String, Duration) {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let took = start.elapsed();
    assert!(child.wait().unwrap().success());
    (line, took)
}

#[test]
fn the_cache_compiles_once_and_recompiles_a_corrupt_entry() {
    let dir = tempfile::tempdir().unwrap();
    let hello = critest_module(dir.path(), "hello");
    let cache = dir.path().join("cache");
    let hello_run = |arg: &str| {
        let mut cmd = runner(dir.path());
        cmd.arg("--cache-dir")
            .arg(&cache)
            .arg("--")
            .arg(&hello)
            .arg(arg);
        first_line_after_spawn(&mut cmd)
    };
    let (line, cold) = hello_run("cold");
    assert_eq!(line, "hello from wasm cold\n");
    let objects: Vec<_> = std::fs::read_dir(cache.join("objects"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(objects.len(), 1, "{objects:?}");
    let object = &objects[0];
    let written = std::fs::metadata(object).unwrap().modified().unwrap();
    let (line, warm) = hello_run("warm");
    assert_eq!(line, "hello from wasm warm\n");
    assert_eq!(
        std::fs::metadata(object).unwrap().modified().unwrap(),
        written,
        "a hit must not rewrite"
    );
    eprintln!("hello to first line: cold {cold:?}, warm {warm:?}");

    // Flip bytes in the middle of the artifact: detected, recompiled, and the run succeeds.
    let mut bytes = std::fs::read(object).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid..mid + 16].fill(0xcc);
    std::fs::set_permissions(object, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    std::fs::write(object, &bytes).unwrap();
    let (line, _) = hello_run("again");
    assert_eq!(line, "hello from wasm again\n");
    let engine = wasm_exec::new_engine().unwrap();
    let artifact = CompileCache::open(&cache, &engine)
        .unwrap()
        .get_or_compile(&hello)
        .unwrap();
    assert!(
        !artifact.compiled,
        "the runner should have repaired the entry"
    );
}

#[test]
fn a_precompiled_artifact_passed_by_fd_is_verified_then_used() {
    let dir = tempfile::tempdir().unwrap();
    let hello = critest_module(dir.path(), "hello");
    // The daemon's side: compile into the cache at create time, open the artifact.
    let engine = wasm_exec::new_engine().unwrap();
    let artifact = CompileCache::open(&dir.path().join("cache"), &engine)
        .unwrap()
        .get_or_compile(&hello)
        .unwrap();
    let with_fd = |sha256: &str| {
        let file = std::fs::File::open(&artifact.path).unwrap();
        let mut cmd = runner(dir.path());
        cmd.args([
            "--precompiled-fd",
            "3",
            "--precompiled-sha256",
            sha256,
            "--",
        ])
        .arg(&hello)
        .arg("fd");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: dup2 between fork and exec; `file` outlives the spawn.
        unsafe {
            // dup2 onto itself keeps close-on-exec, so clear it explicitly.
            cmd.pre_exec(
                move || match (libc::dup2(fd, 3), libc::fcntl(3, libc::F_SETFD, 0)) {
                    (-1, _) | (_, -1) => Err(std::io::Error::last_os_error()),
                    _ => Ok(()),
                },
            );
        }
        let out = run(&mut cmd);
        drop(file);
        out
    };
    let out = with_fd(&artifact.sha256);
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "hello from wasm fd\n")
    );
    assert_eq!(stderr(&out), "");
    // A digest that does not match: never loaded, compiled from the module instead.
    let out = with_fd(&"0".repeat(64));
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "hello from wasm fd\n")
    );
    assert!(
        stderr(&out).contains("was rejected: sha256 is"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_precompiled_fd_that_is_not_open_falls_back_to_compiling() {
    let dir = tempfile::tempdir().unwrap();
    let hello = critest_module(dir.path(), "hello");
    let out = run(runner(dir.path())
        .args(["--precompiled-fd", "77", "--precompiled-sha256", "00", "--"])
        .arg(&hello));
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "hello from wasm\n")
    );
    assert!(stderr(&out).contains("fd 77"), "{}", stderr(&out));
}

#[test]
fn an_unterminated_last_line_is_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let module = guest(dir.path(), "partial.wasm", NO_NEWLINE);
    let out = run(runner(dir.path()).arg("--").arg(&module));
    assert_eq!(
        (out.status.code(), stdout(&out).as_str()),
        (Some(0), "no newline")
    );
}
