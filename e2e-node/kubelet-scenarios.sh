#!/usr/bin/env bash
# berth under a real kubelet: a standalone kubelet v1.37 (no API server; static pods) on its
# own berth daemon, checked through the kubelet's HTTP API and crictl.
#
#   e2e-node/kubelet-scenarios.sh [--berth-bin PATH] [--only NAME,NAME...] [--keep]
#
#   --berth-bin PATH   the berth binary (default target/release/berth, else /opt/berth-h/berth)
#   --only NAMES       run only these scenarios (comma-separated; setup always runs)
#   --keep             leave everything running at the end (for debugging; undo with a
#                      second run, which cleans up what the first left)
#
# Scenarios (each prints PASS, FAIL or SKIP with the reason; exit status 1 if any failed):
#   pod-cidr           the kubelet's podCIDR reached berth (UpdateRuntimeConfig): `crictl info`
#                      shows it, berth rendered its CNI network from cni.conf_template, pod IPs
#                      are in it
#   native-pod         a busybox stand-in running a sleep loop is Running and ready
#   wasm-mixed         a Wasm container and a native one in one pod: both Running, berth ran
#                      `app` in Wasmtime, both logs readable with `crictl logs`
#   probes             exec and httpGet readiness/liveness probes that pass keep the container
#                      ready with 0 restarts; failing exec and httpGet liveness probes make the
#                      restart count grow
#   crashloop          a container exiting 1 is restarted with growing back-off (10s, 20s, ...)
#   oom-native         a native container over its 32 MiB limit: OOMKilled, exit 137
#   oom-wasm           a Wasm guest (wasm-memhog) over its 32 MiB limit: OOMKilled
#   streaming          exec (stdin/stdout/stderr/exit code, tty), attach and port-forward
#                      through the kubelet's streaming endpoints, over SPDY, WebSocket v5 (and
#                      SPDY-in-WebSocket port-forward) and the legacy v4.channel.k8s.io forms
#                      (e2e-node/streamcheck)
#   stats-summary      /stats/summary has CPU, memory and network for the pod and CPU and memory
#                      for its container (PodAndContainerStatsFromCRI: from ListPodSandboxStats),
#                      and a CPU rate (usageNanoCores) above 0 also for a second request made
#                      right after another
#   metrics-cadvisor   /metrics/cadvisor has CPU and memory series labelled container/pod/namespace
#                      for a native and a Wasm container (ListMetricDescriptors +
#                      ListPodSandboxMetrics)
#   static-pod-removal the removed manifest's pod and containers leave `crictl pods`/`ps -a`
#   kubelet-restart    a restarted kubelet adopts the running pods: same container IDs, same
#                      restart counts, nothing restarted
#   image-gc           a kubelet restarted with image GC settings (kubelet-config.yaml) removes
#                      an unused image (RemoveImage) and keeps the images of running pods
#   cri-errors         the kubelet log has no failed CRI call (rpc error, Unimplemented, ...);
#                      the lines are printed, grouped
#
# What it starts (all private, so it runs beside critest or a berth on the host):
#   berth     socket /run/berth-kubelet-test/berth.sock, root /var/lib/berth-kubelet-test/berth,
#             state /run/berth-kubelet-test/berth-state, registry.k8s.io, docker.io, ... mirrored
#             to the local registry 127.0.0.1:5000 (mirrors_only), CNI network rendered from
#             e2e-node/cni-template.json into /run/berth-kubelet-test/net.d once the kubelet
#             sends the pod CIDR (bridge berthk0, 10.89.0.0/16: not critest's 10.88.0.0/16)
#   kubelet   e2e-node/install-kubelet.sh's v1.37.2, root dir /var/lib/berth-kubelet-test/kubelet,
#             config e2e-node/kubelet-config.yaml (rendered into /run/berth-kubelet-test),
#             static pods in /run/berth-kubelet-test/manifests, HTTPS API on 127.0.0.1:10350
#             (BERTH_KUBELET_PORT), anonymous and AlwaysAllow
# At exit (also on failure or Ctrl-C) it stops the kubelet, removes every pod through crictl,
# stops berth and undoes the kubelet's host side effects: mounts below its dirs, the
# kubepods cgroups, the iptables chains it created (KUBE-FIREWALL, KUBE-IPTABLES-HINT,
# KUBE-KUBELET-CANARY and their jump rules), the six sysctls it sets (restored to the values
# recorded before it started), the /var/log/containers links, the CNI bridge and IP leases.
# Logs: e2e-node/out/logs/{berth,kubelet}.log; results: e2e-node/out/results.txt.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
export CT_RUN=/run/berth-kubelet-test CT_LIB=/var/lib/berth-kubelet-test CT_LOGS=$HERE/out/logs
# shellcheck source=critest/lib.sh
source "$REPO/critest/lib.sh"

BERTH_BIN=$REPO/target/release/berth
[[ -x $BERTH_BIN ]] || BERTH_BIN=/opt/berth-h/berth
ONLY="" KEEP=0
while (($#)); do
    case $1 in
    --berth-bin) BERTH_BIN=$(realpath "$2"); shift 2 ;;
    --only) ONLY=",$2,"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "kubelet-scenarios.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

