#!/usr/bin/env bash
# Builds the lab's pion/turn server (testkit/pion/) and Debian's example UDP client offline, in Go
# module mode against the sources of golang-github-pion-turn.v2-dev (see testkit/pion/go.mod), into
# target/pion/. Rebuilds only when the sources, the Go toolchain or the Debian packages changed.
#
# Usage: scripts/pion.sh [build]   build if needed, print the server's path
#        scripts/pion.sh client    build if needed, print the example client's path
#        scripts/pion.sh gopath    build if needed, print the path of the same server built in
#                                  GOPATH mode (no module information in it: for the tests of
#                                  src/gobuild.rs)
# Needs: apt-get install golang-go golang-github-pion-turn.v2-dev (scripts/common.sh installs them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/testkit/pion"
OUT="${PION_OUT:-$ROOT/target/pion}"
SERVER="$OUT/pion-turn-server"
CLIENT="$OUT/pion-turn-client-udp"
GOPATH_SERVER="$OUT/pion-turn-server-gopath"
STAMP="$OUT/stamp"
DEBIAN_SRC=/usr/share/gocode/src/github.com/pion/turn/v2
PATH="$PATH:/usr/lib/go/bin"

die() { echo "pion.sh: error: $*" >&2; exit 1; }

# What the executables depend on: our sources, the Go toolchain, the Debian source packages.
fingerprint() {
    (
        cd "$SRC"
        find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) -print0 |
            sort -z | xargs -0 sha256sum
        go version
        dpkg-query -W -f='${Package} ${Version}\n' 'golang-github-pion-*' 2>/dev/null || true
    ) | sha256sum | cut -d' ' -f1
}

build() {
    command -v go >/dev/null ||
        die "go not found: apt-get install golang-go golang-github-pion-turn.v2-dev"
    [[ -d $DEBIAN_SRC ]] ||
        die "$DEBIAN_SRC missing: apt-get install golang-github-pion-turn.v2-dev"
    mkdir -p "$OUT"
    # One build at a time (tests may start labs in parallel).
    exec 9>"$OUT/.lock"
    flock 9
    local fp
    fp="$(fingerprint)"
    if [[ -x $SERVER && -x $CLIENT && -x $GOPATH_SERVER && -r $STAMP &&
        "$(cat "$STAMP")" == "$fp" ]]; then
        return 0
    fi
    echo "pion.sh: building $SERVER and $CLIENT (offline, module mode)" >&2
    rm -f "$STAMP"
    # Offline: no module proxy, no checksum database; every module is replaced by a local
    # directory, so nothing is fetched. The caches stay under target/.
    (
        cd "$SRC"
        export GOFLAGS=-mod=mod GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local \
            GOCACHE="$OUT/gocache" GOPATH="$OUT/gopath" CGO_ENABLED=0
        go build -o "$SERVER.tmp" .
        go build -o "$CLIENT.tmp" github.com/pion/turn/v2/examples/turn-client/udp
        # GOPATH mode: Debian's tree is a GOPATH; no module information is recorded.
        GO111MODULE=off GOFLAGS= GOPATH=/usr/share/gocode go build -o "$GOPATH_SERVER.tmp" .
    ) >&2
    mv "$SERVER.tmp" "$SERVER"
    mv "$CLIENT.tmp" "$CLIENT"
    mv "$GOPATH_SERVER.tmp" "$GOPATH_SERVER"
    echo "$fp" >"$STAMP"
}

case "${1:-build}" in
build) build && echo "$SERVER" ;;
client) build && echo "$CLIENT" ;;
gopath) build && echo "$GOPATH_SERVER" ;;
*) echo "usage: $0 [build|client|gopath]" >&2; exit 2 ;;
esac
