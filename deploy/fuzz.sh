#!/usr/bin/env bash
# berth's fuzz targets (cargo-fuzz / libFuzzer), each run for a bounded time from a copy
# of its seed corpus, so the repository stays as it was. FUZZING.md describes the targets.
#
#   deploy/fuzz.sh                       # build and run every target
#   deploy/fuzz.sh layer_unpack cni_result
#   deploy/fuzz.sh --build-only          # just build (and time) the fuzz crates
#   deploy/fuzz.sh --list
#
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_RSS_MB     libFuzzer -rss_limit_mb (default 2048)
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (default 10)
#   FUZZ_SANITIZER  address | none, for every crate (default: address, but none for
#                   cri-server, whose Wasmtime-sized build under ASan is too slow)
#   FUZZ_TOOLCHAIN  the nightly toolchain cargo-fuzz builds with (default nightly)
#   FUZZ_TARGET_DIR where the fuzz builds go, one directory per crate (default
#                   /var/cache/berth/fuzz-target: outside the repository, so a fresh clone
#                   on the same machine, as CI's, rebuilds only berth's own crates)
#
# Exits non-zero when a target fails to build or finds a crash, hang or OOM; the input
# that did it is kept under <crate>/fuzz/artifacts/<target>/ (git-ignored) and printed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:$HOME/.cargo/bin

CARGO_FUZZ_VERSION=0.13.2
TOOLCHAIN=${FUZZ_TOOLCHAIN:-nightly}
SECONDS_EACH=${FUZZ_SECONDS:-60}
RSS_MB=${FUZZ_RSS_MB:-2048}
TIMEOUT=${FUZZ_TIMEOUT:-10}
TARGET_DIR=${FUZZ_TARGET_DIR:-/var/cache/berth/fuzz-target}

# target → the crate whose fuzz/ directory holds it, in the order they run.
TARGETS=(spdy_frames image_manifest layer_unpack cni_result container_spec)
declare -A CRATE=(
    [spdy_frames]=streaming
    [image_manifest]=image-store
    [layer_unpack]=image-store
    [cni_result]=sandbox
    [container_spec]=cri-server
)

log() { printf 'fuzz: %s\n' "$*" >&2; }

BUILD_ONLY=0
selected=()
for a in "$@"; do
    case $a in
        --build-only) BUILD_ONLY=1 ;;
        --list) printf '%s\n' "${TARGETS[@]}"; exit 0 ;;
        -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) log "unknown option $a"; exit 2 ;;
        *)
            [[ -n ${CRATE[$a]:-} ]] || { log "unknown target $a (have: ${TARGETS[*]})"; exit 2; }
            selected+=("$a")
            ;;
    esac
done
((${#selected[@]})) || selected=("${TARGETS[@]}")

# --- tools: a nightly toolchain and the pinned cargo-fuzz --------------------------------
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
    log "installing the $TOOLCHAIN toolchain"
    rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if [[ $(cargo fuzz --version 2>/dev/null || true) != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
    log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

sanitizer_of() {
    if [[ -n ${FUZZ_SANITIZER:-} ]]; then
        echo "$FUZZ_SANITIZER"
    elif [[ $1 == cri-server ]]; then
        echo none
    else
        echo address
    fi
}

# --- build: once per crate, only the crates of the selected targets ----------------------
declare -A BUILT BUILD_SECONDS
failed=0
for t in "${selected[@]}"; do
    crate=${CRATE[$t]}
    [[ -n ${BUILT[$crate]:-} ]] && continue
    san=$(sanitizer_of "$crate")
    log "building $crate/fuzz (sanitizer: $san)"
    start=$(date +%s)
    mkdir -p "$TARGET_DIR/$crate"
    if (cd "$crate/fuzz" && cargo "+$TOOLCHAIN" fuzz build -O --debug-assertions -s "$san" \
        --target-dir "$TARGET_DIR/$crate"); then
        BUILT[$crate]=ok
    else
        BUILT[$crate]=failed
        failed=1
    fi
    BUILD_SECONDS[$crate]=$(($(date +%s) - start))
    log "built $crate/fuzz in ${BUILD_SECONDS[$crate]}s: ${BUILT[$crate]}"
done
if ((BUILD_ONLY)); then
    for c in "${!BUILD_SECONDS[@]}"; do
        printf 'fuzz-build: %-12s %5ss %s\n' "$c" "${BUILD_SECONDS[$c]}" "${BUILT[$c]}"
    done
    exit $failed
fi

# --- run ----------------------------------------------------------------------------------
work=$(mktemp -d -t berth-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
summary=()
for t in "${selected[@]}"; do
    crate=${CRATE[$t]}
    if [[ ${BUILT[$crate]} != ok ]]; then
        summary+=("$(printf '%-15s build failed' "$t")")
        continue
    fi
    bin=$TARGET_DIR/$crate/x86_64-unknown-linux-gnu/release/$t
    seeds=$crate/fuzz/corpus/$t
    artifacts=$crate/fuzz/artifacts/$t
    mkdir -p "$artifacts" "$work/$t/corpus" "$work/$t/tmp"
    # libFuzzer adds what it finds to the first corpus dir: a copy, never the repo's.
    [[ -d $seeds ]] && cp -r "$seeds/." "$work/$t/corpus/"
    log "running $t for ${SECONDS_EACH}s ($(find "$work/$t/corpus" -type f | wc -l) seeds)"
    start=$(date +%s)
    set +e
    # The targets' scratch files live under TMPDIR, removed with $work even after a crash.
    TMPDIR=$work/$t/tmp RUST_BACKTRACE=1 "$bin" "$work/$t/corpus" \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb="$RSS_MB" -timeout="$TIMEOUT" \
        -artifact_prefix="$artifacts/" -print_final_stats=1 \
        >"$work/$t/log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - start))
    # libFuzzer's closing lines, without its recommended dictionary.
    grep -vE '^"|^###### |^[[:space:]]*$' "$work/$t/log" | tail -n 12 | sed "s/^/  $t| /" >&2
    # Runs: libFuzzer's final `#N  DONE ...` line; after a crash, its final stats or the
    # last `#N` status line.
    runs=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/$t/log" | grep -oE '^#[0-9]+' | tr -d '#' || true)
    [[ -n $runs ]] || runs=$(grep -oE 'stat::number_of_executed_units: [0-9]+' "$work/$t/log" | grep -oE '[0-9]+$' || true)
    [[ -n $runs ]] || runs=$(grep -oE '^#[0-9]+' "$work/$t/log" | tail -n 1 | tr -d '#' || true)
    crash=$(grep -oE 'Test unit written to .*' "$work/$t/log" | sed 's/^Test unit written to //' || true)
    crashes=0
    if ((rc != 0)) || [[ -n $crash ]]; then
        crashes=$(printf '%s\n' "$crash" | grep -c . || true)
        ((crashes)) || crashes=1
        failed=1
        cp "$work/$t/log" "$artifacts/last-failure.log"
        grep -A 12 -E 'panicked at|ERROR: (AddressSanitizer|libFuzzer)' "$work/$t/log" | head -n 40 | sed "s/^/  $t| /" >&2 || true
        log "$t FAILED (exit $rc); input: ${crash:-none written}; log: $artifacts/last-failure.log"
    fi
    summary+=("$(printf '%-15s %4ss %10s runs  %s crashes %s' "$t" "$took" "${runs:-0}" "$crashes" "$crash")")
done

printf '\n' >&2
for line in "${summary[@]}"; do
    printf 'fuzz-summary: %s\n' "$line"
done
exit $failed
