#!/usr/bin/env bash
# Wasm and monitor benchmarks: berth (Wasm containers, and its per-container monitor) beside
# containerd 2.4.2 + runc 1.5.2 (critest/install-containerd.sh) running the native busybox
# equivalents, one after the other on this machine; then the "Wasm and monitor" section of
# bench/RESULTS.md.
#
#   bench/wasm.sh [--berth-bin PATH] [--runtimes "berth containerd"] [--runs 20]
#                 [--mem-containers 10] [--scale 1000] [--scale-seconds 600]
#
# What is measured (bench/wasm_bench.py, a CRI client over the runtime's socket):
#   - CreateContainer + StartContainer until the CRI log file holds the first line:
#     wasm-hello with the compile cache warm, and cold (<root>/wasm-cache emptied before
#     each run); busybox `echo` on both runtimes
#   - PSS of an idle container process + its monitor (berth: wasm-loop and busybox
#     `sleep`; containerd: `sleep` + its share of the pod's containerd-shim-runc-v2), and
#     the monitor's (shim's) own VmRSS and PSS
#   - up to --scale idle containers in 10 pods (berth: wasm-loop; containerd: busybox
#     `sleep`), ListContainers latency at that scale, memory (free -m) and time taken,
#     capped at --scale-seconds and at 3 GiB MemAvailable, all removed afterwards
# The runtimes run on private sockets and dirs (/run/berth-bench-wasm, /var/lib/berth-bench-wasm)
# with critest/lib.sh's start/stop code; everything is removed on exit, also on failure.
# Raw results: bench/results/wasm/<runtime>.json (and runs/), daemon logs in bench/out/logs/.
set -euo pipefail

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CT_RUN=/run/berth-bench-wasm CT_LIB=/var/lib/berth-bench-wasm CT_LOGS=$BENCH/out/logs
# shellcheck source=critest/lib.sh
source "$BENCH/../critest/lib.sh"

BERTH_BIN=$CT_REPO/target/release/berth
RUNTIMES="berth containerd"
PY_ARGS=()
while (($#)); do
    case $1 in
    --berth-bin) BERTH_BIN=$(realpath "$2"); shift 2 ;;
    --runtimes) RUNTIMES=$2; shift 2 ;;
    --runs | --mem-containers | --scale | --scale-seconds | --only) PY_ARGS+=("$1" "$2"); shift 2 ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench/wasm.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# A venv with grpcio and grpcio-tools (PyPI) for the CRI client, in the git-ignored bench/out.
VENV=$BENCH/out/venv
if ! "$VENV/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
    ct_log "creating $VENV (grpcio, grpcio-tools)"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q grpcio grpcio-tools
fi

# After the runtime is stopped: the private dirs themselves (lib.sh leaves its configs there).
ct_extra_cleanup() { ct_wipe_dir "$CT_RUN"; ct_wipe_dir "$CT_LIB"; }
ct_install_traps
ct_prepare
mkdir -p "$BENCH/results/wasm"
for rt in $RUNTIMES; do
    out=$BENCH/results/wasm/$rt.json
    rm -f "$out"
    ct_host_snapshot
    if ! ct_runtime_start "$rt" "$BERTH_BIN"; then
        echo "{\"runtime\": \"$rt\", \"start_failed\": true}" >"$out"
        ct_runtime_stop || true
        continue
    fi
    version=$(crictl -r "$CT_ENDPOINT" version 2>/dev/null | awk -F':[ ]*' '$1 == "RuntimeVersion" {print $2}')
    # Which build: the repo's HEAD and the binary's mtime (a build may lag behind HEAD).
    [[ $rt != berth ]] || version+=" (HEAD $(git -C "$CT_REPO" rev-parse --short HEAD), binary built $(date -u -r "$BERTH_BIN" +%H:%M:%SZ))"
    rm -rf "$CT_RUN/work"
    ct_log "$rt: bench/wasm_bench.py (load $(cut -d' ' -f1-3 /proc/loadavg))"
    rc=0
    "$VENV/bin/python" "$BENCH/wasm_bench.py" --runtime "$rt" --endpoint "$CT_ENDPOINT" \
        --root "$CT_LIB/berth" --daemon-pid "$CT_PID" --workdir "$CT_RUN/work" --out "$out" "${PY_ARGS[@]}" || rc=$?
    ((rc == 0)) || ct_log "$rt: wasm_bench.py exited $rc"
    [[ -s $out ]] && python3 - "$out" "$version" <<'EOF'
import json, sys
p, v = sys.argv[1], sys.argv[2]
d = json.load(open(p)); d["version"] = v
json.dump(d, open(p, "w"), indent=1)
EOF
    # Every run is kept for the spread table in RESULTS.md.
    if [[ -s $out ]]; then
        mkdir -p "$BENCH/results/wasm/runs"
        cp "$out" "$BENCH/results/wasm/runs/$(jq -r .date "$out")-$rt.json"
    fi
    ct_runtime_stop
    ct_cleanup_host
    rm -rf "$CT_RUN/work"
done

python3 "$BENCH/wasm_report.py"
