# shellcheck shell=bash
# The host side of running a kubelet, shared by kubelet-scenarios.sh and run.sh: what the
# kubelet changes on the host is recorded before it starts (record_host) and undone at exit.
# Source it after critest/lib.sh; the functions read, when called:
#   CT_RUN            the run dir (records: kubepods.before, bridge.existed, ...)
#   KUBELET_SYSCTLS   the sysctls the kubelet's container manager sets
#   KUBELET_CHAINS    an ERE of the iptables chains it creates
#   BRIDGE, CNI_NET   the CNI bridge and network name of the run's conflist
#   POD_LOGS          the kubelet's podLogsDir (its /var/log/containers links point there)
#   BERTH_BIN, SOCK, EP  the berth binary, its socket and endpoint (berth_start)
#   KUBE_CGROUP_TOP   the kubelet's top cgroup below each hierarchy: `kubepods` for
#                     cgroupRoot / (the default), the cgroupRoot's first element otherwise
# and log() for messages.
#
# Two harnesses at once (kubelet-scenarios.sh beside run.sh, say): the kubelets must not
# share a cgroupRoot (each kills the pods it finds under its own kubepods cgroup and does
# not know, every 2 s), and the sysctls and iptables chains are the host's, not a run's:
# they are recorded in $HOST_RECORD by a harness that starts while no kubelet runs, kept
# by one that starts beside another kubelet, and restored (chains removed, the record
# deleted) by the one that ends when no other kubelet is left.
HOST_RECORD=/run/berth-kubelet-host

# The sysctls the kubelet's container manager sets (setupKernelTunables).
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
KUBELET_CHAINS='^(KUBE-FIREWALL|KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY)$'

KUBE_CGROUP_TOP=${KUBE_CGROUP_TOP:-kubepods}
E2E_NODE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# A private berth: critest's config (mirrors, insecure local registries, private dirs) with
# the CNI network rendered from cni-template.json (bridge $BRIDGE, network $CNI_NET) when
# the kubelet sends the pod CIDR; a crictl config for it. Sets BERTH_PID.
berth_start() {
    local bin=$CT_RUN/berth
    install -m 0755 "$BERTH_BIN" "$bin"
    sed -e "s/\"berthk0\"/\"$BRIDGE\"/; s/\"berth-kubelet-test\"/\"$CNI_NET\"/" \
        "$E2E_NODE_DIR/cni-template.json" >"$CT_RUN/cni-template.json"
    # node e2e's RuntimeClass specs use a handler named test-handler (as containerd's CI
    # configures it); a top-level key, so before the tables.
    { echo 'extra_runtime_handlers = ["test-handler"]'; ct_berth_config; } |
        sed "/^\[cni\]\$/a conf_template = \"$CT_RUN/cni-template.json\"" >"$CT_RUN/berth.toml"
    "$bin" config check --config "$CT_RUN/berth.toml" >/dev/null || { log "berth rejects $CT_RUN/berth.toml"; return 1; }
    mkdir -p "$CT_CNI_DIR"
    printf 'runtime-endpoint: %s\nimage-endpoint: %s\ntimeout: 30\n' "$EP" "$EP" >"$CT_RUN/crictl.yaml"
    rm -f "$SOCK"
    ct_launch berth "$CT_RUN/berth.pid" "$SOCK" 30 \
        "$bin" serve --config "$CT_RUN/berth.toml" --socket "$SOCK" --root "$CT_LIB/berth" \
        --state "$CT_RUN/berth-state" || return 1
    BERTH_PID=$CT_PID
    log "berth $("$bin" --version) ($BERTH_BIN) serving $EP (pid $BERTH_PID, log $CT_LOGS/berth.log)"
}

# PIDs of kubelets running on the host (ours too until it is stopped).
kubelet_pids() {
    local p
    for p in /proc/[0-9]*; do
        [[ $(cat "$p/comm" 2>/dev/null) == kubelet ]] && echo "${p#/proc/}"
    done
}

