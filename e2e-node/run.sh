#!/usr/bin/env bash
# Node e2e (k8s.io/kubernetes v1.37.2 test/e2e_node, run by ginkgo) against berth, on this
# machine only: the local run of upstream's hack/make-rules/test-e2e-node.sh
# (run_local.go: `ginkgo <flags> e2e_node.test -- <test flags>`), with berth on a private
# socket and every image from the local registry.
#
#   e2e-node/run.sh [--berth-bin PATH] [--focus REGEX] [--skip REGEX] [--nodes N]
#                   [--dry-run] [--timeout DURATION] [-- EXTRA e2e_node.test FLAGS...]
#
#   --focus REGEX    ginkgo focus (default '\[NodeConformance\]')
#   --skip REGEX     ginkgo skip (default '\[Flaky\]|\[Slow\]|\[Serial\]', upstream's)
#   --nodes N        ginkgo parallel processes (default 1, as upstream's local runs)
#   --dry-run        list the specs the focus/skip select, start nothing
#   --timeout D      ginkgo's suite timeout (default 2h)
#   --cgroup-root P  the kubelet's cgroupRoot (default /berth-node-e2e, so that another
#                    kubelet on the host, kubelet-scenarios.sh's, does not kill our pods as
#                    orphans nor we its; `/` as upstream, for the Kubelet Cgroup Manager
#                    specs, which look for /kubepods, when no other kubelet runs)
#   --berth-bin PATH the berth binary (default target/release/berth, else /opt/berth-h/berth)
#
# What it starts:
#   registry   critest/registry.sh's 127.0.0.1:5000 (started if down, stopped at exit if
#              started here) plus the node e2e stand-ins of e2e-node/images.py
#   berth      socket /run/berth-node-e2e/berth.sock, root /var/lib/berth-node-e2e/berth;
#              registry.k8s.io, invalid.registry.k8s.io, docker.io, index.docker.io, gcr.io,
#              quay.io (and k8s.gcr.io, public.ecr.aws) mirrored to http://127.0.0.1:5000
#              with mirrors_only, so no pull leaves the machine; CNI network rendered from
#              cni-template.json (bridge berthn0) when the kubelet sends its pod CIDR
#   e2e_node.test (install-node-e2e.sh) under ginkgo, linked with the kubelet into the
#              work dir /var/lib/berth-node-e2e/work (ginkgo runs it there); it runs etcd, the API server and the namespace
#              controller in-process and starts the kubelet of install-kubelet.sh (the
#              `kubelet` beside e2e_node.test; --k8s-bin-dir is a flag of the remote
#              runner only) with e2e-node/node-e2e-kubelet-config.yaml as its base
#              config, root dir /var/lib/kubelet (fixed upstream), ports 10250/10255/10248
#   KUBE_TEST_REPO_LIST points the suite's image registries at 127.0.0.1:5000/...
#
# No systemd as PID 1: e2e_node.test starts the kubelet with systemd-run when it finds it
# in PATH (Debian ships it without systemd running), so the run gets a PATH of symlinks to
# the host's tools without systemd-run, systemctl and journalctl; the kubelet then runs as
# a child with --runtime-cgroups=/docker-daemon, kubelet cgroup /kubelet and system cgroup
# /system, which --kubelet-flags clears (the last moves every process in / into /system).
#
# At exit (also on failure or Ctrl-C): the ginkgo/e2e_node.test processes and the kubelet
# are stopped, every pod is removed through crictl, berth stopped, and the kubelet's host
# side effects undone as in kubelet-scenarios.sh (lib.sh): kubepods cgroups, its iptables
# chains, its six sysctls, /var/log/containers links, the CNI bridge and leases, mounts
# below /var/lib/kubelet (removed if it was not there before) and the run's dirs.
# Output: e2e-node/out/node-e2e/{logs,report}/ (berth.log, ginkgo.log, kubelet.log, the
# ginkgo JSON/JUnit reports) and a summary by area (results.py).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
OUT=$HERE/out/node-e2e
export CT_RUN=/run/berth-node-e2e CT_LIB=/var/lib/berth-node-e2e CT_LOGS=$OUT/logs
# The kubelet's cgroupRoot (/berth-node-e2e/kubepods/...), apart from any other kubelet's;
# --cgroup-root / for upstream's (the Kubelet Cgroup Manager specs look for /kubepods).
CGROUP_ROOT=berth-node-e2e
# shellcheck source=critest/lib.sh
source "$REPO/critest/lib.sh"
# shellcheck source=e2e-node/lib.sh
source "$HERE/lib.sh"

