#!/usr/bin/env bash
# Boots Debian's own kernels in a VM (qemu) and runs turn-bpf-kcheck inside each: the BPF
# object loaded with the agent's settings for every server profile, XDP attached to a veth pair
# in generic and native mode, the TC egress snooper, the two drop-counting tracepoints, and one
# ChannelData packet each way through BPF_PROG_TEST_RUN with the exact rewrite expected.
# README: "Kernels".
#
#   scripts/kernels.sh                                  # Debian 12's kernels (KERNELS below)
#   KERNELS="linux-image-6.1.0-57-amd64" scripts/kernels.sh     # one kernel, must pass
#   ACCEL=tcg scripts/kernels.sh                        # no KVM even where there is one
#
# KERNELS lists kernels as apt names packages (a kernel image package, or a metapackage
# resolved through its Depends; optionally with /release or =version), each with what the
# README says of it: `:supported` (the default: the check must pass) or `:unsupported` (the
# check must run and fail; a pass means the README and this list are out of date). The exit
# status is 0 when every kernel did what the list says.
#
# Packages are fetched with `apt-get download` into target/kernels/deb/ and unpacked with
# dpkg-deb into target/kernels/<package>/ (nothing is installed on the host); both are reused by
# later runs. The VM gets a small initramfs: busybox, the kcheck binary, iproute2's ip and tc,
# their shared libraries (ldd), and veth, sch_ingress and cls_bpf from the kernel's own modules.
# Its verdict comes back on the serial console as a line `KCHECK PASS <release>` or
# `KCHECK FAIL <release>: <why>`; each console log is kept in target/kernels/<package>.log.
# Every VM is killed after VM_TIMEOUT seconds at the latest, and when this script ends.
#
# Needs root; uses KVM when the host has it, else qemu's CPU emulation (ACCEL=auto|kvm|tcg).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCRIPT=kernels.sh
# shellcheck source=scripts/common.sh
source scripts/common.sh
require_root "it fetches kernel packages with apt-get and runs qemu with KVM"
install_packages

# Debian 12's kernel as of its last point release, and the one its security updates ship now:
# 6.1, whose verifier refuses xdp_turn (README: "Kernels").
KERNELS=${KERNELS:-"linux-image-amd64/bookworm linux-image-amd64"}
# Seconds a VM may run (boot, check, power off). Under TCG on the 2-core development machine:
# 11-24 s when the load fails, about 40 s when it passes (the verifier runs three times).
VM_TIMEOUT=${VM_TIMEOUT:-120}
VM_MEMORY=${VM_MEMORY:-512M}
# Modules the check needs when the kernel builds them as modules, in load order.
MODULES=(veth sch_ingress cls_bpf)

WORK=target/kernels
KCHECK=target/release/turn-bpf-kcheck

# Without a usable KVM (kvm_usable, scripts/common.sh) qemu emulates the CPU (TCG): the same
# check, a few times slower.
ACCEL=${ACCEL:-auto}
if [[ $ACCEL == auto ]]; then
    if kvm_usable; then
        ACCEL=kvm
    else
        ACCEL=tcg
        log "no usable KVM ($(kvm_unusable_why)): emulating the CPU (TCG)"
    fi
fi
case $ACCEL in
kvm) CPU=(-cpu host) ;;
tcg) CPU=(-cpu max) ;;
*)
    echo "$SCRIPT: ACCEL must be auto, kvm or tcg (not $ACCEL)" >&2
    exit 1
    ;;
esac
for tool in qemu-system-x86_64 busybox cpio; do
    command -v "$tool" >/dev/null || {
        echo "$SCRIPT: $tool not found (install_packages should have installed it)" >&2
        exit 1
    }
done
require_cargo
cargo build --release --quiet -p turn-bpf-testkit --bin turn-bpf-kcheck

mkdir -p "$WORK/deb"

