#!/usr/bin/env bash
# The benchmark command: critest v1.37.0 -benchmark (bench/params.yaml) against berth and
# against containerd 2.4.2 + runc 1.5.2 (critest/install-containerd.sh), one after the other
# on this machine, then bench/RESULTS.md (medians per CRI operation, berth next to
# containerd 2.4).
#
#   bench/run.sh [--berth-bin PATH] [--runtimes "berth containerd"]
#
# Uses the same tools, images, registry mirror, CNI network and runtime start/stop code as
# critest/run.sh (critest/lib.sh). Raw data: bench/results/<runtime>/*.json (the critest
# benchmark files plus the Ginkgo report), logs in critest/out/logs/.
#
# critest times "start a container from scratch" once per run, so that spec runs
# SCRATCH_RUNS times in all (default 10: the full run, then critest runs that skip the
# other benchmarks; -benchmark overrides -ginkgo.focus) and the report gives the median. Before the runtimes, bench/cni_floor.py times the CNI
# plugins alone with the same network config (bench/results/cni/floor.json).
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=critest/lib.sh
source "$BENCH/../critest/lib.sh"

BERTH_BIN=$CT_REPO/target/release/berth
RUNTIMES="berth containerd"
while (($#)); do
    case $1 in
    --berth-bin) BERTH_BIN=$(realpath "$2"); shift 2 ;;
    --runtimes) RUNTIMES=$2; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "bench/run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

ct_install_traps

ct_prepare
SCRATCH_RUNS=${SCRATCH_RUNS:-10}
mkdir -p "$BENCH/results/cni"
python3 "$BENCH/cni_floor.py" "$(ls "$CT_CNI_DIR"/*.conflist | head -1)" "$BENCH/results/cni/floor.json"
for rt in $RUNTIMES; do
    out=$BENCH/results/$rt
    rm -rf "$out"
    mkdir -p "$out"
    ct_host_snapshot
    if ! ct_runtime_start "$rt" "$BERTH_BIN"; then
        echo "runtime did not start; see critest/out/logs/$rt.log" >"$out/start-failed.txt"
        ct_runtime_stop || true
        continue
    fi
    base=(-benchmark -runtime-endpoint "$CT_ENDPOINT" -image-endpoint "$CT_ENDPOINT"
        -benchmarking-params-file "$BENCH/params.yaml" -ginkgo.no-color)
    args=("${base[@]}" -benchmarking-output-dir "$out" -ginkgo.json-report "$out/report.json")
    {
        echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "nproc=$(nproc)"
        echo "kernel=$(uname -r)"
        echo "loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
        crictl -r "$CT_ENDPOINT" version 2>/dev/null | awk -F':[ ]*' '$1 ~ /^Runtime(Name|Version)$/ {print $1 "=" $2}'
    } >"$out/meta.txt"
    printf 'critest' >"$out/command.txt"
    printf ' %q' "${args[@]}" >>"$out/command.txt"
    echo >>"$out/command.txt"
    ct_log "critest ${args[*]}"
    mkdir -p "$CT_RUN/cwd"
    rc=0
    (cd "$CT_RUN/cwd" && exec critest "${args[@]}") >"$CT_LOGS/bench-$rt.out" 2>&1 || rc=$?
    ct_log "$rt: critest -benchmark exited $rc; output in $CT_LOGS/bench-$rt.out"
    grep -E '^(Ran |FAIL!|SUCCESS!)' "$CT_LOGS/bench-$rt.out" >&2 || true
    [[ -s $out/report.json ]] && python3 "$CT_HERE/results.py" --compact "$out/report.json" "$out/report.json"
    for ((i = 2; i <= SCRATCH_RUNS; i++)); do
        mkdir -p "$out/scratch"
        (cd "$CT_RUN/cwd" && exec critest "${base[@]}" -benchmarking-output-dir "$out/scratch" \
            -ginkgo.skip "lifecycle of PodSandbox|basic operations on|listing Image" \
            -ginkgo.json-report "$out/scratch/report-$i.json") >>"$CT_LOGS/bench-$rt.out" 2>&1 ||
            ct_log "$rt: scratch run $i failed; see $CT_LOGS/bench-$rt.out"
        f=$out/scratch/report-$i.json
        [[ -s $f ]] && python3 "$CT_HERE/results.py" --compact "$f" "$f"
    done
    ct_runtime_stop
    ct_cleanup_host
done

python3 "$BENCH/report.py"
# report.py rewrites RESULTS.md; put back the section of the last bench/wasm.sh run.
if [[ -d $BENCH/results/wasm ]]; then python3 "$BENCH/wasm_report.py"; fi
