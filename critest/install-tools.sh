#!/usr/bin/env bash
# Installs cri-tools v1.37.0 (crictl, critest) and the ginkgo v2 CLI that cri-tools' go.mod
# pins, all built from the Go module proxy, into /usr/local/bin. Idempotent: a tool that
# already reports the right version is left alone.
#
#   critest/install-tools.sh            # install what is missing
#   critest/install-tools.sh --force    # rebuild all three
set -euo pipefail

CRI_TOOLS_VERSION=1.37.0
BIN_DIR=${BIN_DIR:-/usr/local/bin}
FORCE=0
[[ ${1:-} == --force ]] && FORCE=1

export PATH=$PATH:/usr/local/go/bin
export GOFLAGS=${GOFLAGS:--buildvcs=false}
command -v go >/dev/null || { echo "install-tools: Go not found (expected /usr/local/go/bin/go)" >&2; exit 1; }

log() { echo "install-tools: $*" >&2; }

LDFLAGS="-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRI_TOOLS_VERSION}"

# (Output captured first: grep -q closing the pipe early would fail the check under pipefail.)
have_crictl() { [[ $("$BIN_DIR/crictl" --version 2>/dev/null) == "crictl version ${CRI_TOOLS_VERSION}" ]]; }
have_critest() { [[ $("$BIN_DIR/critest" -version 2>/dev/null) == *"critest version: ${CRI_TOOLS_VERSION}"* ]]; }

# Source tree of cri-tools from the module cache (downloaded through the module proxy).
module_dir() {
    go mod download -json "sigs.k8s.io/cri-tools@v${CRI_TOOLS_VERSION}" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p'
}

need_build=0
{ [[ $FORCE == 1 ]] || ! have_crictl || ! have_critest; } && need_build=1

if [[ $need_build == 1 ]]; then
    src=$(module_dir)
    [[ -d $src ]] || { log "cannot download sigs.k8s.io/cri-tools@v${CRI_TOOLS_VERSION}"; exit 1; }
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # The module cache is read-only; building from it is fine as long as outputs go elsewhere.
    if [[ $FORCE == 1 ]] || ! have_crictl; then
        log "building crictl v${CRI_TOOLS_VERSION}"
        (cd "$src" && go build -trimpath -ldflags "$LDFLAGS" -o "$tmp/crictl" ./cmd/crictl)
        install -m 0755 "$tmp/crictl" "$BIN_DIR/crictl"
    fi
    if [[ $FORCE == 1 ]] || ! have_critest; then
        log "building critest v${CRI_TOOLS_VERSION} (go test -c)"
        (cd "$src" && go test -c -trimpath -ldflags "$LDFLAGS" -o "$tmp/critest" ./cmd/critest)
        install -m 0755 "$tmp/critest" "$BIN_DIR/critest"
    fi
fi

# ginkgo v2 CLI at the version cri-tools pins (critest -parallel runs it).
src=${src:-$(module_dir)}
GINKGO_VERSION=$(awk '$1 == "github.com/onsi/ginkgo/v2" {print $2; exit}' "$src/go.mod")
[[ -n $GINKGO_VERSION ]] || { log "ginkgo version not found in cri-tools go.mod"; exit 1; }
if [[ $FORCE == 1 ]] || [[ $("$BIN_DIR/ginkgo" version 2>/dev/null) != "Ginkgo Version ${GINKGO_VERSION#v}" ]]; then
    log "installing ginkgo ${GINKGO_VERSION}"
    GOBIN=$BIN_DIR go install "github.com/onsi/ginkgo/v2/ginkgo@${GINKGO_VERSION}"
fi

have_crictl || { log "crictl --version does not report ${CRI_TOOLS_VERSION}"; exit 1; }
have_critest || { log "critest -version does not report ${CRI_TOOLS_VERSION}"; exit 1; }
log "ok: $("$BIN_DIR/crictl" --version), $("$BIN_DIR/critest" -version | head -1), $("$BIN_DIR/ginkgo" version)"
