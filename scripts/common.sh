# shellcheck shell=bash
# Shared by scripts/test.sh, scripts/demo.sh, scripts/bench.sh and scripts/package.sh (sourced,
# not run).
# Sets up PATH, installs the Debian packages the project needs, keeps Debian's own coturn
# service off (the lab runs its own coturn per namespace).

export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
PATH="$PATH:/usr/sbin:/sbin"
[[ -d ${HOME:-/root}/.cargo/bin ]] && PATH="${HOME:-/root}/.cargo/bin:$PATH"

# Build: clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config. Lab and tests: coturn iproute2
# ethtool tcpdump iputils-ping (not on a fresh machine image), and for the pion/turn lab the Go
# toolchain with pion/turn v2's sources (scripts/pion.sh builds them offline). Measurements:
# sysstat bpftool. The Debian package (scripts/package.sh): dpkg-dev (dpkg-shlibdeps, which
# cargo-deb runs for the package's Depends), binutils (strip), and systemd for
# `systemd-analyze verify`, which needs no running systemd; systemd-container (systemd-nspawn)
# boots a systemd for the unit check (scripts/unit-check.sh). Kernels (scripts/kernels.sh):
# qemu-system-x86, and busybox-static and cpio for the VM's initramfs.
PACKAGES=(clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config coturn iproute2 ethtool
    tcpdump iputils-ping golang-go golang-github-pion-turn.v2-dev sysstat bpftool prometheus
    dpkg-dev binutils systemd systemd-container qemu-system-x86 busybox-static cpio)

# cargo-deb, from crates.io at this version (scripts/package.sh).
CARGO_DEB_VERSION=3.8.0

SCRIPT=${SCRIPT:-${0##*/}}

log() { echo "=== $SCRIPT: $*"; }

require_root() {
    if [[ $(id -u) -ne 0 ]]; then
        echo "$SCRIPT: must run as root ($1)" >&2
        exit 1
    fi
}

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
    # Keep the Debian coturn service (and any other) from starting during the install.
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
        echo "$SCRIPT: apt-get failed ($rc) installing ${missing[*]}" >&2
        exit 1
    fi
    keep_coturn_service_off
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

# Whether qemu can use KVM to boot a distribution kernel: /dev/kvm that opens, backed by one of
# the hardware backends (kvm_intel, kvm_amd). Other backends cannot: under kvm_pvm (the nested
# "pagetable-based" KVM of some cloud sandboxes) Debian's kernel prints nothing after its
# real-mode setup (nor when booted through PVH) and never reaches its init.
kvm_usable() {
    [[ -z $(kvm_unusable_why) ]]
}

# Why kvm_usable is false (empty when it is true).
kvm_unusable_why() {
    if [[ ! -c /dev/kvm ]]; then
        echo "no /dev/kvm"
    elif ! { : <>/dev/kvm; } 2>/dev/null; then
        echo "/dev/kvm cannot be opened"
    elif [[ ! -d /sys/module/kvm_intel && ! -d /sys/module/kvm_amd ]]; then
        echo "/dev/kvm is not kvm_intel or kvm_amd (loaded: $(cd /sys/module && echo kvm* | tr ' ' ,))"
    fi
}

require_cargo() {
    command -v cargo >/dev/null || {
        echo "$SCRIPT: cargo not found (install the Rust toolchain, e.g. with rustup)" >&2
        exit 1
    }
}

# cargo-deb at CARGO_DEB_VERSION, installed with cargo unless that version is there already.
install_cargo_deb() {
    if [[ $(cargo deb --version 2>/dev/null) == "cargo-deb $CARGO_DEB_VERSION" ]]; then
        return 0
    fi
    log "installing cargo-deb $CARGO_DEB_VERSION (cargo install --locked)"
    cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
}
