#!/usr/bin/env bash
# Builds turn-bpf and runs every check: rustfmt, clippy, unit tests, BPF packet tests, the
# end-to-end tests with coturn in network namespaces, the Debian package (its contents and
# its systemd unit, also run by a real systemd in a container), and the load check on Debian's
# own kernels in a VM. CI runs this (.ci/run).
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
TEST_TIMEOUT=${TEST_TIMEOUT:-3000}
# The kernels step: under 3 minutes with the kernel packages cached in target/kernels/.
KERNELS_TIMEOUT=${KERNELS_TIMEOUT:-300}

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

# The Debian package (scripts/package.sh): what it holds, its control fields, and its systemd
# unit verified as the package installs it. `systemd-analyze verify --root` needs no running
# systemd (CI's machine may not boot with it): the package is unpacked into a scratch root that
# also gets the host's own units (the unit names coturn.service and the system targets), and any
# complaint (an unknown key, a missing executable, a bad dependency) fails the step.
check_package() {
    local deb root listing verify ok=1
    deb="$(scripts/package.sh | tail -n 1)" || return 1
    listing="$(dpkg-deb -c "$deb")" || return 1
    grep -Eq '^-rwxr-xr-x .* \./usr/bin/turn-bpf$' <<<"$listing" || {
        echo "package: no executable /usr/bin/turn-bpf"
        ok=0
    }
    local f
    for f in usr/lib/systemd/system/turn-bpf.service usr/lib/systemd/system/turn-bpf-pin-path.service \
        usr/lib/turn-bpf/turn-bpf-pin-path; do
        grep -Eq " \./${f//./\\.}$" <<<"$listing" || {
            echo "package: no /$f"
            ok=0
        }
    done
    [[ $(dpkg-deb -I "$deb" conffiles 2>/dev/null) == /etc/default/turn-bpf ]] || {
        echo "package: /etc/default/turn-bpf is not its one conffile"
        ok=0
    }
    local depends
    depends="$(dpkg-deb -f "$deb" Depends)"
    for dep in libc6 libelf1 zlib1g iproute2; do
        grep -Eq "(^|, )$dep( |,|$)" <<<"$depends" || {
            echo "package: Depends ($depends) lacks $dep"
            ok=0
        }
    done
    [[ $(dpkg-deb -f "$deb" Recommends) == coturn ]] || {
        echo "package: Recommends is not coturn"
        ok=0
    }
    root="$(mktemp -d)"
    dpkg-deb -x "$deb" "$root"
    "$root/usr/bin/turn-bpf" --version >/dev/null || {
        echo "package: its turn-bpf does not run"
        ok=0
    }
    grep -q '^TURN_BPF_ARGS=' "$root/etc/default/turn-bpf" || {
        echo "package: /etc/default/turn-bpf sets no TURN_BPF_ARGS"
        ok=0
    }
    # systemd ignores a capability name it does not know: setpriv (util-linux) refuses one.
    local caps
    caps="$(sed -n 's/^CapabilityBoundingSet=//p' "$root/usr/lib/systemd/system/turn-bpf.service")"
    caps="$(tr 'A-Z ' 'a-z\n' <<<"$caps" | sed -n 's/^cap_/+/p' | paste -sd, -)"
    if [[ -z $caps ]] || ! setpriv --bounding-set "-all,$caps" true; then
        echo "package: the unit's CapabilityBoundingSet is missing or names an unknown capability"
        ok=0
    fi
    cp -an /usr/lib/systemd/system/. "$root/usr/lib/systemd/system/"
    if ! verify="$(systemd-analyze verify --man=no --root="$root" turn-bpf.service \
        turn-bpf-pin-path.service 2>&1)" ||
        [[ -n $verify ]]; then
        echo "package: systemd-analyze verify turn-bpf.service turn-bpf-pin-path.service:"
        echo "$verify"
        ok=0
    fi
    rm -rf "$root"
    ((ok)) && echo "package: $deb ($(dpkg-deb -f "$deb" Depends))"
    ((ok))
}
step package check_package

# The packaged unit under a real systemd (scripts/unit-check.sh, README "Restarts and
# upgrades"): systemd 252 booted in a container in a lab's server namespace runs Debian's
# coturn.service and turn-bpf.service; a call through a channel keeps being relayed in XDP
# across `systemctl restart turn-bpf` and an upgrade of the package with nothing lost, a stop leaves the pins, detach and
# `dpkg -r` remove everything. About 35 s (the package is already built by the step above).
UNIT_TIMEOUT=${UNIT_TIMEOUT:-240}
step unit timeout --kill-after=30 "$UNIT_TIMEOUT" scripts/unit-check.sh

# Debian's own kernels booted in qemu, each running the load check (scripts/kernels.sh, README
# "Kernels"): it fails when a kernel the README calls supported does not load, attach and relay,
# or one it calls unsupported does. Under KVM where the host has a usable one, else under qemu's
# CPU emulation (about 15 s a kernel); KERNELS_ACCEL=kvm skips it where there is no usable KVM.
KERNELS_ACCEL=${KERNELS_ACCEL:-auto}
if [[ $KERNELS_ACCEL == kvm ]] && ! kvm_usable; then
    log "kernels: SKIPPED (KERNELS_ACCEL=kvm and no usable KVM: $(kvm_unusable_why))"
else
    step kernels timeout --kill-after=30 "$KERNELS_TIMEOUT" \
        env ACCEL="$KERNELS_ACCEL" scripts/kernels.sh
fi

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
