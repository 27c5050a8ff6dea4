#!/usr/bin/env bash
# Tests run-demo.sh against a berth of its own on a private socket (critest/lib.sh with its
# own run and lib dirs, so it never touches /run/berth or a critest run):
# run the demo, run it again (the second run must replace the first pod), check that the
# app runs as Wasm and the sidecar natively and both log, then --remove. Everything it
# starts is stopped on exit, also on failure.
#
#   deploy/examples/test-demo.sh [--berth-bin PATH] [--handler wasm] [--install-config]
#
# --install-config: the daemon runs with deploy/config.toml (what install.sh installs, paths
# made private) instead of critest's config with its registry mirrors and insecure hosts.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export CT_RUN=/run/berth-demo-test CT_LIB=/var/lib/berth-demo-test
# Daemon logs apart from critest's (critest/out/logs/berth.log may belong to a run going on).
CT_LOGS=$(cd "$HERE/../.." && pwd)/critest/out/logs/demo-test
export CT_LOGS
# shellcheck source=critest/lib.sh
source "$HERE/../../critest/lib.sh"

BERTH_BIN=$CT_REPO/target/release/berth
[[ -x $BERTH_BIN ]] || BERTH_BIN=$CT_REPO/target/debug/berth
HANDLER=()
INSTALL_CONFIG=0
while (($#)); do
    case $1 in
    --berth-bin) BERTH_BIN=$(realpath "$2"); shift 2 ;;
    --handler) HANDLER=(--handler "$2"); shift 2 ;;
    --install-config) INSTALL_CONFIG=1; shift ;;
    -h | --help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "test-demo.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

# After the runtime is stopped: the private dirs themselves (lib.sh leaves its configs there).
ct_extra_cleanup() { ct_wipe_dir "$CT_RUN"; ct_wipe_dir "$CT_LIB"; }
if [[ $INSTALL_CONFIG == 1 ]]; then
    # What deploy/install.sh installs (deploy/config.toml: no registry settings at all, so the
    # 127.0.0.1:5000 pulls rely on berth's plain HTTP for loopback registries), with only the
    # paths made private.
    ct_berth_config() {
        sed -e "s|^socket = .*|socket = \"$CT_RUN/berth.sock\"|" \
            -e "s|^root_dir = .*|root_dir = \"$CT_LIB/berth\"|" \
            -e "s|^state_dir = .*|state_dir = \"$CT_RUN/berth-state\"|" \
            -e "s|^conf_dir = .*|conf_dir = \"$CT_CNI_DIR\"|" "$CT_REPO/deploy/config.toml"
    }
fi
ct_install_traps
ct_prepare
ct_runtime_start berth "$BERTH_BIN"
OUT=$CT_RUN/demo-out
fail() { echo "test-demo: FAIL: $*" >&2; exit 1; }
ok() { echo "test-demo: ok: $*" >&2; }
pods() { crictl -r "$CT_ENDPOINT" pods -o json | jq -r '.items[] | select(.metadata.name == "wasm-mixed") | .id'; }

"$HERE/run-demo.sh" --runtime-endpoint "$CT_ENDPOINT" "${HANDLER[@]}" | tee "$OUT.1"
first=$(pods)
[[ $(wc -w <<<"$first") == 1 ]] || fail "expected one demo pod after the first run, got: $first"
grep -Eq '^app .*runtime=wasm ' "$OUT.1" || fail "app did not run as wasm"
grep -Eq '^sidecar .*runtime=native ' "$OUT.1" || fail "sidecar did not run natively"
grep -q 'tick' "$OUT.1" || fail "no tick in the app's log"
grep -q 'sidecar: native busybox' "$OUT.1" || fail "no line in the sidecar's log"
ok "first run: app=wasm, sidecar=native, both log"

"$HERE/run-demo.sh" --runtime-endpoint "$CT_ENDPOINT" "${HANDLER[@]}" >"$OUT.2"
second=$(pods)
[[ $(wc -w <<<"$second") == 1 && $second != "$first" ]] || fail "second run: pods '$second' (first was $first)"
[[ $(crictl -r "$CT_ENDPOINT" ps -q --pod "$second" --state running | wc -l) == 2 ]] || fail "second run: not 2 running containers"
ok "second run replaced pod ${first:0:13} with ${second:0:13}"

"$HERE/run-demo.sh" --runtime-endpoint "$CT_ENDPOINT" --remove
[[ -z $(pods) ]] || fail "--remove left a pod"
[[ -z $(crictl -r "$CT_ENDPOINT" ps -a -q) ]] || fail "--remove left containers"
ok "--remove removed the pod and its containers"
rm -f "$OUT".*
echo "test-demo: PASS" >&2
