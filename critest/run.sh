#!/usr/bin/env bash
# Runs the CRI conformance suite (cri-tools critest v1.37.0) against berth or, for
# comparison, against containerd 2.4.2 + runc 1.5.2 (built from the Go module proxy by
# critest/install-containerd.sh), on this machine.
#
#   critest/run.sh [--runtime berth|containerd] [--berth-bin PATH] [--focus RE]
#                  [--parallel N] [--no-results]
#
# Steps: install the tools, build the stand-in images and serve them from the local
# registry (127.0.0.1:5000, reached through per-registry mirrors), install the CNI
# network, start the runtime on a private socket, run critest with a JSON report, stop
# the runtime and clean up whatever the specs left behind (also on failure or Ctrl-C).
#
# Output: critest/results/<runtime>.json (the Ginkgo JSON report without captured output;
# the full one is critest/out/logs/critest-<runtime>.json), critest/RESULTS.md
# (regenerated from both JSON files), and for berth the expected-pass check
# (critest/check-expected.py; its failure makes this script exit non-zero). With
# --focus the report goes to critest/out/<runtime>-focus.json instead, so a partial run
# never overwrites the full results.
#
# Skipped on purpose (and named in RESULTS.md): 'public image with digest' (needs an
# upstream manifest-list digest no local registry can serve). AppArmor and SELinux specs
# skip themselves on this host; feature-gated specs skip when the runtime does not
# advertise the feature; the NRI specs skip unless -nri-socket is given (containerd only:
# berth has no NRI).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=critest/lib.sh
source "$HERE/lib.sh"

RUNTIME=berth
BERTH_BIN=$CT_REPO/target/release/berth
FOCUS=""
PARALLEL=1
RESULTS=1
SKIP_RE='public image with digest'

while (($#)); do
    case $1 in
    --runtime) RUNTIME=$2; shift 2 ;;
    --berth-bin) BERTH_BIN=$(realpath "$2"); shift 2 ;;
    --focus) FOCUS=$2; shift 2 ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --no-results) RESULTS=0; shift ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $RUNTIME == berth || $RUNTIME == containerd ]] || { echo "run.sh: --runtime berth|containerd" >&2; exit 2; }

ct_install_traps

ct_prepare
mkdir -p "$HERE/results" "$CT_LOGS"
full_report=$CT_LOGS/critest-$RUNTIME.json
if [[ -n $FOCUS ]]; then
    report=$CT_REPO/critest/out/$RUNTIME-focus.json
else
    report=$HERE/results/$RUNTIME.json
fi
rm -f "$report" "$full_report"

ct_host_snapshot
ct_runtime_start "$RUNTIME" "$BERTH_BIN"

args=(-runtime-endpoint "$CT_ENDPOINT" -image-endpoint "$CT_ENDPOINT"
    -ginkgo.no-color -ginkgo.json-report="$full_report" -ginkgo.skip="$SKIP_RE")
[[ -n $FOCUS ]] && args+=(-ginkgo.focus="$FOCUS")
# critest's NRI specs run only with -nri-socket: given when the runtime serves NRI plugins.
[[ -n $CT_NRI_SOCKET ]] && args+=(-nri-socket="$CT_NRI_SOCKET")
((PARALLEL > 1)) && args+=(-parallel="$PARALLEL")

ct_log "critest ${args[*]}"
start=$(date +%s)
rc=0
# From an empty directory: critest would read a crictl.yaml in the parent of its CWD.
mkdir -p "$CT_RUN/cwd"
(cd "$CT_RUN/cwd" && exec critest "${args[@]}") >"$CT_LOGS/critest-$RUNTIME.out" 2>&1 || rc=$?
ct_log "critest exited $rc after $(($(date +%s) - start)) s; output in $CT_LOGS/critest-$RUNTIME.out"
grep -E '^(Ran |FAIL!|SUCCESS!|PASS|FAIL)' "$CT_LOGS/critest-$RUNTIME.out" | tail -3 >&2 || true
[[ -s $full_report ]] || { ct_log "no JSON report was written"; exit 1; }
python3 "$HERE/results.py" --compact "$full_report" "$report"

ct_runtime_stop
ct_cleanup_host

python3 "$HERE/results.py" --summary "$report"
if [[ $RESULTS == 1 && -z $FOCUS ]]; then
    python3 "$HERE/results.py"
fi
if [[ $RUNTIME == berth ]]; then
    python3 "$HERE/check-expected.py" ${FOCUS:+--partial} "$report"
fi
