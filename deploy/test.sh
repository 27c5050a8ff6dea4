#!/usr/bin/env bash
# berth's whole test suite, as CI runs it (.ci/run) and as the README's second command:
#   1. what the tests need (deploy/install.sh --deps-only: Debian packages, cri-tools),
#   2. formatting and clippy with warnings denied,
#   3. unit and integration tests (real kernel, registry, CNI plugins, crictl),
#   4. the fuzz targets (FUZZING.md), each for a bounded time from its seed corpus,
#   5. the critest conformance suite (v1.37.0) against a release build of berth, with the
#      expected-to-pass list enforced, and against containerd 2.4 for the comparison table,
#   6. a standalone kubelet v1.37.2 on berth: the scenarios of e2e-node/kubelet-scenarios.sh.
#
#   deploy/test.sh                  # all of it
#   deploy/test.sh --no-containerd  # skip the containerd comparison run
set -euo pipefail
cd "$(dirname "$0")/.."

WITH_CONTAINERD=1
[[ ${1:-} == --no-containerd ]] && WITH_CONTAINERD=0

export PATH=$PATH:$HOME/.cargo/bin:/usr/local/go/bin:/usr/local/bin
step() { printf '\n==> %s\n' "$*" >&2; }

step "dependencies"
deploy/install.sh --deps-only

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# Release mode: the tests, critest and the benchmarks then share one build (a clean
# build with Wasmtime takes minutes on two cores; a second profile would double it).
step "unit and integration tests"
mkdir -p target
cargo test --release --workspace --no-fail-fast 2>&1 | tee target/test.log
read -r cargo_passed cargo_failed < <(awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i }
} END { print p + 0, f + 0 }' target/test.log)

# Bounded (FUZZ_SECONDS per target); a crash fails the suite and keeps its input.
step "fuzz targets, ${FUZZ_SECONDS:=30} s each"
FUZZ_SECONDS=$FUZZ_SECONDS deploy/fuzz.sh

step "release build for critest"
cargo build --release -p cri-server

if [[ $WITH_CONTAINERD == 1 ]]; then
    step "critest against containerd 2.4 (comparison columns)"
    critest/install-containerd.sh
    # The comparison must not decide our result: a containerd failure only leaves its
    # columns as they were.
    critest/run.sh --runtime containerd --no-results || echo "test: the containerd run failed; its columns keep their last values" >&2
fi

step "critest against berth (expected-to-pass list enforced)"
critest/run.sh --runtime berth --berth-bin target/release/berth

step "a standalone kubelet on berth (e2e-node/kubelet-scenarios.sh)"
e2e-node/install-kubelet.sh
e2e-node/kubelet-scenarios.sh --berth-bin target/release/berth

echo
echo "cargo tests: ${cargo_passed} passed, ${cargo_failed} failed"
python3 critest/results.py --summary critest/results/berth.json