NODE=berth-e2e
NS=berth-e2e
PORT=${BERTH_KUBELET_PORT:-10350}
HEALTHZ_PORT=$((PORT - 2))
POD_CIDR=10.89.0.0/16
BRIDGE=berthk0
CNI_NET=berth-kubelet-test
KUBELET_ROOT=$CT_LIB/kubelet
POD_LOGS=$CT_LIB/pod-logs
MANIFESTS=$CT_RUN/manifests
OUT=$HERE/out
RESULTS=$OUT/results.txt
SOCK=$CT_RUN/berth.sock
EP=unix://$SOCK
KUBELET_BIN=$("$HERE/install-kubelet.sh" --print-path)
STREAMCHECK=$OUT/bin/streamcheck
BUSYBOX=registry.k8s.io/e2e-test-images/busybox:1.29-2
NGINX=registry.k8s.io/e2e-test-images/nginx:1.14-2
UNUSED_IMAGE=registry.k8s.io/e2e-test-images/httpd:2.4.39-4
WASM_LOOP=127.0.0.1:5000/berth-test/wasm-loop:compat-smart
WASM_MEMHOG=127.0.0.1:5000/berth-test/wasm-memhog:compat
# record_host and the undo_* functions (KUBELET_SYSCTLS, KUBELET_CHAINS).
# shellcheck source=e2e-node/lib.sh
source "$HERE/lib.sh"

log() { echo "kubelet-scenarios: $*" >&2; }
cri() { crictl --config "$CT_RUN/crictl.yaml" "$@"; }
kget() { curl -sSk --max-time 20 "https://127.0.0.1:$PORT$1"; }

# ---------------------------------------------------------------------------------------
# Results

declare -a SUMMARY=()
FAILED=0
result() { # name PASS|FAIL|SKIP detail...
    local name=$1 verdict=$2
    shift 2
    printf '%-19s %s  %s\n' "$name" "$verdict" "$*" | tee -a "$RESULTS"
    SUMMARY+=("$(printf '%-19s %s' "$name" "$verdict")")
    [[ $verdict != FAIL ]] || FAILED=1
}

# Runs scenario_NAME unless --only leaves it out; the scenario calls result itself.
scenario() {
    [[ -z $ONLY || $ONLY == *",$1,"* ]] || return 0
    log "--- $1"
    local start=$SECONDS
    "scenario_${1//-/_}"
    log "--- $1 took $((SECONDS - start)) s"
}

# Retries a command once a second until it succeeds or SECONDS seconds have passed.
wait_until() { # seconds command...
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

# ---------------------------------------------------------------------------------------
# The kubelet's view

# The pod as /pods has it (static pods are named <name>-<node>).
pod_json() { kget /pods | jq -c --arg n "$1-$NODE" '.items[]? | select(.metadata.name == $n)'; }
# One container's status.
cstatus() { # pod container
    kget /pods | jq -c --arg n "$1-$NODE" --arg c "$2" \
        '.items[]? | select(.metadata.name == $n) | .status.containerStatuses[]? | select(.name == $c)'
}
cfield() { cstatus "$1" "$2" | jq -r "$3"; } # pod container jq-filter
running() { [[ $(cfield "$1" "$2" '.state.running != null') == true ]]; }
ready() { [[ $(cfield "$1" "$2" '.ready') == true ]]; }
restarts() { cfield "$1" "$2" '.restartCount // 0'; }
restarts_at_least() { local n; n=$(restarts "$1" "$2"); [[ -n $n && $n -ge $3 ]]; }
terminated() { [[ $(cfield "$1" "$2" '.state.terminated != null') == true ]]; }
# CRI container ID of the container's current attempt (containerID is berth://<id>).
cid() { cfield "$1" "$2" '.containerID // "" | sub("^[a-z]+://"; "")'; }
# A short description of a container's state, for failure messages.
describe() { # pod container
    local s
    s=$(cstatus "$1" "$2")
    [[ -n $s ]] || { echo "$2: no status in /pods (pod phase $(pod_json "$1" | jq -r '.status.phase // "-"'))"; return; }
    jq -r '"\(.name): ready=\(.ready) restarts=\(.restartCount) state=\(.state | tostring) last=\(.lastState | tostring)"' <<<"$s" | cut -c1-600
}
sandbox_id() { cri pods -q --namespace "$NS" --name "^$1-$NODE\$" 2>/dev/null | head -1; }

# ---------------------------------------------------------------------------------------
# Static pods

SLEEP_LOOP='trap "exit 0" TERM; i=0; while true; do i=$((i+1)); echo "tick $i"; sleep 1; done'

manifest() { # name: writes the pod's manifest from the function pod_NAME
    local f=$MANIFESTS/$1.yaml
    "pod_${1//-/_}" >"$f.tmp" && mv "$f.tmp" "$f"
}

pod_header() { # name [annotations-yaml]
    cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: $NS
  labels: {berth-e2e: "$1"}
${2:-}
spec:
  terminationGracePeriodSeconds: 5
EOF
}

pod_native() {
    pod_header native
    cat <<EOF
  containers:
    - name: sleeper
      image: $BUSYBOX
      command: ["sh", "-c", '$SLEEP_LOOP']
      resources:
        requests: {cpu: 10m, memory: 16Mi}
        limits: {memory: 64Mi}
EOF
}

pod_wasm_mixed() {
    pod_header wasm-mixed "  annotations: {module.wasm.image/variant: compat-smart}"
    cat <<EOF
  containers:
    - name: app
      image: $WASM_LOOP
      resources: {limits: {memory: 64Mi}}
    - name: sidecar
      image: $BUSYBOX
      command: ["sh", "-c", 'trap "exit 0" TERM; i=0; while true; do i=\$((i+1)); echo "sidecar line \$i"; sleep 1; done']
      resources: {limits: {memory: 32Mi}}
EOF
}

pod_probes() {
    pod_header probes
    cat <<EOF
  containers:
    - name: web
      image: $NGINX
      readinessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 2}
      livenessProbe: {httpGet: {path: /, port: 80}, periodSeconds: 2, failureThreshold: 3}
    - name: exec-ok
      image: $BUSYBOX
      command: ["sh", "-c", 'touch /tmp/healthy; $SLEEP_LOOP']
      readinessProbe: {exec: {command: [cat, /tmp/healthy]}, periodSeconds: 2}
      livenessProbe: {exec: {command: [cat, /tmp/healthy]}, periodSeconds: 2, failureThreshold: 3}
    - name: exec-fail
      image: $BUSYBOX
      command: ["sh", "-c", '$SLEEP_LOOP']
      livenessProbe: {exec: {command: [cat, /tmp/absent]}, initialDelaySeconds: 1, periodSeconds: 2, failureThreshold: 1}
    - name: http-fail
      image: $BUSYBOX
      command: ["sh", "-c", '$SLEEP_LOOP']
      livenessProbe: {httpGet: {path: /, port: 8081}, initialDelaySeconds: 1, periodSeconds: 2, failureThreshold: 1}
EOF
}

