//! Builds `berth-pod-init` (pod-init/main.rs), the tiny static program that is PID 1 of
//! every pod's PID namespace, and leaves it in OUT_DIR for `include_bytes!`.
//!
//! It is compiled here with the same rustc rather than as a Cargo binary because the
//! daemon embeds it (berth stays one file) and Cargo cannot order a crate's build after
//! another crate's binary. It needs only the C toolchain's static libc (libc6-dev) and
//! libgcc_eh (gcc), which the install script brings.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    const SOURCE: &str = "pod-init/main.rs";
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR")).join("berth-pod-init");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "bin",
            "--crate-name",
            "berth_pod_init",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "strip=symbols",
        ])
        // A static, position-dependent executable: nothing for a loader to do at exec.
        .args([
            "-C",
            "target-feature=+crt-static",
            "-C",
            "relocation-model=static",
        ])
        // The static glibc refers to the unwinder for thread cancellation.
        .args(["-C", "link-arg=-lgcc_eh"])
        .arg("-o")
        .arg(&out)
        .arg(SOURCE)
        .status()
        .unwrap_or_else(|e| panic!("running rustc for {SOURCE}: {e}"));
    assert!(
        status.success(),
        "building {SOURCE} failed ({status}); it needs a static libc (libc6-dev) and libgcc_eh (gcc)"
    );
}
