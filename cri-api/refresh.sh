#!/usr/bin/env bash
# Replaces proto/api.proto with the CRI of another k8s.io/cri-api release, taken from the Go
# module proxy, and records the release in proto/VERSION.
#
#   cri-api/refresh.sh v0.37.2
set -euo pipefail
cd "$(dirname "$0")"
version=${1:?usage: refresh.sh vX.Y.Z (a k8s.io/cri-api release)}
export PATH=$PATH:/usr/local/go/bin
dir=$(cd "$(mktemp -d)" && go mod download -json "k8s.io/cri-api@${version}" | sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[[ -f $dir/pkg/apis/runtime/v1/api.proto ]] || { echo "refresh: k8s.io/cri-api@${version} has no api.proto" >&2; exit 1; }
install -m 0644 "$dir/pkg/apis/runtime/v1/api.proto" proto/api.proto
install -m 0644 "$dir/LICENSE" proto/LICENSE
printf '%s\n' "$version" > proto/VERSION
echo "refresh: proto/api.proto is now k8s.io/cri-api ${version}; rebuild and handle what changed" >&2