BERTH_BIN=$REPO/target/release/berth
[[ -x $BERTH_BIN ]] || BERTH_BIN=/opt/berth-h/berth
FOCUS='\[NodeConformance\]'
SKIP='\[Flaky\]|\[Slow\]|\[Serial\]'
NODES=1 DRY_RUN=0 TIMEOUT=2h
EXTRA=()
while (($#)); do
    case $1 in
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;; # --focus=X as --focus X
    --berth-bin) BERTH_BIN=$(realpath "$2"); shift 2 ;;
    --focus) FOCUS=$2; shift 2 ;;
    --skip) SKIP=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --cgroup-root) CGROUP_ROOT=${2#/}; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h | --help) awk 'NR > 1 && /^#/ {print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

KUBE_BIN=$("$HERE/install-node-e2e.sh" --print-prefix)/bin
KUBE_CGROUP_TOP=${CGROUP_ROOT:-kubepods} # what undo_cgroups removes (lib.sh)
NODE=$(hostname)
POD_CIDR=10.90.0.0/24
BRIDGE=berthn0
CNI_NET=berth-node-e2e
SOCK=$CT_RUN/berth.sock
EP=unix://$SOCK
WORK=$CT_LIB/work
POD_LOGS=/var/log/pods # the kubelet's default, which the ContainerLogPath specs assume
KUBELET_ROOT=/var/lib/kubelet # services.KubeletRootDirectory, not a flag
REPORT=$OUT/report
MIRROR_HOST=127.0.0.1:5000
# Every registry a spec may name, mirrored by berth (mirrors_only: nothing leaves the machine).
CT_MIRRORED_HOSTS=(registry.k8s.io invalid.registry.k8s.io docker.io index.docker.io gcr.io quay.io
    k8s.gcr.io public.ecr.aws)

log() { echo "node-e2e: $*" >&2; }
cri() { crictl --config "$CT_RUN/crictl.yaml" "$@"; }

# ---------------------------------------------------------------------------------------

prepare() {
    command -v crictl >/dev/null || "$REPO/critest/install-tools.sh"
    ct_apt_install containernetworking-plugins iptables util-linux iproute2 curl jq python3 skopeo
    "$HERE/install-kubelet.sh" || return 1
    "$HERE/install-node-e2e.sh" || return 1
    # The registry with critest's images (started here if down), then ours on top.
    if [[ $("$REPO/critest/registry.sh" status) != *'5000 up'* ]]; then
        # shellcheck disable=SC2034 # read by ct_registry_release (critest/lib.sh)
        CT_REGISTRY_STARTED=1
        "$REPO/critest/registry.sh" start || return 1
    fi
    python3 "$HERE/images.py" --push >/dev/null || { log "images.py --push failed"; return 1; }
    mkdir -p "$CT_RUN" "$CT_LIB" "$CT_LOGS" "$WORK" "$REPORT"
}

# A PATH without systemd-run, systemctl and journalctl (see the header).
path_without_systemd() {
    local bin=$CT_RUN/path d f
    mkdir -p "$bin"
    for d in /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin /usr/local/go/bin; do
        [[ -d $d && ! -L $d ]] || continue
        for f in "$d"/*; do
            [[ -x $f && ! -d $f ]] || continue
            case ${f##*/} in systemd-run | systemctl | journalctl) continue ;; esac
            [[ -e $bin/${f##*/} ]] || ln -s "$f" "$bin/${f##*/}"
        done
    done
    echo "$bin"
}

# berth_start (lib.sh) configures `test-handler` (extra_runtime_handlers), which the
# RuntimeClass specs use; say so if the berth under test does not offer it.
check_test_handler() {
    cri info 2>/dev/null | jq -e '.runtimeHandlers[]? | select(.name == "test-handler")' >/dev/null ||
        log "berth offers no runtime handler 'test-handler' (handlers: $(cri info 2>/dev/null |
            jq -r '[.runtimeHandlers[]?.name | if . == "" then "(default)" else . end] | join(", ")')); RuntimeClass specs that use it fail"
}