record_host() {
    local s others
    mkdir -p "$CT_RUN"
    others=$(kubelet_pids | tr '\n' ' ')
    if [[ -n $others ]]; then
        log "another kubelet is running (pid ${others% }): the host's sysctls and chains as recorded before it ($HOST_RECORD) stay the reference"
    else
        mkdir -p "$HOST_RECORD"
        for s in "${KUBELET_SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$HOST_RECORD/sysctls.before"
        for t in filter nat mangle; do
            iptables -w -t "$t" -S 2>/dev/null | awk -v t="$t" '$1 == "-N" {print "ip4", t, $2}'
            ip6tables -w -t "$t" -S 2>/dev/null | awk -v t="$t" '$1 == "-N" {print "ip6", t, $2}'
        done >"$HOST_RECORD/chains.before"
    fi
    [[ -d /var/log/containers ]] && touch "$CT_RUN/var-log-containers.existed"
    [[ -d /sys/class/net/$BRIDGE ]] && touch "$CT_RUN/bridge.existed"
    for s in /sys/fs/cgroup/*/"$KUBE_CGROUP_TOP"; do [[ -d $s ]] && echo "$s"; done >"$CT_RUN/kubepods.before"
    return 0
}

undo_iptables() {
    local fam cmd t chain rule others
    others=$(kubelet_pids | tr '\n' ' ')
    if [[ -n $others ]]; then
        log "another kubelet is running (pid ${others% }): its iptables chains stay"
        return 0
    fi
    for fam in ip4 ip6; do
        cmd=iptables
        [[ $fam == ip6 ]] && cmd=ip6tables
        command -v "$cmd" >/dev/null || continue
        for t in filter nat mangle; do
            for chain in $("$cmd" -w -t "$t" -S 2>/dev/null | awk '$1 == "-N" {print $2}' | grep -E "$KUBELET_CHAINS"); do
                grep -qx "$fam $t $chain" "$HOST_RECORD/chains.before" 2>/dev/null && continue
                "$cmd" -w -t "$t" -S 2>/dev/null | grep -E "^-A [A-Z]+ .*-j $chain\$" | while read -r rule; do
                    # shellcheck disable=SC2086
                    "$cmd" -w -t "$t" -D ${rule#-A } 2>/dev/null || true
                done
                "$cmd" -w -t "$t" -F "$chain" 2>/dev/null
                "$cmd" -w -t "$t" -X "$chain" 2>/dev/null && log "removed $cmd $t chain $chain"
            done
        done
    done
}

undo_sysctls() {
    local name value others
    [[ -f $HOST_RECORD/sysctls.before ]] || return 0
    others=$(kubelet_pids | tr '\n' ' ')
    if [[ -n $others ]]; then
        log "another kubelet is running (pid ${others% }): the sysctls stay as it set them"
        return 0
    fi
    while IFS='=' read -r name value; do
        [[ -n $value && $(sysctl -n "$name" 2>/dev/null) != "$value" ]] || continue
        sysctl -qw "$name=$value" && log "restored $name=$value"
    done <"$HOST_RECORD/sysctls.before"
}

# The kubelet's pod and QoS cgroups (cgroupsPerQOS) in every v1 hierarchy: kubepods for
# cgroupRoot /, or the run's own cgroupRoot.
undo_cgroups() {
    local top d
    for top in /sys/fs/cgroup/*/"$KUBE_CGROUP_TOP"; do
        [[ -d $top ]] || continue
        grep -qx "$top" "$CT_RUN/kubepods.before" 2>/dev/null && continue
        # Deepest first; a cgroup with processes left stays (and is reported).
        find "$top" -depth -type d 2>/dev/null | while read -r d; do rmdir "$d" 2>/dev/null; done
        if [[ -d $top ]]; then
            log "could not remove $top: $(find "$top" -name cgroup.procs -exec cat {} + 2>/dev/null | wc -l) process(es) left"
        else
            log "removed cgroup $top"
        fi
    done
}

undo_logs_and_network() {
    local l
    for l in /var/log/containers/*.log; do
        [[ -L $l && $(readlink "$l") == "$POD_LOGS"/* ]] && rm -f "$l"
    done
    [[ -e $CT_RUN/var-log-containers.existed ]] || rmdir /var/log/containers 2>/dev/null
    if [[ ! -e $CT_RUN/bridge.existed && -d /sys/class/net/$BRIDGE ]]; then
        ip link delete "$BRIDGE" 2>/dev/null && log "removed CNI bridge $BRIDGE"
    fi
    rm -rf "/var/lib/cni/networks/$CNI_NET"
    rm -f /var/lib/cni/results/"$CNI_NET"-* 2>/dev/null
}

# After the kubelet and berth have stopped: container processes berth left, then the
# kubelet's host side effects.
undo_host() {
    ct_kill_rooted_under "$CT_LIB/berth" "$CT_RUN/berth-state"
    undo_cgroups
    undo_iptables
    undo_sysctls
    # The last harness out deletes the host record.
    [[ -n $(kubelet_pids) ]] || rm -rf "$HOST_RECORD"
    undo_logs_and_network
}
