//! `berth-wasm-run ARGS...`: the same runner as `berth __wasm-run ARGS...`.

fn main() {
    std::process::exit(wasm_exec::runner::main(
        std::env::args_os().skip(1).collect(),
    ));
}
