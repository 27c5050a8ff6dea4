#!/usr/bin/env bash
# Wasm checks critest cannot make: runs the WASI test images (critest/images/README.md)
# through berth with crictl, in one pod next to a native busybox container.
#
#   critest/wasm-smoke.sh [--berth-bin PATH]
#
# Checks (each PASS or FAIL with the reason; exit status 1 if any failed):
#   hello-<shape>   wasm-hello in the compat, compat-smart and oci shapes, args "a b":
#                   exits 0 and its CRI log has "stdout F hello from wasm a b"
#   native-sidecar  busybox `echo native` in the same pod: exits 0, log has "native"
#   loop-stop       wasm-loop:compat keeps running, logs "wasm loop started", and
#                   StopContainer (timeout 2 s) ends it within 10 s
#   memhog-limit    wasm-memhog:compat with a 32 MiB memory limit ends with a non-zero
#                   exit code within 60 s (OOM kill or failed memory.grow)
# Results are also written to critest/out/wasm-smoke.txt.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=critest/lib.sh
source "$HERE/lib.sh"

BERTH_BIN=$CT_REPO/target/release/berth
while (($#)); do
    case $1 in
    --berth-bin) BERTH_BIN=$(realpath "$2"); shift 2 ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "wasm-smoke.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

WORK=$CT_RUN/wasm-smoke
ct_extra_cleanup() { rm -rf "$WORK"; }
ct_install_traps

ct_prepare
ct_runtime_start berth "$BERTH_BIN"
rm -rf "$WORK"
mkdir -p "$WORK/logs"
OUT=$CT_REPO/critest/out/wasm-smoke.txt
: >"$OUT"
failed=0
cri() { crictl --timeout 30s -r "$CT_ENDPOINT" -i "$CT_ENDPOINT" "$@" 2>"$WORK/err"; }
# The last error crictl logged, without its logrus decoration.
err() {
    grep -v 'level=warning' "$WORK/err" | tail -1 |
        sed -e 's/^time="[^"]*" level=[a-z]* msg="\(.*\)"$/\1/' -e 's/\\"/"/g'
}
result() { # name PASS|FAIL detail
    printf '%-15s %s  %s\n' "$1" "$2" "$3" | tee -a "$OUT"
    [[ $2 == PASS ]] || failed=1
}

cat >"$WORK/pod.json" <<EOF
{"metadata": {"name": "wasm-smoke", "namespace": "berth-test", "uid": "wasm-smoke-$$", "attempt": 0},
 "log_directory": "$WORK/logs", "linux": {}}
EOF
if ! pod=$(cri runp "$WORK/pod.json"); then
    result pod FAIL "RunPodSandbox: $(err)"
    exit 1
fi

# create NAME IMAGE [ARGS-JSON] [MEMORY-LIMIT] -> container ID on stdout
create() {
    local name=$1 image=$2 args=${3:-[]} mem=${4:-0}
    cri pull "$image" >/dev/null || return 1
    cat >"$WORK/$name.json" <<EOF
{"metadata": {"name": "$name"}, "image": {"image": "$image"}, "args": $args,
 "log_path": "$name.log", "linux": {"resources": {"memory_limit_in_bytes": $mem}}}
EOF
    cri create "$pod" "$WORK/$name.json" "$WORK/pod.json"
}
state() { cri inspect "$1" | jq -r '.status.state'; }
exit_info() { cri inspect "$1" | jq -r '"exit \(.status.exitCode) \(.status.reason) \(.status.message)"'; }
wait_exited() { # id seconds
    local i
    for ((i = 0; i < $2 * 5; i++)); do
        [[ $(state "$1") == CONTAINER_EXITED ]] && return 0
        sleep 0.2
    done
    return 1
}
run_to_exit() { # name image args expected-log-text
    local name=$1 cid code
    if ! cid=$(create "$name" "$2" "$3"); then result "$name" FAIL "create: $(err)"; return; fi
    if ! cri start "$cid" >/dev/null; then result "$name" FAIL "start: $(err)"; return; fi
    if ! wait_exited "$cid" 20; then result "$name" FAIL "still $(state "$cid") after 20 s"; return; fi
    code=$(cri inspect "$cid" | jq -r '.status.exitCode')
    if [[ $code != 0 ]]; then
        result "$name" FAIL "$(exit_info "$cid")"
    elif ! grep -q " stdout F $4\$" "$WORK/logs/$name.log" 2>/dev/null; then
        result "$name" FAIL "log lacks '$4': $(head -c 200 "$WORK/logs/$name.log" 2>/dev/null | tr '\n' ' ')"
    else
        result "$name" PASS "exit 0, log: $4"
    fi
}

for shape in compat compat-smart oci; do
    run_to_exit "hello-$shape" "127.0.0.1:5000/berth-test/wasm-hello:$shape" '["a", "b"]' "hello from wasm a b"
done
run_to_exit native-sidecar registry.k8s.io/e2e-test-images/busybox:1.29-2 '["echo", "native"]' native

# loop-stop
if cid=$(create loop-stop 127.0.0.1:5000/berth-test/wasm-loop:compat) && cri start "$cid" >/dev/null; then
    sleep 2
    if [[ $(state "$cid") != CONTAINER_RUNNING ]]; then
        result loop-stop FAIL "not running after 2 s: $(exit_info "$cid")"
    elif ! grep -q 'stdout F wasm loop started' "$WORK/logs/loop-stop.log" 2>/dev/null; then
        result loop-stop FAIL "running, but no 'wasm loop started' in its log"
    else
        start=$(date +%s%N)
        cri stop --timeout 2 "$cid" >/dev/null || true
        if wait_exited "$cid" 10; then
            result loop-stop PASS "stopped in $((($(date +%s%N) - start) / 1000000)) ms ($(exit_info "$cid"))"
        else
            result loop-stop FAIL "still $(state "$cid") 10 s after StopContainer: $(err)"
        fi
    fi
else
    result loop-stop FAIL "create/start: $(err)"
fi

# memhog-limit
if cid=$(create memhog-limit 127.0.0.1:5000/berth-test/wasm-memhog:compat '[]' $((32 << 20))) &&
    cri start "$cid" >/dev/null; then
    if ! wait_exited "$cid" 60; then
        result memhog-limit FAIL "still $(state "$cid") after 60 s"
    elif [[ $(cri inspect "$cid" | jq -r '.status.exitCode') == 0 ]]; then
        result memhog-limit FAIL "exited 0 despite the 32 MiB limit"
    else
        result memhog-limit PASS "$(exit_info "$cid"); log: $(tail -1 "$WORK/logs/memhog-limit.log" 2>/dev/null | cut -d' ' -f4-)"
    fi
else
    result memhog-limit FAIL "create/start: $(err)"
fi

exit "$failed"
