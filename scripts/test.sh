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

# shellcheck source=scripts/common.sh
SCRIPT=test.sh
source scripts/common.sh
require_root "it installs packages, loads BPF and builds network namespaces"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

# Bounds that keep a whole run inside CI's 90 minutes.
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
TEST_TIMEOUT=${TEST_TIMEOUT:-2400}

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
require_cargo
log "$(cargo --version), $(uname -r), $(nproc) cores"

if have_component fmt rustfmt; then
    step fmt cargo fmt --all -- --check
else
    log "fmt: SKIPPED (rustfmt not available and rustup could not install it)"
fi

step build timeout --kill-after=30 "$BUILD_TIMEOUT" cargo build --release --workspace --all-targets

if have_component clippy clippy; then
    # --release shares the build scripts' output (libbpf, the BPF skeletons) with the build.
    step clippy timeout --kill-after=30 "$BUILD_TIMEOUT" \
        cargo clippy --release --workspace --all-targets -- -D warnings
else
    log "clippy: SKIPPED (clippy not available and rustup could not install it)"
fi

step test timeout --kill-after=30 "$TEST_TIMEOUT" \
    cargo test --release --workspace --no-fail-fast -- --test-threads=1

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
