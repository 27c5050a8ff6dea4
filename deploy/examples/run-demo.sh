#!/usr/bin/env bash
# The mixed demo pod: a WebAssembly app and a native busybox sidecar in one pod, run by
# berth with crictl from the files next to this script (pod.json, wasm-app.json,
# sidecar.json). deploy/install.sh runs it at its end against the daemon it installed.
#
#   deploy/examples/run-demo.sh [--runtime-endpoint URL] [--handler wasm] [--no-registry]
#   deploy/examples/run-demo.sh --remove [--runtime-endpoint URL]
#
# What it does: makes the images reachable (starts the local test registry with
# critest/registry.sh start unless --no-registry; the registry is stopped again at the end
# if this script started it), pulls them, removes a demo pod left by an earlier run, runs the
# pod (RunPodSandbox, CreateContainer and StartContainer for both containers), waits until
# both are Running and have logged, then prints `crictl ps` for the pod, each container's
# last log lines and the runtime berth chose for each (ContainerStatus verbose info:
# info.runtime and info.runtimeReason). The demo is left running; --remove stops and
# removes it (and its log directory).
#
# Options:
#   --runtime-endpoint URL  default $CONTAINER_RUNTIME_ENDPOINT or unix:///run/berth/berth.sock
#   --handler wasm          run the pod with the `wasm` runtime handler (what
#                           runtimeClassName: wasm does); the sidecar still runs natively
#   --no-registry           do not start the local registry (the images are reachable already)
#   --remove                remove the demo pod and exit
#
# A second run replaces the pod of the first. Exit status 0 when both containers run.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
export PATH=$PATH:/usr/local/bin:/usr/sbin:/sbin

ENDPOINT=${CONTAINER_RUNTIME_ENDPOINT:-unix:///run/berth/berth.sock}
HANDLER=""
REGISTRY=1
REMOVE=0
while (($#)); do
    case $1 in
    --runtime-endpoint | -r) ENDPOINT=$2; shift 2 ;;
    --runtime-endpoint=*) ENDPOINT=${1#*=}; shift ;;
    --handler) HANDLER=$2; shift 2 ;;
    --no-registry) REGISTRY=0; shift ;;
    --remove) REMOVE=1; shift ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "run-demo.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

log() { echo "demo: $*" >&2; }
# crictl's warnings (no /etc/crictl.yaml, no cgroup_parent) are noise here; errors stay.
cri() {
    crictl --timeout 60s --runtime-endpoint "$ENDPOINT" --image-endpoint "$ENDPOINT" "$@" \
        2> >(grep -v 'level=warning' >&2)
}

command -v crictl >/dev/null || { log "crictl not found (critest/install-tools.sh installs it)"; exit 1; }
command -v jq >/dev/null || { log "jq not found (apt-get install jq)"; exit 1; }
cri version >/dev/null 2>&1 || { log "no CRI runtime answers on $ENDPOINT"; exit 1; }

POD_NAME=$(jq -r .metadata.name "$HERE/pod.json")
POD_NS=$(jq -r .metadata.namespace "$HERE/pod.json")
LOG_DIR=$(jq -r .log_directory "$HERE/pod.json")
APP_IMAGE=$(jq -r .image.image "$HERE/wasm-app.json")
SIDECAR_IMAGE=$(jq -r .image.image "$HERE/sidecar.json")

# Pods of earlier demo runs (matched by name and namespace, in any state).
demo_pods() {
    cri pods -o json | jq -r --arg n "$POD_NAME" --arg ns "$POD_NS" \
        '.items[] | select(.metadata.name == $n and .metadata.namespace == $ns) | .id'
}

