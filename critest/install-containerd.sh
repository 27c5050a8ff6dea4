#!/usr/bin/env bash
# Builds the comparison runtime for critest and the benchmarks: containerd v2.4.2
# (cmd/containerd, cmd/containerd-shim-runc-v2) and runc v1.5.2 (the runc that containerd
# v2.4.2 pins in script/setup/runc-version), from the Go module proxy at those pinned
# versions, into a fixed prefix outside the system paths:
#
#   /usr/local/lib/berth-test/containerd-2.4.2/bin/{containerd,containerd-shim-runc-v2,runc}
#
# Idempotent: when all three binaries report the pinned versions nothing is built.
# Prints the bin dir on stdout (the harness reads it); progress goes to stderr.
#
#   critest/install-containerd.sh            # install what is missing
#   critest/install-containerd.sh --force    # rebuild all three
#
# Why not Debian's runc 1.1.5: containerd 2.4 would not refuse it (it consults `runc
# features` only before idmapped mounts), but that runc does not report idmapped-mount
# support there, so containerd 2.4 would turn CRI user namespaces off and the comparison
# would not be the node a containerd 2.4 user runs; it also lacks years of runc fixes.
# runc is built with the `seccomp` tag (libseccomp-dev from apt, cgo) as upstream's
# release is, but without `libpathrs` (a Rust library Debian 12 does not package; runc
# then uses its built-in Go path-safety code). containerd is built without the btrfs
# snapshotter (`no_btrfs`: it needs the btrfs-progs headers, and the harness disables that
# snapshotter anyway); the shim is static, without cgo, as upstream's Makefile builds it.
set -euo pipefail

CONTAINERD_VERSION=2.4.2
RUNC_VERSION=1.5.2
PREFIX=${CONTAINERD_PREFIX:-/usr/local/lib/berth-test/containerd-${CONTAINERD_VERSION}}
BIN=$PREFIX/bin
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1

export PATH=$PATH:/usr/local/go/bin
export GOFLAGS=${GOFLAGS:--buildvcs=false}
log() { echo "install-containerd: $*" >&2; }
command -v go >/dev/null || { log "Go not found (expected /usr/local/go/bin/go)"; exit 1; }

# (Output captured first: grep -q closing the pipe early would fail the check under pipefail.)
have_containerd() { [[ $("$BIN/containerd" --version 2>/dev/null) == *" v${CONTAINERD_VERSION} "* ]]; }
have_shim() { [[ $("$BIN/containerd-shim-runc-v2" -v 2>/dev/null) == *"Version:"*"v${CONTAINERD_VERSION}"* ]]; }
have_runc() { [[ $("$BIN/runc" --version 2>/dev/null) == "runc version ${RUNC_VERSION}"* ]]; }

if [[ $FORCE == 0 ]] && have_containerd && have_shim && have_runc; then
    log "ok: containerd v${CONTAINERD_VERSION}, runc ${RUNC_VERSION} in $BIN"
    echo "$BIN"
    exit 0
fi

module_dir() { # module@version
    go mod download -json "$1" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p'
}

# runc's seccomp support links libseccomp through cgo.
missing=()
for p in gcc libc6-dev libseccomp-dev pkg-config; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$BIN"

# The module cache is read-only; building from it is fine as long as outputs go elsewhere.
if [[ $FORCE == 1 ]] || ! have_containerd || ! have_shim; then
    src=$(module_dir "github.com/containerd/containerd/v2@v${CONTAINERD_VERSION}")
    [[ -d $src ]] || { log "cannot download github.com/containerd/containerd/v2@v${CONTAINERD_VERSION}"; exit 1; }
    pinned_runc=$(cat "$src/script/setup/runc-version" 2>/dev/null || true)
    [[ $pinned_runc == "v${RUNC_VERSION}" ]] ||
        log "note: containerd v${CONTAINERD_VERSION} pins runc ${pinned_runc:-?}, this script builds v${RUNC_VERSION}"
    pkg=github.com/containerd/containerd/v2
    # What upstream's Makefile stamps (Revision is the git commit there; the module zip has none).
    ldflags="-X $pkg/version.Version=v${CONTAINERD_VERSION} -X $pkg/version.Revision=go-module-proxy -X $pkg/version.Package=$pkg -s -w"
    if [[ $FORCE == 1 ]] || ! have_containerd; then
        log "building containerd v${CONTAINERD_VERSION} (a few minutes on 2 cores)"
        (cd "$src" && go build -trimpath -buildmode=pie -tags "urfave_cli_no_docs no_btrfs" \
            -ldflags "$ldflags" -o "$tmp/containerd" ./cmd/containerd)
        install -m 0755 "$tmp/containerd" "$BIN/containerd"
    fi
    if [[ $FORCE == 1 ]] || ! have_shim; then
        log "building containerd-shim-runc-v2 v${CONTAINERD_VERSION}"
        (cd "$src" && CGO_ENABLED=0 go build -trimpath -tags "urfave_cli_no_docs no_grpc" \
            -ldflags "$ldflags -extldflags -static" -o "$tmp/containerd-shim-runc-v2" ./cmd/containerd-shim-runc-v2)
        install -m 0755 "$tmp/containerd-shim-runc-v2" "$BIN/containerd-shim-runc-v2"
    fi
fi

if [[ $FORCE == 1 ]] || ! have_runc; then
    src=$(module_dir "github.com/opencontainers/runc@v${RUNC_VERSION}")
    [[ -d $src ]] || { log "cannot download github.com/opencontainers/runc@v${RUNC_VERSION}"; exit 1; }
    log "building runc v${RUNC_VERSION}"
    (cd "$src" && CGO_ENABLED=1 go build -trimpath -buildmode=pie -tags "seccomp urfave_cli_no_docs" \
        -ldflags "-X main.gitCommit=v${RUNC_VERSION}-go-module-proxy" -o "$tmp/runc" .)
    install -m 0755 "$tmp/runc" "$BIN/runc"
fi

have_containerd || { log "$BIN/containerd --version does not report v${CONTAINERD_VERSION}"; exit 1; }
have_shim || { log "$BIN/containerd-shim-runc-v2 -v does not report v${CONTAINERD_VERSION}"; exit 1; }
have_runc || { log "$BIN/runc --version does not report ${RUNC_VERSION}"; exit 1; }
log "ok: $("$BIN/containerd" --version), $("$BIN/runc" --version | head -1) in $BIN"
echo "$BIN"
