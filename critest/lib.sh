# shellcheck shell=bash
# Start/stop pieces shared by critest/run.sh and bench/run.sh. Source it; every function
# is prefixed ct_. Everything a function starts is recorded so ct_runtime_stop and
# ct_cleanup_host can undo it, also from an EXIT/INT/TERM trap.
#
#   ct_prepare                     tools, images, registries, CNI config (idempotent)
#   ct_runtime_start berth|containerd   sets CT_ENDPOINT (unix://...), and CT_NRI_SOCKET
#                                  when the runtime serves NRI plugins (containerd)
#   ct_runtime_stop                removes pods, stops the runtime, cleans its state
#   ct_host_snapshot / ct_cleanup_host   undo what critest specs leak on the host
#   ct_registry_release            stop the registries if ct_prepare started them
#   ct_install_traps               all of the above on EXIT/INT/TERM
#
# Paths (all private to the harness, so nothing clashes with a berth or containerd that
# runs on the host for other reasons):
#   /run/berth-critest/            sockets, state dirs, CNI config, generated configs
#   /var/lib/berth-critest/        berth's and containerd's root dirs (wiped per run)
#   critest/out/logs/              daemon logs

CT_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CT_REPO=$(dirname "$CT_HERE")
CT_RUN=${CT_RUN:-/run/berth-critest}
CT_LIB=${CT_LIB:-/var/lib/berth-critest}
CT_LOGS=${CT_LOGS:-$CT_REPO/critest/out/logs}
CT_CNI_DIR=$CT_RUN/net.d
CT_MIRROR=http://127.0.0.1:5000
# Registries whose images critest (and the benchmarks) pull; all served by the mirror.
CT_MIRRORED_HOSTS=(registry.k8s.io k8s.gcr.io gcr.io public.ecr.aws docker.io)
CT_RUNTIME=""
CT_PID=""
CT_ENDPOINT=""
CT_NETNS_BEFORE=""
CT_BRIDGE_BEFORE=""
CT_REGISTRY_STARTED=0
export PATH=$PATH:/usr/local/go/bin:/usr/local/bin:/usr/sbin:/sbin

ct_log() { echo "critest: $*" >&2; }