write_inputs() {
    sed -e "s|@POD_CIDR@|$POD_CIDR|; s|@POD_LOGS@|$POD_LOGS|; s|@ENDPOINT@|$EP|g; s|@CGROUP_ROOT@|/$CGROUP_ROOT|" \
        "$HERE/node-e2e-kubelet-config.yaml" >"$CT_RUN/kubelet-config.yaml"
    # test/utils/image/manifest.go RegistryList: every registry of the suite's images at the
    # local registry (the stand-ins of images.py and critest/images/build.py).
    cat >"$CT_RUN/repo-list.yaml" <<EOF
promoterE2eRegistry: $MIRROR_HOST/e2e-test-images
buildImageRegistry: $MIRROR_HOST/build-image
invalidRegistry: invalid.registry.k8s.io/invalid
gcEtcdRegistry: $MIRROR_HOST
gcRegistry: $MIRROR_HOST
sigStorageRegistry: $MIRROR_HOST/sig-storage
privateRegistry: $MIRROR_HOST/k8s-authenticated-test
dockerLibraryRegistry: $MIRROR_HOST/library
cloudProviderGcpRegistry: $MIRROR_HOST/cloud-provider-gcp
EOF
}

# The kubelet refuses a cgroupRoot that does not exist: one dir in every hierarchy (cpuset's
# with its parent's cpus and mems, as a new v1 cpuset starts empty). undo_cgroups removes it.
make_cgroup_root() {
    local h
    [[ -n $CGROUP_ROOT ]] || return 0
    for h in /sys/fs/cgroup/*; do
        [[ -d $h && ! -L $h ]] || continue
        mkdir -p "$h/$CGROUP_ROOT" || return 1
        if [[ -f $h/cpuset.cpus ]]; then
            cat "$h/cpuset.cpus" >"$h/$CGROUP_ROOT/cpuset.cpus" && cat "$h/cpuset.mems" >"$h/$CGROUP_ROOT/cpuset.mems" || return 1
        fi
    done
}

# The processes of this run: the kubelet started with our config, e2e_node.test, ginkgo.
run_pids() {
    local p cmd
    for p in /proc/[0-9]*; do
        cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
        case $cmd in
        "$WORK/kubelet "*) echo "${p#/proc/}" ;;
        "$WORK/e2e_node.test "* | "$KUBE_BIN/e2e_node.test --run-services-mode "*) echo "${p#/proc/}" ;;
        "$KUBE_BIN/ginkgo "*) echo "${p#/proc/}" ;;
        esac
    done
}

GINKGO_PID=""
run_suite() {
    local path start=$SECONDS rc
    path=$(path_without_systemd)
    local ginkgo_flags=(--nodes="$NODES" --focus="$FOCUS" --skip="$SKIP" --timeout="$TIMEOUT"
        --no-color -v --output-dir="$REPORT" --json-report=report.json --junit-report=junit.xml)
    local test_flags=(--v=4 --report-dir="$REPORT" --node-name="$NODE"
        --container-runtime-endpoint="$EP" --image-service-endpoint="$EP"
        --prepull-images=false
        --container-runtime-process-name="$CT_RUN/berth" --container-runtime-pid-file="$CT_RUN/berth.pid"
        --kubelet-config-file="$CT_RUN/kubelet-config.yaml"
        --dns-domain=cluster.local
        "--kubelet-flags=--cluster-domain=cluster.local --runtime-cgroups= --kubelet-cgroups= --system-cgroups="
        "${EXTRA[@]}")
    if ((DRY_RUN)); then
        ginkgo_flags+=(--dry-run)
    fi
    # ginkgo runs a compiled suite in the suite's dir, where e2e_node.test writes its
    # kubeconfig, kubelet-config, static-pods* ... and looks for the kubelet: links in WORK.
    ln -sf "$KUBE_BIN/e2e_node.test" "$KUBE_BIN/kubelet" "$WORK/"
    log "ginkgo ${ginkgo_flags[*]} e2e_node.test -- ${test_flags[*]}"
    (cd "$WORK" && exec env PATH="$path" KUBE_TEST_REPO_LIST="$CT_RUN/repo-list.yaml" \
        "$KUBE_BIN/ginkgo" "${ginkgo_flags[@]}" "$WORK/e2e_node.test" -- "${test_flags[@]}") \
        >"$CT_LOGS/ginkgo.log" 2>&1 </dev/null &
    GINKGO_PID=$!
    wait "$GINKGO_PID"
    rc=$?
    GINKGO_PID=""
    log "ginkgo exited $rc after $((SECONDS - start)) s (log $CT_LOGS/ginkgo.log)"
    [[ -f $REPORT/kubelet.log ]] && cp "$REPORT/kubelet.log" "$CT_LOGS/kubelet.log"
    return "$rc"
}

# ---------------------------------------------------------------------------------------

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    log "cleaning up"
    # ginkgo passes SIGTERM on to the suite, which stops the kubelet and its services.
    [[ -n $GINKGO_PID ]] && ct_kill_pid "$GINKGO_PID" 40
    for p in $(run_pids); do ct_kill_pid "$p" 20; done
    if [[ -S $SOCK ]]; then
        CT_ENDPOINT=$EP ct_remove_pods
    fi
    [[ -n ${BERTH_PID:-} ]] && ct_kill_pid "$BERTH_PID" 15
    [[ -f $CT_RUN/berth.pid ]] && ct_kill_pid "$(cat "$CT_RUN/berth.pid")" 15
    undo_host
    undo_kubelet_root
    ct_wipe_dir "$CT_LIB"
    ct_wipe_dir "$CT_RUN"
    # The registry stays while another harness (critest, kubelet-scenarios.sh) pulls from it.
    if [[ $CT_REGISTRY_STARTED == 1 ]] && other_harness; then
        log "another harness is running; the registry it may be using stays up"
        CT_REGISTRY_STARTED=0
    fi
    ct_registry_release
    exit "$rc"
}

other_harness() {
    local p cmd
    for p in /proc/[0-9]*; do
        cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
        [[ $cmd == *" /run/berth-kubelet-test/"* || $cmd == *" /run/berth-critest/"* ]] && return 0
    done
    return 1
}

cleanup_leftovers() {
    [[ -e $CT_RUN || -e $CT_LIB ]] || return 0
    log "cleaning up what an earlier run left in $CT_RUN and $CT_LIB"
    (BERTH_PID="" GINKGO_PID="" cleanup) || true
}

# /var/lib/kubelet (fixed by the suite) may be there already (a kubelet always creates
# /var/lib/kubelet/device-plugins, whatever its root dir): what was in it stays, what the
# run added goes.
record_kubelet_root() {
    # The pod log dirs of this run's pods go at exit, the others stay.
    ls -A "$POD_LOGS" 2>/dev/null >"$CT_RUN/pod-logs.before"
    [[ -d $POD_LOGS ]] || : >"$CT_RUN/pod-logs.created"
    if [[ -d $KUBELET_ROOT ]]; then
        ls -A "$KUBELET_ROOT" >"$CT_RUN/kubelet-root.before"
    else
        : >"$CT_RUN/kubelet-root.created"
    fi
}
undo_kubelet_root() {
    local e
    if [[ -f $CT_RUN/pod-logs.before ]]; then
        for e in "$POD_LOGS"/*; do
            [[ -e $e ]] || continue
            grep -qxF "${e##*/}" "$CT_RUN/pod-logs.before" || rm -rf "$e"
        done
        [[ -f $CT_RUN/pod-logs.created ]] && rmdir "$POD_LOGS" 2>/dev/null
    fi
    if [[ -f $CT_RUN/kubelet-root.created ]]; then
        ct_wipe_dir "$KUBELET_ROOT"
    elif [[ -f $CT_RUN/kubelet-root.before ]]; then
        for e in "$KUBELET_ROOT"/* "$KUBELET_ROOT"/.[!.]*; do
            [[ -e $e ]] || continue
            grep -qxF "${e##*/}" "$CT_RUN/kubelet-root.before" || ct_wipe_dir "$e"
        done
        rm -f "$KUBELET_ROOT/device-plugins/kubelet.sock"
    fi
}