remove_demo() {
    local id n=0
    for id in $(demo_pods); do
        cri stopp "$id" >/dev/null 2>&1 || true
        cri rmp -f "$id" >/dev/null 2>&1 || true
        n=$((n + 1))
    done
    # The kubelet removes a pod's logs; crictl leaves that to us.
    [[ -n $LOG_DIR && $LOG_DIR == /var/log/pods/* ]] && rm -rf "$LOG_DIR"
    ((n == 0)) || log "removed $n earlier demo pod(s)"
}

if [[ $REMOVE == 1 ]]; then
    remove_demo
    [[ -z $(demo_pods) ]] || { log "a demo pod is still there"; exit 1; }
    log "the demo pod is gone"
    exit 0
fi

REGISTRY_STARTED=0
POD=""
DONE=0
on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ $DONE != 1 && -n $POD ]]; then
        log "the demo did not come up; removing its pod"
        cri stopp "$POD" >/dev/null 2>&1 || true
        cri rmp -f "$POD" >/dev/null 2>&1 || true
    fi
    if [[ $REGISTRY_STARTED == 1 ]]; then
        "$REPO/critest/registry.sh" stop >/dev/null 2>&1 || true
        log "stopped the local registry this script started (critest/registry.sh start brings it back)"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# The images. On a real node they come from a registry; on this machine from the test
# registry on 127.0.0.1:5000 (berth talks plain HTTP to loopback registries).
if [[ $REGISTRY == 1 ]]; then
    if [[ $("$REPO/critest/registry.sh" status 2>/dev/null) != *'5000 up'* ]]; then
        REGISTRY_STARTED=1
        log "starting the local test registry (critest/registry.sh start)"
    fi
    "$REPO/critest/registry.sh" start >/dev/null
fi
for image in "$APP_IMAGE" "$SIDECAR_IMAGE"; do
    cri pull "$image" >/dev/null || { log "pulling $image failed"; exit 1; }
    log "pulled $image"
done

remove_demo
# Like the kubelet: the pod's log directory and one directory per container name.
mkdir -p "$LOG_DIR"/{app,sidecar}

runp_args=()
[[ -z $HANDLER ]] || runp_args=(--runtime "$HANDLER")
POD=$(cri runp "${runp_args[@]}" "$HERE/pod.json")
log "pod $POD_NS/$POD_NAME: ${POD:0:13}${HANDLER:+ (runtime handler $HANDLER)}"
APP=$(cri create "$POD" "$HERE/wasm-app.json" "$HERE/pod.json")
SIDECAR=$(cri create "$POD" "$HERE/sidecar.json" "$HERE/pod.json")
cri start "$APP" "$SIDECAR" >/dev/null

state() { cri inspect "$1" | jq -r .status.state; }
log_path() { cri inspect "$1" | jq -r .status.logPath; }
# Waits until the container runs and its CRI log holds a line matching PATTERN.
wait_up() { # id name pattern
    local i s
    for ((i = 0; i < 150; i++)); do
        s=$(state "$1")
        if [[ $s == CONTAINER_RUNNING ]] && grep -q -- "$3" "$(log_path "$1")" 2>/dev/null; then
            return 0
        fi
        if [[ $s == CONTAINER_EXITED ]]; then
            log "$2 exited: $(cri inspect "$1" | jq -c '.status | {exitCode, reason, message}')"
            cri logs "$1" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    log "$2 is $s after 30 s and its log has no line matching '$3'"
    return 1
}
wait_up "$APP" app tick
wait_up "$SIDECAR" sidecar 'sidecar:'
sleep 2 # a few more ticks for the logs below
DONE=1

echo
echo "== crictl ps --pod ${POD:0:13}"
cri ps --pod "$POD"
for c in "app:$APP" "sidecar:$SIDECAR"; do
    name=${c%%:*} id=${c#*:}
    echo
    echo "== crictl logs --tail 4 $name (${id:0:13})"
    cri logs --tail 4 "$id" 2>&1
done
echo
echo "== runtime chosen per container (crictl inspect ID | jq .info.runtime, .info.runtimeReason)"
for c in "app:$APP" "sidecar:$SIDECAR"; do
    name=${c%%:*} id=${c#*:}
    info=$(cri inspect "$id")
    printf '%-8s %-50s runtime=%-7s %s\n' "$name" "$(jq -r .status.image.image <<<"$info")" \
        "$(jq -r '.info.runtime // "n/a"' <<<"$info")" "$(jq -r '.info.runtimeReason // ""' <<<"$info")"
done
echo
echo "The demo keeps running. Follow it:  crictl --runtime-endpoint $ENDPOINT logs -f ${APP:0:13}"
echo "Remove it:                          $HERE/run-demo.sh --remove${ENDPOINT:+ --runtime-endpoint $ENDPOINT}"