# The VM runs under `timeout`, whose pid this is: a TERM to it reaches qemu, and qemu gets a KILL
# 5 s later if it is still there (--kill-after). The script's own end, also by a signal, does that.
QEMU_PID=
cleanup() {
    if [[ -n $QEMU_PID ]]; then
        kill -TERM "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# The kernel image package `$1` stands for: itself, or what the metapackage depends on.
resolve() {
    local spec="$1" name dep
    name="${spec%%[/=]*}"
    if [[ $name == linux-image-[0-9]* ]]; then
        echo "$spec"
        return
    fi
    dep="$(apt-cache depends "$spec" 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9][^ ]*\).*/\1/p' | head -n 1)"
    [[ -n $dep ]] || {
        echo "$SCRIPT: apt knows no kernel image behind $spec (apt-get update?)" >&2
        return 1
    }
    # A metapackage pinned to a release depends on the image of that same release.
    if [[ $spec == */* ]]; then
        echo "$dep/${spec#*/}"
    else
        echo "$dep"
    fi
}

# Fetch (once) and unpack (once) kernel package `$1`; prints the unpacked tree.
fetch() {
    local spec="$1" name deb tree
    name="${spec%%[/=]*}"
    tree="$WORK/$name"
    if [[ ! -f $tree/.unpacked ]]; then
        deb="$(find "$WORK/deb" -name "${name}_*.deb" | head -n 1)"
        if [[ -z $deb ]]; then
            log "fetching $spec" >&2
            (cd "$WORK/deb" && apt-get download -q -o APT::Sandbox::User=root "$spec" >&2) || {
                # A fresh machine may not have the package lists yet.
                apt-get update -q >&2
                (cd "$WORK/deb" && apt-get download -q -o APT::Sandbox::User=root "$spec" >&2)
            }
            deb="$(find "$WORK/deb" -name "${name}_*.deb" | head -n 1)"
        fi
        [[ -n $deb ]] || {
            echo "$SCRIPT: no package file for $spec" >&2
            return 1
        }
        rm -rf "$tree"
        dpkg-deb -x "$deb" "$tree"
        touch "$tree/.unpacked"
    fi
    echo "$tree"
}

# Copy executable `$1` into root `$2` at `$3`, with every shared library ldd names.
add_binary() {
    local bin="$1" root="$2" dest="$3" lib
    install -D -m 0755 "$bin" "$root/$dest"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
        [[ -e $root/$lib ]] || install -D -m 0755 "$lib" "$root/$lib"
    done
}

# Copy module `$1` (and what it depends on, first) from the kernel tree `$2` into root `$3`,
# uncompressed, and append its file name to the load order in `$3/modules/order`.
add_module() {
    local mod="$1" moddir="$2" root="$3" file dep deps
    grep -qx "$mod.ko" "$root/modules/order" 2>/dev/null && return 0
    file="$(find "$moddir/kernel" -name "$mod.ko" -o -name "$mod.ko.xz" -o -name "$mod.ko.zst" | head -n 1)"
    if [[ -z $file ]]; then
        # Built in (modules.builtin lists kernel/…/name.ko), or the check will say what is missing.
        grep -q "/$mod.ko\$" "$moddir/modules.builtin" 2>/dev/null ||
            echo "$SCRIPT: module $mod is neither built into $moddir nor a module there" >&2
        return 0
    fi
    case "$file" in
    *.xz) xz -dc "$file" >"$root/modules/$mod.ko" ;;
    *.zst) zstd -qdc "$file" >"$root/modules/$mod.ko" ;;
    *) cp "$file" "$root/modules/$mod.ko" ;;
    esac
    deps="$(grep -a -o -m 1 'depends=[^[:cntrl:]]*' "$root/modules/$mod.ko" | head -n 1)"
    deps="${deps#depends=}"
    for dep in ${deps//,/ }; do
        add_module "${dep//-/_}" "$moddir" "$root"
    done
    echo "$mod.ko" >>"$root/modules/order"
}

# The VM's /init: mounts, modules, the check, power off. Everything it prints goes to ttyS0.
write_init() {
    cat >"$1/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
echo "kcheck: booted $(uname -r) in $(cut -d' ' -f1 /proc/uptime) s"
for m in $(cat /modules/order); do
    insmod "/modules/$m" || echo "kcheck: insmod $m failed"
done
[ -e /sys/kernel/btf/vmlinux ] || echo "kcheck: this kernel has no /sys/kernel/btf/vmlinux"
/kcheck || true
echo "kcheck: done after $(cut -d' ' -f1 /proc/uptime) s"
poweroff -f
EOF
    chmod 0755 "$1/init"
}

# Build the initramfs for the kernel tree `$1` into file `$2`.
make_initramfs() {
    local tree="$1" out="$2" root moddir mod
    moddir="$(find "$tree/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
    root="$(mktemp -d)"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,modules,var}
    ln -s ../run "$root/var/run"
    install -m 0755 "$(command -v busybox)" "$root/bin/busybox"
    add_binary "$KCHECK" "$root" /kcheck
    add_binary "$(command -v ip)" "$root" /usr/sbin/ip
    add_binary "$(command -v tc)" "$root" /usr/sbin/tc
    : >"$root/modules/order"
    for mod in "${MODULES[@]}"; do
        add_module "$mod" "$moddir" "$root"
    done
    mknod -m 0600 "$root/dev/console" c 5 1
    mknod -m 0666 "$root/dev/null" c 1 3
    write_init "$root"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
    rm -rf "$root"
}