main() {
    local t0=$SECONDS rc
    [[ -x $BERTH_BIN ]] || { log "no berth binary at $BERTH_BIN"; exit 2; }
    mkdir -p "$OUT"
    if ((DRY_RUN)); then
        "$HERE/install-node-e2e.sh" || exit 1
        rm -rf "$REPORT" "$CT_LOGS"
        mkdir -p "$CT_LOGS" "$REPORT"
        CT_RUN=$(mktemp -d) WORK=$(mktemp -d)
        EP=unix:///nonexistent
        write_inputs
        run_suite
        rc=$?
        grep -E '^\S.*\[It\]|^•|Ran [0-9]+ of' "$CT_LOGS/ginkgo.log" | tail -5
        python3 "$HERE/results.py" "$REPORT/report.json" || true
        rm -rf "$CT_RUN" "$WORK"
        exit "$rc"
    fi
    cleanup_leftovers
    rm -rf "$REPORT" "$CT_LOGS"
    mkdir -p "$CT_LOGS"
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    prepare || exit 1
    record_host
    record_kubelet_root
    make_cgroup_root || { log "cannot create the cgroup root /$CGROUP_ROOT"; exit 1; }
    berth_start || exit 1
    check_test_handler
    write_inputs
    log "setup took $((SECONDS - t0)) s"
    run_suite
    rc=$?
    python3 "$HERE/results.py" "$REPORT/report.json" || true
    log "total $((SECONDS - t0)) s; logs in $CT_LOGS, reports in $REPORT"
    exit "$rc"
}

main
