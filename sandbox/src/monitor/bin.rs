//! `berth-monitor create|exec <state-dir> ...`: the container monitor without the daemon.

fn main() {
    let code = sandbox::monitor::main(std::env::args_os().skip(1).collect());
    std::process::exit(code);
}
