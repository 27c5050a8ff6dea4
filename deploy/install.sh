#!/usr/bin/env bash
# berth's installer for a fresh Debian 12 machine: the packages berth and its tests need,
# the cri-tools (crictl, critest, ginkgo) at pinned versions, a release build of berth,
# its config and CNI network, and then the daemon itself, started and checked with crictl.
#
#   deploy/install.sh               # everything: install, build, start berth, run the demo pod
#   deploy/install.sh --deps-only   # only the packages and tools (what deploy/test.sh needs)
#
# Idempotent: run it again after a `git pull` to rebuild and restart berth.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

DEPS_ONLY=0
[[ ${1:-} == --deps-only ]] && DEPS_ONLY=1

log() { echo "install: $*" >&2; }
[[ $(id -u) == 0 ]] || { log "run as root (berth creates namespaces, mounts and cgroups)"; exit 1; }

# Debian packages. Runtime: iptables and the CNI plugins. Build: protoc (tonic), clang,
# libseccomp, and a static libc for the pod init program (sandbox/build.rs). Tests: the registry, skopeo and friends; a static busybox for test rootfs
# (it conflicts with the dynamic `busybox` package, which the image builder only
# downloads); the Wasm toolchain for the test modules. (containerd 2.4 and runc for the
# side-by-side comparisons, and the kubelet, are built from the Go module proxy by
# critest/install-containerd.sh and e2e-node/install-kubelet.sh, which deploy/test.sh runs.)
PACKAGES=(
    protobuf-compiler pkg-config clang lld libseccomp-dev gcc libc6-dev make
    containernetworking-plugins iptables iproute2 util-linux procps kmod
    docker-registry skopeo apache2-utils jq curl python3
    busybox-static wabt wasi-libc
)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    # Keep apt from starting the registry as a service: the tests start their own
    # instances on their own ports.
    own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        own_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    [[ $own_policy == 1 ]] && rm -f /usr/sbin/policy-rc.d
fi

# Rust comes from rustup on this kind of machine; Debian's rustc is too old for the deps.
export PATH=$PATH:$HOME/.cargo/bin:/usr/local/go/bin
command -v cargo >/dev/null || { log "cargo not found: install Rust with rustup (1.90 or newer)"; exit 1; }

# cri-tools at the pinned version, built from the Go module proxy.
critest/install-tools.sh

[[ $DEPS_ONLY == 1 ]] && exit 0

log "building berth (release)"
cargo build --release -p cri-server
install -m 0755 target/release/berth /usr/local/bin/berth

install -d -m 0755 /etc/berth
[[ -e /etc/berth/config.toml ]] || install -m 0644 deploy/config.toml /etc/berth/config.toml

# The pod network: ours only when the node has none.
install -d -m 0755 /etc/cni/net.d
if ! ls /etc/cni/net.d/*.conf /etc/cni/net.d/*.conflist /etc/cni/net.d/*.json >/dev/null 2>&1; then
    install -m 0644 deploy/cni/10-berth-bridge.conflist /etc/cni/net.d/
fi

[[ -e /etc/crictl.yaml ]] || cat > /etc/crictl.yaml <<'YAML'
runtime-endpoint: unix:///run/berth/berth.sock
image-endpoint: unix:///run/berth/berth.sock
timeout: 60
YAML

SOCKET=/run/berth/berth.sock
if [[ -d /run/systemd/system ]]; then
    install -m 0644 deploy/berth.service /etc/systemd/system/berth.service
    systemctl daemon-reload
    systemctl enable berth.service
    systemctl restart berth.service
else
    # No systemd (containers, minimal edge images): run it in the background.
    if [[ -s /run/berth.pid ]] && kill -0 "$(cat /run/berth.pid)" 2>/dev/null; then
        log "stopping the running berth ($(cat /run/berth.pid))"
        kill -TERM "$(cat /run/berth.pid)"
        for _ in $(seq 100); do kill -0 "$(cat /run/berth.pid)" 2>/dev/null || break; sleep 0.1; done
    fi
    nohup /usr/local/bin/berth serve --config /etc/berth/config.toml >> /var/log/berth.log 2>&1 &
    echo $! > /run/berth.pid
    log "berth started in the background (pid $(cat /run/berth.pid), log /var/log/berth.log)"
fi

for _ in $(seq 200); do [[ -S $SOCKET ]] && crictl --runtime-endpoint "unix://$SOCKET" version >/dev/null 2>&1 && break; sleep 0.05; done
crictl --runtime-endpoint "unix://$SOCKET" version
crictl --runtime-endpoint "unix://$SOCKET" info | jq -c '.status.conditions[] | {type, status, reason}'

if [[ -x deploy/examples/run-demo.sh ]]; then
    deploy/examples/run-demo.sh
else
    log "the mixed Wasm + native demo pod arrives with the Wasm work (deploy/examples/)"
fi
log "done: berth serves unix://$SOCKET"
