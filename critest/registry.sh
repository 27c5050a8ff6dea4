#!/usr/bin/env bash
# Local test registries (Debian's docker-registry, loopback only):
#   127.0.0.1:5000  no auth      - the mirror critest's images are pulled through
#   127.0.0.1:5001  htpasswd     - user "berth", password "berth-test" (auth tests)
# Both serve the same images: every ref of the OCI layout built by critest/images/build.py.
#
#   critest/registry.sh start    # build the images if needed, start both, push
#   critest/registry.sh push     # (re)build the images and push what changed
#   critest/registry.sh stop     # stop the registries this script started
#   critest/registry.sh status
#
# State lives under $BERTH_REGISTRY_DIR (default /var/lib/berth-test-registry): config-*.yml,
# storage-*/, htpasswd, *.pid, *.log. A registry already answering on :5000 that this
# script did not start is left alone (and used as is).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
DIR=${BERTH_REGISTRY_DIR:-/var/lib/berth-test-registry}
OCI=${BERTH_TEST_OCI:-$REPO/critest/out/oci}
AUTH_USER=berth
AUTH_PASSWORD=berth-test

log() { echo "registry: $*" >&2; }

ensure_packages() {
    local missing=()
    command -v docker-registry >/dev/null || missing+=(docker-registry)
    command -v skopeo >/dev/null || missing+=(skopeo)
    command -v htpasswd >/dev/null || missing+=(apache2-utils)
    command -v curl >/dev/null || missing+=(curl)
    command -v wat2wasm >/dev/null || missing+=(wabt)
    command -v gcc >/dev/null || missing+=(gcc)
    command -v jq >/dev/null || missing+=(jq)
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
    fi
}

answers() { curl -fsS -o /dev/null -m 2 "$@" 2>/dev/null; }

write_config() { # port auth(0|1)
    local port=$1 auth=$2
    mkdir -p "$DIR/storage-$port"
    {
        echo "version: 0.1"
        echo "log: {level: warn}"
        echo "storage:"
        echo "  filesystem: {rootdirectory: $DIR/storage-$port}"
        echo "  delete: {enabled: true}"
        echo "http:"
        echo "  addr: 127.0.0.1:$port"
        echo "  headers: {X-Content-Type-Options: [nosniff]}"
        if [[ $auth == 1 ]]; then
            echo "auth:"
            echo "  htpasswd: {realm: berth-test, path: $DIR/htpasswd}"
        fi
    } >"$DIR/config-$port.yml"
}

start_one() { # port auth
    local port=$1 auth=$2 pidf="$DIR/registry-$1.pid"
    if answers "http://127.0.0.1:$port/v2/" || answers -u "$AUTH_USER:$AUTH_PASSWORD" "http://127.0.0.1:$port/v2/"; then
        log "127.0.0.1:$port already answers; leaving it"
        return
    fi
    write_config "$port" "$auth"
    setsid docker-registry serve "$DIR/config-$port.yml" >>"$DIR/registry-$port.log" 2>&1 </dev/null &
    echo $! >"$pidf"
    local url="http://127.0.0.1:$port/v2/" creds=()
    [[ $auth == 1 ]] && creds=(-u "$AUTH_USER:$AUTH_PASSWORD")
    for _ in $(seq 100); do
        answers "${creds[@]}" "$url" && { log "started 127.0.0.1:$port (pid $(cat "$pidf"))"; return; }
        kill -0 "$(cat "$pidf")" 2>/dev/null || break
        sleep 0.1
    done
    log "127.0.0.1:$port did not come up; see $DIR/registry-$port.log"
    tail -5 "$DIR/registry-$port.log" >&2
    return 1
}

stop_one() {
    local pidf="$DIR/registry-$1.pid" pid
    [[ -f $pidf ]] || return 0
    pid=$(cat "$pidf")
    if kill -0 "$pid" 2>/dev/null && grep -q docker-registry "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        log "stopped 127.0.0.1:$1 (pid $pid)"
    fi
    rm -f "$pidf"
}

build_images() {
    python3 "$HERE/images/build.py" --out "$OCI" >/dev/null
}

# Digest the registry has for REF, or nothing.
remote_digest() { # port ref
    local repo=${2%:*} tag=${2##*:} creds=()
    [[ $1 == 5001 ]] && creds=(-u "$AUTH_USER:$AUTH_PASSWORD")
    curl -fsS -m 5 -I "${creds[@]}" \
        -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
        "http://127.0.0.1:$1/v2/$repo/manifests/$tag" 2>/dev/null |
        tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}'
}

push_all() { # port
    local port=$1 pushed=0 same=0 creds=()
    [[ $port == 5001 ]] && creds=(--dest-creds "$AUTH_USER:$AUTH_PASSWORD")
    while IFS=$'\t' read -r ref manifest _; do
        if [[ $(remote_digest "$port" "$ref") == "$manifest" ]]; then
            same=$((same + 1))
            continue
        fi
        skopeo copy -q --preserve-digests --dest-tls-verify=false "${creds[@]}" \
            "oci:$OCI:$ref" "docker://127.0.0.1:$port/$ref"
        [[ $(remote_digest "$port" "$ref") == "$manifest" ]] ||
            { log "127.0.0.1:$port/$ref: digest after push is not $manifest"; return 1; }
        pushed=$((pushed + 1))
    done <"$OCI/refs.tsv"
    log "127.0.0.1:$port: pushed $pushed, already present $same"
}

cmd=${1:-}
case $cmd in
start)
    ensure_packages
    mkdir -p "$DIR"
    [[ -f $DIR/htpasswd ]] || htpasswd -Bbc "$DIR/htpasswd" "$AUTH_USER" "$AUTH_PASSWORD" 2>/dev/null
    start_one 5000 0
    start_one 5001 1
    build_images
    push_all 5000
    push_all 5001
    ;;
push)
    ensure_packages
    build_images
    push_all 5000
    push_all 5001
    ;;
stop)
    stop_one 5001
    stop_one 5000
    ;;
status)
    for p in 5000 5001; do
        if answers "http://127.0.0.1:$p/v2/" || answers -u "$AUTH_USER:$AUTH_PASSWORD" "http://127.0.0.1:$p/v2/"; then
            echo "127.0.0.1:$p up"
        else
            echo "127.0.0.1:$p down"
        fi
    done
    ;;
*)
    echo "usage: $0 start|stop|push|status" >&2
    exit 2
    ;;
esac