pod_crash() {
    pod_header crash
    cat <<EOF
  containers:
    - name: crasher
      image: $BUSYBOX
      command: ["sh", "-c", "echo crashing; exit 1"]
EOF
}

pod_oom() {
    pod_header oom
    cat <<EOF
  restartPolicy: Never
  containers:
    - name: hog
      image: $BUSYBOX
      command: ["sh", "-c", "echo allocating; exec dd if=/dev/zero of=/dev/null bs=256M count=1"]
      resources: {limits: {memory: 32Mi}}
EOF
}

pod_oom_wasm() {
    pod_header oom-wasm
    cat <<EOF
  restartPolicy: Never
  containers:
    - name: memhog
      image: $WASM_MEMHOG
      resources: {limits: {memory: 32Mi}}
EOF
}

pod_stream() {
    pod_header stream
    cat <<EOF
  containers:
    - name: web
      image: $NGINX
    - name: echo
      image: $BUSYBOX
      stdin: true
      command: ["sh", "-c", 'trap "exit 0" TERM; while read -r l; do echo "got:\$l"; done; sleep 3600']
EOF
}

pod_removable() {
    pod_header removable
    cat <<EOF
  containers:
    - name: sleeper
      image: $BUSYBOX
      command: ["sh", "-c", '$SLEEP_LOOP']
EOF
}

ALL_PODS=(native wasm-mixed probes crash oom oom-wasm stream removable)

# ---------------------------------------------------------------------------------------
# berth and the kubelet

# The kubelet config from e2e-node/kubelet-config.yaml; "gc" gives an aggressive image GC.
kubelet_config() { # normal|gc
    local gc_high=100 gc_low=80 gc_age=2m gc_imagefs=2%
    [[ $1 == gc ]] && gc_high=1 gc_low=0 gc_age=1s gc_imagefs=99%
    sed -e "s|@PORT@|$PORT|; s|@HEALTHZ_PORT@|$HEALTHZ_PORT|; s|@ENDPOINT@|$EP|g" \
        -e "s|@MANIFESTS@|$MANIFESTS|; s|@POD_CIDR@|$POD_CIDR|; s|@POD_LOGS@|$POD_LOGS|" \
        -e "s|@GC_HIGH@|$gc_high|; s|@GC_LOW@|$gc_low|; s|@GC_AGE@|$gc_age|; s|@GC_IMAGEFS_AVAILABLE@|$gc_imagefs|" \
        "$HERE/kubelet-config.yaml" >"$CT_RUN/kubelet.yaml"
}

KUBELET_PID=""
kubelet_start() { # normal|gc
    kubelet_config "${1:-normal}"
    setsid "$KUBELET_BIN" --config="$CT_RUN/kubelet.yaml" --root-dir="$KUBELET_ROOT" \
        --cert-dir="$KUBELET_ROOT/pki" --hostname-override="$NODE" --v=2 \
        >>"$CT_LOGS/kubelet.log" 2>&1 </dev/null &
    KUBELET_PID=$!
    echo "$KUBELET_PID" >"$CT_RUN/kubelet.pid"
    if ! wait_until 60 kubelet_healthy; then
        log "the kubelet did not become healthy; last log lines:"
        tail -20 "$CT_LOGS/kubelet.log" >&2
        return 1
    fi
    log "kubelet $("$KUBELET_BIN" --version) healthy (pid $KUBELET_PID, log $CT_LOGS/kubelet.log)"
}
kubelet_healthy() {
    kill -0 "$KUBELET_PID" 2>/dev/null || return 2
    [[ $(curl -s --max-time 2 "http://127.0.0.1:$HEALTHZ_PORT/healthz") == ok ]] && kget /pods >/dev/null 2>&1
}
kubelet_stop() {
    [[ -n $KUBELET_PID ]] || return 0
    ct_kill_pid "$KUBELET_PID" 20
    wait "$KUBELET_PID" 2>/dev/null
    KUBELET_PID=""
}