# Boot kernel package `$1` and set VERDICT to the check's verdict line (empty when the console
# carried none). Returns 0 on PASS.
VERDICT=
check_kernel() {
    local spec="$1" name tree vmlinuz initrd logf t0 ms
    VERDICT=
    name="${spec%%[/=]*}"
    tree="$(fetch "$spec")" || return 1
    vmlinuz="$(find "$tree/boot" -name 'vmlinuz-*' | head -n 1)"
    [[ -n $vmlinuz ]] || {
        echo "$SCRIPT: $name has no vmlinuz" >&2
        return 1
    }
    initrd="$WORK/$name.initrd.gz"
    logf="$WORK/$name.log"
    make_initramfs "$tree" "$initrd"
    log "booting $name under $ACCEL ($(basename "$vmlinuz"), initramfs $(du -h "$initrd" | cut -f1))"
    t0=$(date +%s%N)
    : >"$logf"
    timeout --kill-after=5 "$VM_TIMEOUT" qemu-system-x86_64 \
        -machine "q35,accel=$ACCEL" "${CPU[@]}" -smp 1 -m "$VM_MEMORY" \
        -nodefaults -display none -no-reboot \
        -serial "file:$logf" \
        -kernel "$vmlinuz" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 oops=panic loglevel=4" &
    QEMU_PID=$!
    wait "$QEMU_PID" || true
    QEMU_PID=
    ms=$((($(date +%s%N) - t0) / 1000000))
    VERDICT="$(tr -d '\r' <"$logf" | grep -E '^KCHECK (PASS|FAIL)' | tail -n 1 || true)"
    tr -d '\r' <"$logf" | grep -E '^kcheck: ' || true
    log "$name: the VM ran $((ms / 1000)).$((ms % 1000 / 100)) s (console: $logf)"
    if [[ $VERDICT == "KCHECK PASS "* ]]; then
        return 0
    fi
    if [[ -z $VERDICT ]]; then
        log "$name: no verdict on the console within $VM_TIMEOUT s; its last lines:"
        tr -d '\r' <"$logf" | tail -n 30
    else
        # What libbpf said, once each, with the end of the first verifier log (the refusal).
        tr -d '\r' <"$logf" | awk '
            /-- BEGIN PROG LOAD LOG --/ { inlog = 1; n = 0; next }
            /-- END PROG LOAD LOG --/ {
                if (!shown++) {
                    print "  ... the verifier log ends:"
                    for (i = (n > 8 ? n - 8 : 0); i < n; i++) print "  " tail[i]
                }
                inlog = 0; next
            }
            inlog { tail[n++] = $0; next }
            /^libbpf: / && !seen[$0]++ { print }
        ' || true
        echo "$VERDICT"
    fi
    return 1
}

# Every kernel, checked against what the README says of it.
failed=()
summary=()
declare -A seen=()
for entry in $KERNELS; do
    spec="${entry%:*}"
    expect=supported
    [[ $entry == *:* ]] && expect="${entry##*:}"
    if [[ $expect != supported && $expect != unsupported ]]; then
        echo "$SCRIPT: $entry: say :supported or :unsupported" >&2
        exit 1
    fi
    pkg="$(resolve "$spec")" || {
        failed+=("$spec")
        continue
    }
    name="${pkg%%[/=]*}"
    [[ -n ${seen[$name]:-} ]] && continue
    seen[$name]=1
    check_kernel "$pkg" && rc=0 || rc=$?
    verdict="${VERDICT:-no verdict}"
    ((${#verdict} > 200)) && verdict="${verdict:0:200}..."
    case "$expect/$rc" in
    supported/0) summary+=("$name: passed (supported): $verdict") ;;
    unsupported/1)
        if [[ $verdict == "KCHECK FAIL "* ]]; then
            summary+=("$name: fails as the README says (unsupported): $verdict")
        else
            summary+=("$name: the check did not run ($verdict)")
            failed+=("$name")
        fi
        ;;
    unsupported/0)
        summary+=("$name: PASSED, but the README calls it unsupported: update README \"Kernels\" and KERNELS in $SCRIPT")
        failed+=("$name")
        ;;
    *)
        summary+=("$name: FAILED (supported): $verdict")
        failed+=("$name")
        ;;
    esac
done
for line in "${summary[@]}"; do
    log "$line"
done
if ((${#failed[@]})); then
    log "FAILED: ${failed[*]}"
    exit 1
fi
log "every kernel did what the README says"
