#!/usr/bin/env bash
# Builds turn-bpf and runs every check: rustfmt, clippy, unit tests, BPF packet tests and the
# end-to-end tests with coturn in network namespaces. CI runs this (.ci/run).
#
# Needs root (apt-get, BPF, network namespaces) on Debian 12; installs the Debian packages it
# needs. Network tests run one at a time (--test-threads=1): they must not overlap on 2 cores.
# Every step (and every test binary: --no-fail-fast) runs even when an earlier one failed; the
# exit status is non-zero if any failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "test.sh: must run as root (it installs packages, loads BPF and builds network namespaces)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
PATH="$PATH:/usr/sbin:/sbin"
[[ -d ${HOME:-/root}/.cargo/bin ]] && PATH="${HOME:-/root}/.cargo/bin:$PATH"

# Bounds that keep a whole run inside CI's 90 minutes.
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
TEST_TIMEOUT=${TEST_TIMEOUT:-2400}

PACKAGES=(clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config coturn iproute2 ethtool
    tcpdump sysstat bpftool)

log() { echo "=== test.sh: $*"; }

install_packages() {
    local p missing=()
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]} == 0)); then
        log "Debian packages present"
        return 0
    fi
    log "installing ${missing[*]}"
    # Keep the Debian coturn service (and any other) from starting during the install: the lab
    # runs its own coturn per namespace.
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local rc=0
    apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}" || rc=$?
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    if ((rc)); then
        echo "test.sh: apt-get failed ($rc) installing ${missing[*]}" >&2
        exit 1
    fi
}

# The Debian package's own coturn must stay off: on a systemd machine, disable the unit.
keep_coturn_service_off() {
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        systemctl disable coturn >/dev/null 2>&1 || true
    fi
    if [[ -f /etc/default/coturn ]] && grep -q '^TURNSERVER_ENABLED=1' /etc/default/coturn; then
        sed -i 's/^TURNSERVER_ENABLED=1/#TURNSERVER_ENABLED=1/' /etc/default/coturn
    fi
}

# rustfmt and clippy: install with rustup if missing; skip (with a message) if that fails.
have_component() {
    cargo "$1" --version >/dev/null 2>&1 && return 0
    if command -v rustup >/dev/null; then
        log "installing rustup component $2"
        rustup component add "$2" >/dev/null 2>&1 || true
    fi
    cargo "$1" --version >/dev/null 2>&1
}

FAILED=()
step() {
    local name="$1"
    shift
    log "$name: $*"
    local t0=$SECONDS
    if "$@"; then
        log "$name: ok ($((SECONDS - t0)) s)"
    else
        log "$name: FAILED ($((SECONDS - t0)) s)"
        FAILED+=("$name")
    fi
}

install_packages
keep_coturn_service_off
command -v cargo >/dev/null || {
    echo "test.sh: cargo not found (install the Rust toolchain)" >&2
    exit 1
}
log "$(cargo --version), $(uname -r), $(nproc) cores"

if have_component fmt rustfmt; then
    step fmt cargo fmt --all -- --check
else
    log "fmt: SKIPPED (rustfmt not available and rustup could not install it)"
fi

step build timeout --kill-after=30 "$BUILD_TIMEOUT" cargo build --release --all-targets

if have_component clippy clippy; then
    # --release shares the build scripts' output (libbpf, the BPF skeletons) with the build.
    step clippy timeout --kill-after=30 "$BUILD_TIMEOUT" \
        cargo clippy --release --all-targets -- -D warnings
else
    log "clippy: SKIPPED (clippy not available and rustup could not install it)"
fi

step test timeout --kill-after=30 "$TEST_TIMEOUT" \
    cargo test --release --no-fail-fast -- --test-threads=1

# Tests tear their labs down themselves (also on panic); a killed run may leave some behind.
leftover="$(ip netns list 2>/dev/null | grep -E '^tbt-' || true)"
if [[ -n $leftover ]]; then
    log "warning: test namespaces left behind (remove with LAB=<prefix> scripts/lab.sh down):"
    echo "$leftover"
fi

if ((${#FAILED[@]})); then
    log "FAILED: ${FAILED[*]}"
    exit 1
fi
log "all steps passed"