ct_apt_install() {
    local missing=() p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    ((${#missing[@]})) || return 0
    ct_log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
}

# Tools, stand-in images in the local registries, the CNI network.
ct_prepare() {
    ct_apt_install containernetworking-plugins iptables util-linux iproute2 curl jq python3
    "$CT_HERE/install-tools.sh"
    [[ $("$CT_HERE/registry.sh" status) == *'5000 up'* ]] || CT_REGISTRY_STARTED=1
    "$CT_HERE/registry.sh" start
    ct_cni_install
    mkdir -p "$CT_LOGS"
}

# The CNI network both runtimes use: deploy/cni/*.conflist (the project's own) when it
# exists, else critest/cni/10-berth-critest.conflist. Only one file in the dir.
ct_cni_install() {
    local src
    src=$(ls "$CT_REPO"/deploy/cni/*.conflist 2>/dev/null | head -1 || true)
    [[ -n $src ]] || src=$CT_HERE/cni/10-berth-critest.conflist
    rm -rf "$CT_CNI_DIR"
    mkdir -p "$CT_CNI_DIR"
    cp "$src" "$CT_CNI_DIR/"
    ct_log "CNI network: $src"
}

ct_cni_bridge() { jq -r '.plugins[] | select(.type == "bridge") | .bridge // "cni0"' "$CT_CNI_DIR"/*.conflist; }

# Unmount everything at or below a directory (deepest first), then remove it.
ct_wipe_dir() {
    local dir=$1 m
    [[ -e $dir ]] || return 0
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$dir" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
    rm -rf "$dir"
}

ct_wait_socket() { # socket pid seconds
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        [[ -S $1 ]] && crictl --timeout 2s -r "unix://$1" version >/dev/null 2>&1 && return 0
        kill -0 "$2" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}

# Starts a daemon in its own session, logging to $CT_LOGS/NAME.log, and waits until it
# answers CRI on SOCKET; sets CT_PID and CT_ENDPOINT.
ct_launch() { # name pidfile socket timeout command...
    local name=$1 pidfile=$2 sock=$3 timeout=$4
    shift 4
    setsid "$@" >"$CT_LOGS/$name.log" 2>&1 </dev/null &
    CT_PID=$!
    echo "$CT_PID" >"$pidfile"
    if ! ct_wait_socket "$sock" "$CT_PID" "$timeout"; then
        ct_log "$name did not answer on $sock; last log lines:"
        tail -20 "$CT_LOGS/$name.log" >&2
        return 1
    fi
    CT_ENDPOINT=unix://$sock
}

# EXIT/INT/TERM traps for a script that uses this library: stop the runtime, clean the
# host, release the registries, then run the caller's optional ct_extra_cleanup.
ct_install_traps() {
    trap ct_on_exit EXIT
    trap 'exit 130' INT TERM
}

ct_on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    ct_runtime_stop || true
    ct_cleanup_host || true
    ct_registry_release || true
    if declare -F ct_extra_cleanup >/dev/null; then ct_extra_cleanup || true; fi
    exit "$rc"
}

ct_runtime_start() { # berth|containerd [berth-binary]
    CT_RUNTIME=$1
    CT_NETNS_BEFORE=$(ip netns list 2>/dev/null | awk '{print $1}' | sort)
    CT_CHAINS_BEFORE=$(ct_cni_chains)
    CT_HOSTPORT_BEFORE=0
    iptables -w -t nat -S CNI-HOSTPORT-DNAT >/dev/null 2>&1 && CT_HOSTPORT_BEFORE=1
    CT_BRIDGE_BEFORE=""
    local br
    br=$(ct_cni_bridge 2>/dev/null || true)
    [[ -n $br && -d /sys/class/net/$br ]] && CT_BRIDGE_BEFORE=$br
    mkdir -p "$CT_RUN" "$CT_LIB" "$CT_LOGS"
    case $1 in
    berth) ct_berth_start "${2:-$CT_REPO/target/release/berth}" ;;
    containerd) ct_containerd_start ;;
    *) ct_log "unknown runtime $1"; return 2 ;;
    esac
}

ct_berth_config() {
    local h
    cat <<EOF
# Generated by critest/lib.sh for critest and benchmark runs.
socket = "$CT_RUN/berth.sock"
root_dir = "$CT_LIB/berth"
state_dir = "$CT_RUN/berth-state"
cgroup_driver = "cgroupfs"

[cni]
conf_dir = "$CT_CNI_DIR"
bin_dirs = ["/usr/lib/cni", "/opt/cni/bin"]

[streaming]
address = "127.0.0.1:0"

[log]
level = "${BERTH_LOG_LEVEL:-info}"
format = "human"
EOF
    for h in "${CT_MIRRORED_HOSTS[@]}"; do
        printf '\n[registry.hosts."%s"]\nmirrors = ["%s"]\nmirrors_only = true\n' "$h" "$CT_MIRROR"
    done
    for h in 127.0.0.1:5000 localhost:5000 127.0.0.1:5001 localhost:5001; do
        printf '\n[registry.hosts."%s"]\ninsecure = true\n' "$h"
    done
}

ct_berth_start() { # binary
    local bin=$1 sock=$CT_RUN/berth.sock
    [[ -x $bin ]] || { ct_log "berth binary $bin not found (cargo build --release -p cri-server)"; return 1; }
    # A private copy: cargo may replace target/release/berth while the run goes on.
    install -m 0755 "$bin" "$CT_RUN/berth"
    ct_berth_config >"$CT_RUN/berth.toml"
    "$CT_RUN/berth" config check --config "$CT_RUN/berth.toml" >/dev/null ||
        { ct_log "berth rejects $CT_RUN/berth.toml"; return 1; }
    ct_wipe_dir "$CT_LIB/berth"
    ct_wipe_dir "$CT_RUN/berth-state"
    rm -f "$sock"
    ct_launch berth "$CT_RUN/berth.pid" "$sock" 30 \
        "$CT_RUN/berth" serve --config "$CT_RUN/berth.toml" --socket "$sock" \
        --root "$CT_LIB/berth" --state "$CT_RUN/berth-state" || return 1
    ct_log "berth $("$CT_RUN/berth" --version 2>/dev/null) serving $CT_ENDPOINT (pid $CT_PID, log $CT_LOGS/berth.log)"
}

# shellcheck disable=SC2034 # read by critest/run.sh
CT_NRI_SOCKET=""

# containerd 2.4.2 + runc 1.5.2, built from the Go module proxy by install-containerd.sh into
# their own prefix, with a config version 3 file as a containerd 2.x node has, but with its
# own socket, root, state, shim socket dir, NRI socket, CNI dir and registry hosts dir.
ct_containerd_start() {
    local d=$CT_RUN/containerd h bin socket_dir
    bin=$("$CT_HERE/install-containerd.sh") || { ct_log "critest/install-containerd.sh failed"; return 1; }
    ct_wipe_dir "$CT_LIB/containerd"
    ct_wipe_dir "$d"
    CT_RUN_CONTAINERD_BEFORE=0
    [[ -e /run/containerd ]] && CT_RUN_CONTAINERD_BEFORE=1
    # Shim sockets: containerd 2.x puts them in /run/containerd/s (whatever its state dir)
    # unless socket_dir names another dir of at most 38 characters; keep them with the rest.
    socket_dir=$d/s
    ((${#socket_dir} <= 38)) || socket_dir=""
    CT_CONTAINERD_SOCKET_DIR=${socket_dir:-/run/containerd/s}
    mkdir -p "$d/certs.d" "$CT_LIB/containerd"
    # Pods with user namespaces run runc as an unprivileged host uid, which must be able to
    # walk down to the bundle in $d/state (as it can to /run/containerd, mode 0711, on a
    # node); berth makes $CT_RUN, its socket dir, 0750.
    chmod o+x "$CT_RUN" "$d"
    for h in "${CT_MIRRORED_HOSTS[@]}" 127.0.0.1:5000 localhost:5000; do
        mkdir -p "$d/certs.d/$h"
        printf 'server = "%s"\n\n[host."%s"]\n  capabilities = ["pull", "resolve"]\n' \
            "$CT_MIRROR" "$CT_MIRROR" >"$d/certs.d/$h/hosts.toml"
    done
    cat >"$d/config.toml" <<EOF
# Generated by critest/lib.sh for critest and benchmark runs (containerd 2.x schema).
version = 3
root = "$CT_LIB/containerd"
state = "$d/state"
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "$d/containerd.sock"

[ttrpc]
  address = "$d/containerd.sock.ttrpc"

[plugins]
  [plugins."io.containerd.cri.v1.images"]
    snapshotter = "overlayfs"
    [plugins."io.containerd.cri.v1.images".pinned_images]
      # containerd 2.4.2's default is pause:3.10.2; the local registry serves 3.10.
      sandbox = "registry.k8s.io/pause:3.10"
    [plugins."io.containerd.cri.v1.images".registry]
      config_path = "$d/certs.d"

  [plugins."io.containerd.cri.v1.runtime"]
    # root here lacks CAP_SYS_RESOURCE: without this every RunPodSandbox fails
    # (runc cannot lower the sandbox's oom_score_adj).
    restrict_oom_score_adj = true
    [plugins."io.containerd.cri.v1.runtime".containerd]
      default_runtime_name = "runc"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "$d/runc"
          BinaryName = "$bin/runc"
    [plugins."io.containerd.cri.v1.runtime".cni]
      bin_dirs = ["/usr/lib/cni"]
      conf_dir = "$CT_CNI_DIR"
      max_conf_num = 1

  [plugins."io.containerd.grpc.v1.cri"]
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

  [plugins."io.containerd.internal.v1.opt"]
    path = "$CT_LIB/containerd/opt"

  [plugins."io.containerd.nri.v1.nri"]
    socket_path = "$d/nri.sock"

  [plugins."io.containerd.shim.v1.manager"]
    socket_dir = "$socket_dir"
EOF
    # PATH first: containerd looks the shim up in PATH before its own dir, and Debian's
    # containerd package (1.6) may have put an older containerd-shim-runc-v2 in /usr/bin.
    ct_launch containerd "$d/containerd.pid" "$d/containerd.sock" 60 \
        env PATH="$bin:$PATH" "$bin/containerd" --config "$d/config.toml" || return 1
    # critest's NRI specs connect to it as an external plugin (run.sh passes -nri-socket).
    CT_NRI_SOCKET=$d/nri.sock
    ct_log "containerd $("$bin/containerd" --version | awk '{print $3}') ($("$bin/runc" --version | head -1)) serving $CT_ENDPOINT (pid $CT_PID)"
}

# Stop and remove every pod (and so container) the runtime still has.
# A second pass catches a RunPodSandbox that an interrupted critest left in flight.
ct_remove_pods() {
    [[ -n $CT_ENDPOINT ]] || return 0
    local ids id pass n=0
    for pass in 1 2; do
        ((pass == 1)) || sleep 1
        ids=$(crictl --timeout 20s -r "$CT_ENDPOINT" pods -q 2>/dev/null || true)
        for id in $ids; do
            crictl --timeout 60s -r "$CT_ENDPOINT" stopp "$id" >/dev/null 2>&1 || true
            crictl --timeout 60s -r "$CT_ENDPOINT" rmp -f "$id" >/dev/null 2>&1 || true
            n=$((n + 1))
        done
    done
    ((n == 0)) || ct_log "removed $n pod(s) left behind"
}

# CNI state of sandboxes whose teardown never ran (their runtime died first): host-local
# IP reservations and libcni's result cache. (The veths die with the netns.)
ct_release_cni() { # sandbox IDs...
    local id f
    for id in "$@"; do
        for f in /var/lib/cni/networks/*/*; do
            [[ -f $f && $(head -1 "$f" 2>/dev/null | tr -d '\r') == "$id" ]] && rm -f "$f" &&
                ct_log "released IP ${f##*/} of sandbox ${id:0:12}"
        done
        rm -f /var/lib/cni/results/*-"$id"-*
    done
}

ct_kill_pid() { # pid [seconds]
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < ${2:-10} * 10; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    ct_log "pid $pid ignored SIGTERM; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Container processes that outlived their runtime: their root directory is below one of
# the runtime's own dirs.
ct_kill_rooted_under() {
    local p root d n=0
    for p in /proc/[0-9]*; do
        root=$(readlink "$p/root" 2>/dev/null) || continue
        for d in "$@"; do
            if [[ $root == "$d"/* ]]; then
                kill -KILL "${p#/proc/}" 2>/dev/null && n=$((n + 1))
            fi
        done
    done
    ((n == 0)) || ct_log "killed $n container process(es) left running"
}

ct_runtime_stop() {
    [[ -n $CT_RUNTIME ]] || return 0
    local rt=$CT_RUNTIME
    ct_remove_pods
    [[ -n $CT_PID ]] && ct_kill_pid "$CT_PID" 15
    if [[ $rt == containerd ]]; then
        # Shims outlive containerd; end the ones that belong to this containerd (their
        # command line is `containerd-shim-runc-v2 -namespace NS -id ID -address SOCK`),
        # then remove their sockets: sha256 of "SOCK/NS/ID" (and ".../debug") in the shim
        # socket dir, which is below $CT_RUN/containerd unless the path was too long.
        local p cmd ns id addr=$CT_RUN/containerd/containerd.sock ids=()
        for p in /proc/[0-9]*; do
            cmd=$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null) || continue
            [[ $cmd == *containerd-shim*" -address $addr "* || $cmd == *containerd-shim*" -address $addr" ]] || continue
            ns=$(sed -n 's/.* -namespace \([^ ]*\).*/\1/p' <<<"$cmd")
            id=$(sed -n 's/.* -id \([^ ]*\).*/\1/p' <<<"$cmd")
            ct_kill_pid "${p#/proc/}" 5
            ids+=("$ns/$id")
        done
        ((${#ids[@]} == 0)) || ct_log "ended ${#ids[@]} containerd shim(s) left running"
        ct_kill_rooted_under "$CT_LIB/containerd" "$CT_RUN/containerd"
        if [[ ${CT_CONTAINERD_SOCKET_DIR:-} == /run/containerd/s ]]; then
            for id in "${ids[@]}"; do
                rm -f "/run/containerd/s/$(printf '%s' "$addr/$id" | sha256sum | cut -d' ' -f1)" \
                    "/run/containerd/s/$(printf '%s' "$addr/$id/debug" | sha256sum | cut -d' ' -f1)"
            done
        fi
        # shellcheck disable=SC2046
        ct_release_cni $(ls "$CT_RUN/containerd/state/io.containerd.runtime.v2.task/k8s.io" 2>/dev/null)
        ct_wipe_dir "$CT_LIB/containerd"
        ct_wipe_dir "$CT_RUN/containerd"
        # /run/containerd: the default shim socket dir; remove it if this run created it.
        [[ ${CT_RUN_CONTAINERD_BEFORE:-1} == 1 ]] || rm -rf /run/containerd
    else
        ct_kill_rooted_under "$CT_LIB/berth" "$CT_RUN/berth-state"
        ct_wipe_dir "$CT_LIB/berth"
        ct_wipe_dir "$CT_RUN/berth-state"
        rm -f "$CT_RUN/berth.sock" "$CT_RUN/berth.pid"
    fi
    ct_cleanup_network
    ct_log "$rt stopped and its state removed"
    # shellcheck disable=SC2034 # CT_NRI_SOCKET is read by critest/run.sh
    CT_RUNTIME="" CT_PID="" CT_ENDPOINT="" CT_NRI_SOCKET=""
}

ct_cni_chains() { iptables -w -t nat -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^CNI-DN-/ {print $2}' | sort; }

# Network namespaces and CNI port-mapping chains created during the run and still there,
# and the CNI bridge if the run created it and nothing is attached to it any more.
ct_cleanup_network() {
    local ns br chain
    for ns in $(comm -13 <(echo "$CT_NETNS_BEFORE") <(ip netns list 2>/dev/null | awk '{print $1}' | sort)); do
        ip netns delete "$ns" 2>/dev/null && ct_log "removed leftover netns $ns"
    done
    for chain in $(comm -13 <(echo "${CT_CHAINS_BEFORE:-}") <(ct_cni_chains)); do
        iptables -w -t nat -S CNI-HOSTPORT-DNAT 2>/dev/null | grep -- "-j $chain\$" |
            sed 's/^-A/-D/' | while read -r rule; do
                # shellcheck disable=SC2086
                iptables -w -t nat $rule 2>/dev/null || true
            done
        iptables -w -t nat -F "$chain" 2>/dev/null && iptables -w -t nat -X "$chain" 2>/dev/null &&
            ct_log "removed leftover iptables chain $chain"
    done
    # portmap's top-level chains, if this run brought them and no port mapping is left.
    if [[ ${CT_HOSTPORT_BEFORE:-1} == 0 ]] &&
        [[ $(iptables -w -t nat -S CNI-HOSTPORT-DNAT 2>/dev/null) == "-N CNI-HOSTPORT-DNAT" ]]; then
        iptables -w -t nat -S 2>/dev/null | grep -E '^-A (PREROUTING|OUTPUT|POSTROUTING) .*-j CNI-HOSTPORT-' |
            while read -r rule; do eval "iptables -w -t nat -D ${rule#-A }" 2>/dev/null || true; done
        for chain in CNI-HOSTPORT-DNAT CNI-HOSTPORT-MASQ CNI-HOSTPORT-SETMARK; do
            iptables -w -t nat -F "$chain" 2>/dev/null && iptables -w -t nat -X "$chain" 2>/dev/null || true
        done
        ct_log "removed the CNI-HOSTPORT-* chains portmap created"
    fi
    br=$(ct_cni_bridge 2>/dev/null || true)
    if [[ -n $br && $br != "${CT_BRIDGE_BEFORE:-}" && -d /sys/class/net/$br ]] &&
        [[ -z $(ls "/sys/class/net/$br/brif" 2>/dev/null) ]]; then
        ip link delete "$br" 2>/dev/null && ct_log "removed CNI bridge $br (nothing attached)"
    fi
}

# What critest specs leave on the host: self bind mounts under /tmp/test*, SysV shm
# segments from ipcmk, /tmp/podLogTest*, /tmp/cri-test*, /tmp/test* and /tmp/apparmor* dirs.
# Stops the local registries if ct_prepare started them (BERTH_KEEP_REGISTRY=1 keeps them).
ct_registry_release() {
    if [[ $CT_REGISTRY_STARTED == 1 && ${BERTH_KEEP_REGISTRY:-0} != 1 ]]; then
        "$CT_HERE/registry.sh" stop
        CT_REGISTRY_STARTED=0
    fi
}

ct_tmp_dirs() { ls -d /tmp/test* /tmp/podLogTest* /tmp/cri-test* /tmp/apparmor* 2>/dev/null | sort || true; }
ct_shm_ids() { awk 'NR > 1 {print $2}' /proc/sysvipc/shm | sort; }

ct_host_snapshot() {
    CT_TMP_BEFORE=$(ct_tmp_dirs)
    CT_SHM_BEFORE=$(ct_shm_ids)
    CT_SNAPSHOT=1
}

# Only what appeared since ct_host_snapshot (nothing without a snapshot).
ct_cleanup_host() {
    [[ ${CT_SNAPSHOT:-0} == 1 ]] || return 0
    local d id
    for d in $(comm -13 <(echo "$CT_TMP_BEFORE") <(ct_tmp_dirs)); do
        ct_wipe_dir "$d" # also unmounts the self bind mounts of the propagation specs
    done
    # Segments created during the run by ipcmk (1 MiB, nobody attached).
    for id in $(comm -13 <(echo "$CT_SHM_BEFORE") <(ct_shm_ids)); do
        awk -v id="$id" 'NR > 1 && $2 == id && $4 == 1048576 && $7 == 0 {f=1} END {exit !f}' /proc/sysvipc/shm &&
            ipcrm -m "$id" 2>/dev/null && ct_log "removed SysV shm segment $id"
    done
    CT_SNAPSHOT=0
}