# ---------------------------------------------------------------------------------------
# The undo at exit (record_host and the undo_* functions are in lib.sh)

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ $KEEP == 1 ]]; then
        log "--keep: kubelet (pid ${KUBELET_PID:-none}) and berth (pid ${BERTH_PID:-none}) left running"
        exit "$rc"
    fi
    log "cleaning up"
    kubelet_stop
    # A kubelet left by an earlier --keep run.
    [[ -f $CT_RUN/kubelet.pid ]] && ct_kill_pid "$(cat "$CT_RUN/kubelet.pid")" 20
    rm -f "$MANIFESTS"/*.yaml 2>/dev/null
    if [[ -S $SOCK ]]; then
        CT_ENDPOINT=$EP ct_remove_pods
    fi
    [[ -n ${BERTH_PID:-} ]] && ct_kill_pid "$BERTH_PID" 15
    [[ -f $CT_RUN/berth.pid ]] && ct_kill_pid "$(cat "$CT_RUN/berth.pid")" 15
    undo_host
    ct_wipe_dir "$KUBELET_ROOT"
    ct_wipe_dir "$CT_LIB"
    ct_wipe_dir "$CT_RUN"
    ct_registry_release
    exit "$rc"
}

# What an earlier run that was killed (or --keep) left behind, before recording the host.
cleanup_leftovers() {
    [[ -e $CT_RUN || -e $CT_LIB ]] || return 0
    log "cleaning up what an earlier run left in $CT_RUN and $CT_LIB"
    (KEEP=0 BERTH_PID="" cleanup) || true
}

# ---------------------------------------------------------------------------------------
# Preparation

prepare() {
    command -v crictl >/dev/null || "$REPO/critest/install-tools.sh"
    ct_apt_install containernetworking-plugins iptables util-linux iproute2 curl jq python3
    # A registry already serving every image we need is used as it is (registry.sh start
    # would rebuild critest/out/oci, which a critest run beside us may be reading).
    if ! registry_has_images; then
        # shellcheck disable=SC2034 # read by ct_registry_release (critest/lib.sh)
        [[ $("$REPO/critest/registry.sh" status) == *'5000 up'* ]] || CT_REGISTRY_STARTED=1
        "$REPO/critest/registry.sh" start || { sleep 5; "$REPO/critest/registry.sh" start; } || return 1
    fi
    "$HERE/install-kubelet.sh" || return 1
    build_streamcheck || return 1
    mkdir -p "$CT_RUN" "$CT_LIB" "$CT_LOGS" "$MANIFESTS" "$POD_LOGS"
    : >"$CT_LOGS/kubelet.log"
}

registry_has_images() {
    local ref repo
    for ref in "$BUSYBOX" "$NGINX" "$UNUSED_IMAGE" "$WASM_LOOP" "$WASM_MEMHOG"; do
        repo=${ref#registry.k8s.io/}
        repo=${repo#127.0.0.1:5000/}
        curl -fsS -o /dev/null -m 5 -I -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
            "http://127.0.0.1:5000/v2/${repo%:*}/manifests/${repo##*:}" 2>/dev/null || return 1
    done
}

build_streamcheck() {
    local src=$HERE/streamcheck
    if [[ -x $STREAMCHECK && -z $(find "$src" -newer "$STREAMCHECK" -type f 2>/dev/null) ]]; then
        return 0
    fi
    log "building e2e-node/streamcheck"
    mkdir -p "$(dirname "$STREAMCHECK")"
    (cd "$src" && PATH=$PATH:/usr/local/go/bin GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
        go build -mod=readonly -trimpath -o "$STREAMCHECK" .)
}

# ---------------------------------------------------------------------------------------
# Scenarios

scenario_pod_cidr() {
    local shown conflist ip bad=()
    shown=$(cri info 2>/dev/null | jq -r '.. | objects | .podCIDR? // empty' | head -1)
    conflist=$CT_CNI_DIR/10-berth-net.conflist
    [[ $shown == "$POD_CIDR" ]] || bad+=("crictl info shows podCIDR '${shown}', want $POD_CIDR")
    if [[ ! -f $conflist ]]; then
        bad+=("berth did not render $conflist from cni.conf_template")
    elif [[ $(jq -r '.plugins[0].ipam.ranges[0][0].subnet' "$conflist") != "$POD_CIDR" ]]; then
        bad+=("$conflist has subnet $(jq -c '.plugins[0].ipam.ranges' "$conflist")")
    fi
    wait_until 90 pod_ip_known native || true
    ip=$(pod_json native | jq -r '.status.podIP // empty')
    [[ $ip == 10.89.* ]] || bad+=("pod native has IP '${ip}', not in $POD_CIDR")
    if ((${#bad[@]})); then
        result pod-cidr FAIL "$(IFS=';'; echo "${bad[*]}")"
    else
        result pod-cidr PASS "crictl info podCIDR $shown; $conflist rendered with subnet $POD_CIDR; pod IP $ip"
    fi
}
pod_ip_known() { [[ -n $(pod_json "$1" | jq -r '.status.podIP // empty') ]]; }

scenario_native_pod() {
    if ! wait_until 90 ready native sleeper; then
        result native-pod FAIL "not Running/ready within 90 s: $(describe native sleeper)"
        return
    fi
    local id phase state
    id=$(cid native sleeper)
    phase=$(pod_json native | jq -r .status.phase)
    state=$(cri inspect "$id" 2>/dev/null | jq -r .status.state)
    if [[ $phase != Running || $state != CONTAINER_RUNNING ]]; then
        result native-pod FAIL "phase $phase, crictl state $state"
    elif ! cri logs --tail 2 "$id" 2>&1 | grep -q '^tick '; then
        result native-pod FAIL "running, but crictl logs shows no tick: $(cri logs --tail 2 "$id" 2>&1 | head -2)"
    else
        result native-pod PASS "phase Running, container ${id:0:13} CONTAINER_RUNNING, ready, logs ticking"
    fi
}

scenario_wasm_mixed() {
    if ! wait_until 90 both_ready wasm-mixed app sidecar; then
        result wasm-mixed FAIL "not both ready within 90 s: $(describe wasm-mixed app); $(describe wasm-mixed sidecar)"
        return
    fi
    local app side rt_app rt_side log_app log_side
    app=$(cid wasm-mixed app)
    side=$(cid wasm-mixed sidecar)
    rt_app=$(cri inspect "$app" 2>/dev/null | jq -r '.info.runtime // "?"')
    rt_side=$(cri inspect "$side" 2>/dev/null | jq -r '.info.runtime // "?"')
    sleep 2
    log_app=$(cri logs "$app" 2>&1 | tail -1)
    log_side=$(cri logs "$side" 2>&1 | tail -1)
    if [[ $rt_app != wasm || $rt_side != native ]]; then
        result wasm-mixed FAIL "runtimes: app $rt_app (want wasm), sidecar $rt_side (want native)"
    elif ! cri logs "$app" 2>&1 | grep -q 'wasm loop started' || [[ $log_app != tick* ]]; then
        result wasm-mixed FAIL "app log: $(cri logs "$app" 2>&1 | head -3 | tr '\n' '|')"
    elif [[ $log_side != "sidecar line"* ]]; then
        result wasm-mixed FAIL "sidecar log: $log_side"
    else
        result wasm-mixed PASS "both Running and ready; app in $rt_app ('wasm loop started', then '$log_app'), sidecar $rt_side ('$log_side')"
    fi
}
both_ready() { ready "$1" "$2" && ready "$1" "$3"; }

scenario_probes() {
    local bad=() c
    wait_until 120 probes_settled || true
    for c in web exec-ok; do
        ready probes "$c" || bad+=("$c not ready: $(describe probes "$c")")
        [[ $(restarts probes "$c") == 0 ]] || bad+=("$c restarted: $(describe probes "$c")")
    done
    for c in exec-fail http-fail; do
        restarts_at_least probes "$c" 2 || bad+=("$c: restart count $(restarts probes "$c") after 120 s, want >= 2: $(describe probes "$c")")
    done
    local why
    why=$(grep -E '"Probe failed".*probeType="Liveness"' "$CT_LOGS/kubelet.log" |
        grep -oE 'containerName="[a-z-]+"' | sort | uniq -c | tr -s ' ' | tr '\n' ',')
    if ((${#bad[@]})); then
        result probes FAIL "$(IFS=';'; echo "${bad[*]}") (liveness failures logged:${why:- none})"
    else
        result probes PASS "web (httpGet) and exec-ok (exec) ready with 0 restarts; exec-fail $(restarts probes exec-fail) and http-fail $(restarts probes http-fail) restarts (liveness failures logged:${why%,})"
    fi
}
probes_settled() {
    ready probes web && ready probes exec-ok &&
        restarts_at_least probes exec-fail 2 && restarts_at_least probes http-fail 2
}

scenario_crashloop() {
    if ! wait_until 150 restarts_at_least crash crasher 3; then
        result crashloop FAIL "restart count $(restarts crash crasher) after 150 s, want >= 3: $(describe crash crasher)"
        return
    fi
    local backoffs last code reason
    # The back-off the kubelet applied before each restart, in the order it first said so.
    backoffs=$(grep -oE 'back-off [0-9]+[ms]+[0-9s]* restarting failed container=crasher' "$CT_LOGS/kubelet.log" |
        awk '{print $2}' | awk '!seen[$0]++' | tr '\n' ' ')
    last=$(cfield crash crasher '.lastState.terminated // {} | "\(.exitCode) \(.reason)"')
    read -r code reason <<<"$last"
    if [[ $code != 1 ]]; then
        result crashloop FAIL "last termination: exit $code $reason, want exit 1"
    elif [[ $(wc -w <<<"$backoffs") -lt 2 ]] || ! growing $backoffs; then
        result crashloop FAIL "back-off not growing: '${backoffs}' ($(describe crash crasher))"
    else
        result crashloop PASS "$(restarts crash crasher) restarts, last exit $code ($reason), back-offs ${backoffs% }"
    fi
}
# True when the durations (10s, 20s, 1m20s, ...) strictly grow.
growing() {
    local prev=-1 d s
    for d in "$@"; do
        s=$(awk -v d="$d" 'BEGIN { m = 0; if (match(d, /[0-9]+m/)) m = substr(d, RSTART, RLENGTH - 1);
            s = 0; if (match(d, /[0-9]+s/)) s = substr(d, RSTART, RLENGTH - 1); print m * 60 + s }')
        ((s > prev)) || return 1
        prev=$s
    done
}

oom_check() { # scenario pod container expected-log
    local name=$1 pod=$2 c=$3 term code reason id
    if ! wait_until 90 terminated "$pod" "$c"; then
        result "$name" FAIL "not terminated within 90 s: $(describe "$pod" "$c")"
        return
    fi
    term=$(cfield "$pod" "$c" '.state.terminated | "\(.exitCode) \(.reason)"')
    read -r code reason <<<"$term"
    id=$(cid "$pod" "$c")
    if [[ $reason != OOMKilled ]]; then
        result "$name" FAIL "exit $code, reason '$reason' (want OOMKilled); crictl: $(cri inspect "$id" 2>/dev/null |
            jq -c '.status | {exitCode, reason, message}'); log: $(cri logs --tail 2 "$id" 2>&1 | tr '\n' '|')"
    else
        result "$name" PASS "exit $code, reason OOMKilled (memory limit 32Mi); log: $(cri logs --tail 1 "$id" 2>&1 | head -1)"
    fi
}
scenario_oom_native() { oom_check oom-native oom hog; }
scenario_oom_wasm() { oom_check oom-wasm oom-wasm memhog; }

scenario_streaming() {
    local bad=() ok=() t out
    if ! wait_until 90 both_ready stream web echo; then
        result streaming FAIL "pod stream not ready: $(describe stream web); $(describe stream echo)"
        return
    fi
    run_stream() { # label args...
        local label=$1
        shift
        if out=$("$STREAMCHECK" -kubelet "https://127.0.0.1:$PORT" -timeout 30s "$@" 2>&1); then
            ok+=("$label")
            log "$label: $(grep '^ok:' <<<"$out")"
        else
            bad+=("$label: $(grep -v '^[IWE][0-9]' <<<"$out" | tail -3 | tr '\n' ' ')")
            log "$label failed: $out"
        fi
    }
    for t in spdy websocket websocket-v4; do
        run_stream "exec/$t" exec -transport "$t" "$NS" "stream-$NODE" echo
        run_stream "attach/$t" attach -transport "$t" "$NS" "stream-$NODE" echo
        run_stream "portforward/$t" portforward -transport "$t" -expect "Welcome to nginx!" "$NS" "stream-$NODE" 80
    done
    run_stream "exec-tty/spdy" exec-tty -transport spdy "$NS" "stream-$NODE" echo
    run_stream "exec-tty/websocket" exec-tty -transport websocket "$NS" "stream-$NODE" echo
    if ((${#bad[@]})); then
        result streaming FAIL "${#bad[@]} of $((${#bad[@]} + ${#ok[@]})) failed: $(IFS=';'; echo "${bad[*]}")"
    else
        result streaming PASS "${#ok[@]} checks: ${ok[*]}"
    fi
}

scenario_stats_summary() {
    local s missing=() p first second
    wait_until 60 summary_complete || true
    # Two callers a moment apart (metrics-server and a monitoring agent, or the eviction
    # manager and anyone): each must see the CPU rate, as with cAdvisor's samples. A rate
    # taken between consecutive calls is ~0 for the second (kubernetes#138402 with
    # containerd, fixed by a background sampler, containerd#12629 and #13138).
    sleep 2
    s=$(kget /stats/summary | jq -c --arg n "native-$NODE" '.pods[]? | select(.podRef.name == $n)')
    second=$(nano_cores)
    first=$(jq -r '"\(.cpu.usageNanoCores // "none") \(.containers[0].cpu.usageNanoCores // "none")"' <<<"$s" 2>/dev/null)
    if [[ -z $s ]]; then
        result stats-summary FAIL "pod native-$NODE not in /stats/summary: $(kget /stats/summary | head -c 300)"
        return
    fi
    # CPU and memory of a running shell loop are above 0 (usageNanoCores once two samples
    # are a moment apart); the network counters are there (a quiet pod may have sent nothing).
    for p in .cpu.usageNanoCores .cpu.usageCoreNanoSeconds .memory.workingSetBytes .memory.usageBytes; do
        [[ $(jq -r "$p // empty" <<<"$s") =~ ^[1-9][0-9]*$ ]] || missing+=("pod$p missing or 0")
        [[ $(jq -r ".containers[]? | select(.name == \"sleeper\") | $p // empty" <<<"$s") =~ ^[1-9][0-9]*$ ]] ||
            missing+=("container$p missing or 0")
    done
    for p in .network.rxBytes .network.txBytes; do
        [[ $(jq -r "$p // empty" <<<"$s") =~ ^[0-9]+$ ]] || missing+=("pod$p missing")
    done
    [[ $second =~ ^[1-9][0-9]*\ [1-9][0-9]*$ ]] ||
        missing+=("usageNanoCores (pod, container) 0 or missing in a request made right after another: ($second); in the one before it, 2 s after the last: ($first)")
    if ((${#missing[@]})); then
        result stats-summary FAIL "$(IFS=';'; echo "${missing[*]}"); pod entry: $(cut -c1-600 <<<"$s")"
    else
        result stats-summary PASS "$(jq -r '"pod: cpu \(.cpu.usageNanoCores) nanocores, memory working set \(.memory.workingSetBytes) B, network rx \(.network.rxBytes) tx \(.network.txBytes) B; container sleeper: cpu \(.containers[0].cpu.usageNanoCores) nanocores (\(.containers[0].cpu.usageCoreNanoSeconds) ns), memory \(.containers[0].memory.workingSetBytes) B"' <<<"$s")"
    fi
}
# "pod-nanocores container-nanocores" of the native pod in one /stats/summary.
nano_cores() {
    kget /stats/summary | jq -r --arg n "native-$NODE" '.pods[]? | select(.podRef.name == $n) |
        "\(.cpu.usageNanoCores // "none") \([.containers[]? | select(.name == "sleeper") | .cpu.usageNanoCores // "none"][0])"'
}
summary_complete() {
    kget /stats/summary | jq -e --arg n "native-$NODE" '.pods[]? | select(.podRef.name == $n) |
        (.cpu.usageNanoCores // 0) > 0 and (.memory.workingSetBytes // 0) > 0 and .network.rxBytes != null and
        ([.containers[]? | select(.name == "sleeper") | .cpu.usageNanoCores // 0] | max // 0) > 0' >/dev/null 2>&1
}

scenario_metrics_cadvisor() {
    local m series missing=() name pc
    m=$(kget /metrics/cadvisor)
    if [[ -z $m ]]; then
        result metrics-cadvisor FAIL "empty /metrics/cadvisor"
        return
    fi
    # The native container and the Wasm one of the mixed pod.
    for pc in native/sleeper wasm-mixed/app; do
        for name in container_cpu_usage_seconds_total container_memory_working_set_bytes; do
            series=$(grep -E "^$name\\{" <<<"$m" | grep "container=\"${pc#*/}\"" | grep "namespace=\"$NS\"" |
                grep "pod=\"${pc%/*}-$NODE\"" | head -1)
            [[ -n $series ]] || missing+=("$name{container=\"${pc#*/}\",namespace=\"$NS\",pod=\"${pc%/*}-$NODE\"}")
        done
    done
    if ((${#missing[@]})); then
        local families
        families=$(grep -c '^# TYPE' <<<"$m")
        result metrics-cadvisor FAIL "no ${missing[*]} ($families metric families; container_* series: $(grep -c '^container_' <<<"$m")); kubelet log: $(grep -E 'ListMetricDescriptors|ListPodSandboxMetrics' "$CT_LOGS/kubelet.log" | tail -1 | cut -c1-300)"
    else
        result metrics-cadvisor PASS "CPU and memory series for native/sleeper and wasm-mixed/app ($(grep -c '^container_' <<<"$m") container_* series), e.g. $(grep -E '^container_cpu_usage_seconds_total\{' <<<"$m" | grep 'container="app"' | head -1 | cut -c1-300)"
    fi
}

scenario_static_pod_removal() {
    local sb ids left
    if ! wait_until 90 ready removable sleeper; then
        result static-pod-removal FAIL "pod removable never ready: $(describe removable sleeper)"
        return
    fi
    sb=$(sandbox_id removable)
    rm -f "$MANIFESTS/removable.yaml"
    local start=$SECONDS
    if ! wait_until 150 pod_gone removable "$sb"; then
        left=$(cri pods --name "^removable-$NODE\$" 2>&1 | tail -n +2 | tr -s ' ' | tr '\n' '|')
        ids=$(cri ps -a --pod "$sb" 2>&1 | tail -n +2 | tr -s ' ' | tr '\n' '|')
        result static-pod-removal FAIL "after 150 s: crictl pods: ${left:-none}; crictl ps -a: ${ids:-none}; in /pods: $(pod_json removable | jq -r '.status.phase // "no"')"
        return
    fi
    result static-pod-removal PASS "manifest removed; pod ${sb:0:13} and its containers gone from crictl pods / ps -a after $((SECONDS - start)) s"
}
pod_gone() { # name sandbox-id
    [[ -z $(pod_json "$1") ]] &&
        [[ -z $(cri pods -q --name "^$1-$NODE\$" 2>/dev/null) ]] &&
        [[ -z $(cri ps -a -q --pod "$2" 2>/dev/null) ]]
}

# "pod/container id restarts" for the containers of running pods.
running_snapshot() {
    local p c
    for p in native wasm-mixed stream; do
        for c in $(kget /pods | jq -r --arg n "$p-$NODE" '.items[]? | select(.metadata.name == $n) | .spec.containers[].name'); do
            echo "$p/$c $(cid "$p" "$c") $(restarts "$p" "$c")"
        done
        echo "$p/sandbox $(sandbox_id "$p")"
    done
}

scenario_kubelet_restart() {
    local before after later n
    wait_until 60 both_ready stream web echo || true
    before=$(running_snapshot)
    n=$(wc -l <<<"$before")
    if [[ -n $(awk 'NF < 3 && $1 !~ /sandbox$/ || NF < 2' <<<"$before") ]]; then
        result kubelet-restart FAIL "containers not all running before the restart: $(tr '\n' ';' <<<"$before")"
        return
    fi
    kubelet_stop
    sleep 3
    if ! kubelet_start normal; then
        result kubelet-restart FAIL "the kubelet did not come back"
        return
    fi
    wait_until 60 all_ready_again || true
    after=$(running_snapshot)
    sleep 15
    later=$(running_snapshot)
    if [[ "$after|$later" != "$before|$before" ]]; then
        result kubelet-restart FAIL "before: $(tr '\n' ';' <<<"$before") after: $(tr '\n' ';' <<<"$after") 15 s later: $(tr '\n' ';' <<<"$later")"
    else
        result kubelet-restart PASS "$n containers and sandboxes of native, wasm-mixed, stream: same IDs and restart counts after the restart and 15 s later"
    fi
}
all_ready_again() {
    ready native sleeper && ready wasm-mixed app && ready wasm-mixed sidecar && ready stream web && ready stream echo
}

scenario_image_gc() {
    local used img gone=0 keep_bad=() out c
    if ! out=$(cri pull "$UNUSED_IMAGE" 2>&1); then
        result image-gc FAIL "crictl pull $UNUSED_IMAGE failed: $(tail -1 <<<"$out")"
        return
    fi
    used=$(for c in $(cri ps -q); do cri inspect "$c" 2>/dev/null | jq -r '.status.image.image'; done | sort -u)
    kubelet_stop
    if ! kubelet_start gc; then
        result image-gc FAIL "the kubelet did not start with the image GC settings"
        return
    fi
    local start=$SECONDS
    wait_until 90 image_absent "$UNUSED_IMAGE" && gone=1
    for img in $used; do
        [[ -n $(cri images -q "$img" 2>/dev/null) ]] || keep_bad+=("$img")
    done
    if ((gone == 0)); then
        result image-gc FAIL "$UNUSED_IMAGE still there 90 s after a kubelet start with image GC settings; kubelet log: $(grep -iE 'image garbage|delete unused images|free.*bytes|RemoveImage' "$CT_LOGS/kubelet.log" | tail -3 | cut -c1-300 | tr '\n' '|')"
    elif ((${#keep_bad[@]})); then
        result image-gc FAIL "$UNUSED_IMAGE removed, but so were images in use: ${keep_bad[*]}"
    else
        result image-gc PASS "$UNUSED_IMAGE removed $((SECONDS - start)) s after the kubelet started with image GC settings ($(grep -c '"Removing image to free bytes"' "$CT_LOGS/kubelet.log") RemoveImage calls logged); the $(wc -w <<<"$used") images of running containers kept"
    fi
}
image_absent() { [[ -z $(cri images -q "$1" 2>/dev/null) ]]; }

# Failed CRI calls in the kubelet log, grouped by message with the RPC names they mention.
scenario_cri_errors() {
    local lines n_fail n_ok
    lines=$(python3 "$HERE/cri_errors.py" "$CT_LOGS/kubelet.log")
    n_fail=$(grep -c '^FAIL' <<<"$lines")
    n_ok=$(grep -c '^ok' <<<"$lines")
    if ((n_fail)); then
        result cri-errors FAIL "$n_fail kind(s) of failed CRI calls in the kubelet log ($n_ok more the kubelet asked for):"
    else
        result cri-errors PASS "no failed CRI call in $(wc -l <"$CT_LOGS/kubelet.log") kubelet log lines but $n_ok kind(s) the kubelet asked for"
    fi
    [[ -z $lines ]] || sed 's/^/    /' <<<"$lines" | tee -a "$RESULTS"
}

# ---------------------------------------------------------------------------------------

main() {
    local t0=$SECONDS p
    [[ -x $BERTH_BIN ]] || { log "no berth binary at $BERTH_BIN"; exit 2; }
    mkdir -p "$OUT" "$CT_LOGS"
    cleanup_leftovers
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    prepare || exit 1
    record_host
    : >"$RESULTS"
    berth_start || exit 1
    for p in "${ALL_PODS[@]}"; do manifest "$p"; done
    kubelet_start normal || exit 1
    log "setup took $((SECONDS - t0)) s"

    scenario pod-cidr
    scenario native-pod
    scenario wasm-mixed
    scenario streaming
    scenario oom-native
    scenario oom-wasm
    scenario probes
    scenario crashloop
    scenario stats-summary
    scenario metrics-cadvisor
    scenario static-pod-removal
    scenario kubelet-restart
    scenario image-gc
    scenario cri-errors

    echo
    echo "summary ($((SECONDS - t0)) s, berth $BERTH_BIN, kubelet $("$KUBELET_BIN" --version | awk '{print $2}')):"
    printf '  %s\n' "${SUMMARY[@]}"
    echo "results: $RESULTS; logs: $CT_LOGS"
    exit "$FAILED"
}

main
