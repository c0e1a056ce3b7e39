#!/usr/bin/env bash
# The packaged unit under a real systemd: restarts keep every call (README: "Restarts and
# upgrades"), a stop leaves the pins, detach and package removal take everything away.
#
#   scripts/unit-check.sh [DEB]     # as root; DEB: built with scripts/package.sh when not given
#
# This machine's PID 1 need not be systemd, so a container boots one: systemd-nspawn --boot over
# an overlay whose lower layer is this machine's own / (its systemd 252, Debian's coturn and its
# coturn.service; the overlay's upper layer is a tmpfs, thrown away afterwards), in the server
# namespace of a lab (LAB=tbt-unit TURN_SERVER=none scripts/lab.sh up: namespaces only). Inside:
# dpkg -i DEB, `systemctl start coturn turn-bpf` with TURN_BPF_ARGS="--enable-forwarding turn0
# relay0" and the unit's default --pin-path. From the lab's client namespace turnutils_uclient
# allocates and binds a channel and sends RUN_MSGS datagrams at 50/s to turnutils_peer (an echo)
# in the peer namespace; about 5 s in `systemctl restart turn-bpf`, 5 s later an upgrade
# (`dpkg -i` of the same package: its postinst restarts the agent). It passes only if:
#   - before the restart, the agent relays the call in XDP (the positive control);
#   - after each, a new agent process swapped its programs under the pinned links and learned
#     no allocation anew, and XDP relayed on after the last;
#   - the client lost nothing, and every datagram of the call each way was relayed in XDP;
#   - `systemctl stop` leaves the pins and the XDP programs; `turn-bpf detach --pin-path`
#     removes them, the snooper, and restores forwarding;
#   - after a fresh start, `dpkg -r turn-bpf` (prerm) leaves no pin, no XDP, no snooper.
# Everything (container, overlay, tmpfs, lab, peer) goes on exit, also on failure or SIGTERM.
# Nothing touches this machine's own interfaces: the container shares the lab's server
# namespace only. About 40 s.
set -euo pipefail

DEB=""
if (($#)); then
    DEB="$(realpath -e "$1")" || exit 1
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCRIPT=unit-check.sh
# shellcheck source=scripts/common.sh
source scripts/common.sh
require_root "network namespaces, a container, BPF"

LAB=tbt-unit
NS_SRV=$LAB-srv
NS_CLI=$LAB-cli
NS_PEER=$LAB-peer
PIN=/sys/fs/bpf/turn-bpf
RUN_MSGS=${RUN_MSGS:-1000}
BOOT_SECS=60
WORK=""
NSPAWN_PID=""
LEADER=""
PEER_PID=""
CLIENT_PID=""
FAILS=0

fail() {
    echo "$SCRIPT: FAIL: $*" >&2
    FAILS=$((FAILS + 1))
}
die() {
    echo "$SCRIPT: error: $*" >&2
    exit 1
}

# Ends a process we started: SIGTERM, up to $2 s, then SIGKILL.
end_pid() {
    local pid=$1 secs=${2:-5} i
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# The container's init: nspawn's child named systemd (an intermediate child comes first).
container_init() {
    ps --ppid "$NSPAWN_PID" -o pid=,comm= | awk '$2 == "systemd" { print $1; exit }' || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    end_pid "$CLIENT_PID" 2
    end_pid "$PEER_PID" 2
    if [[ -n $NSPAWN_PID ]]; then
        # The container's init survives a killed nspawn: know it first.
        [[ -n $LEADER ]] || LEADER="$(container_init)"
        # nspawn turns SIGTERM into a clean poweroff of the container.
        end_pid "$NSPAWN_PID" 15
        # Killing a PID namespace's init kills everything in it.
        [[ -n $LEADER ]] && kill -KILL "$LEADER" 2>/dev/null
    fi
    if [[ -n $WORK ]]; then
        mountpoint -q "$WORK/root" && umount "$WORK/root"
        mountpoint -q "$WORK" && umount "$WORK"
        rmdir "$WORK"
    fi
    LAB=$LAB scripts/lab.sh down >/dev/null
    if ((rc == 0 && FAILS == 0)); then
        log "passed"
    else
        log "FAILED (exit $rc, $FAILS check(s) failed)"
        ((rc)) || rc=1
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

for tool in systemd-nspawn turnutils_uclient turnutils_peer; do
    command -v "$tool" >/dev/null || die "missing $tool (scripts/common.sh installs it)"
done

if [[ -z $DEB ]]; then
    DEB="$(scripts/package.sh | tail -n 1)"
fi
[[ -f $DEB ]] || die "no package at $DEB"

# In the container, as root (its mount, PID, UTS, IPC and network namespaces: systemctl talks
# to the container's systemd).
in_ct() { nsenter -t "$LEADER" -m -u -i -n -p "$@"; }

LAB=$LAB TURN_SERVER=none scripts/lab.sh up >/dev/null

# The container's root: this machine's / under a throw-away upper layer on a tmpfs (an upper
# layer inside the lower one would overlap it).
WORK="$(mktemp -d /tmp/tbt-unit.XXXXXX)"
mount -t tmpfs -o size=256m,mode=0700 tbt-unit "$WORK"
mkdir "$WORK/upper" "$WORK/work" "$WORK/root"
mount -t overlay tbt-unit -o "lowerdir=/,upperdir=$WORK/upper,workdir=$WORK/work" "$WORK/root"
R=$WORK/root
systemd-id128 new >"$R/etc/machine-id"
# Maintainer scripts may start and restart units in there (dpkg's try-restart on upgrade).
printf '#!/bin/sh\nexit 0\n' >"$R/usr/sbin/policy-rc.d"
chmod 755 "$R/usr/sbin/policy-rc.d"
# Boot to the basic system only: coturn and turn-bpf are started by hand below.
cat >"$R/etc/systemd/system/tbt-unit.target" <<'EOF'
[Unit]
Description=turn-bpf unit check: the basic system only
Requires=basic.target
After=basic.target
AllowIsolate=yes
EOF
# Debian's coturn.service reads /etc/turnserver.conf: the lab's addresses, the journal as log.
cat >"$R/etc/turnserver.conf" <<'EOF'
listening-ip=192.0.2.1
listening-port=3478
relay-ip=198.51.100.1
min-port=49152
max-port=65535
lt-cred-mech
realm=turn-bpf.test
user=alice:alice-secret
fingerprint
no-tls
no-dtls
no-cli
no-multicast-peers
no-software-attribute
simple-log
log-file=stdout
EOF
mkdir -p "$R/root/unit-check"
cp "$DEB" "$R/root/unit-check/"
DEB_IN=/root/unit-check/${DEB##*/}

# SYSTEMD_SECCOMP=0: nspawn's own system call filter forbids bpf(); the unit's filter still
# applies inside. --capability=all: the container's root may hand the unit what it asks for.
# Where PID 1 is systemd, nspawn runs in a scope of its own with its cgroup delegated (not tried:
# this machine's PID 1 is not systemd); elsewhere it makes its cgroups itself.
SCOPE=()
if [[ -d /run/systemd/system ]]; then
    SCOPE=(systemd-run --scope --quiet --collect -p Delegate=yes --unit="tbt-unit-$$")
fi
log "booting systemd in a container in $NS_SRV"
SYSTEMD_SECCOMP=0 setsid "${SCOPE[@]}" systemd-nspawn -q -D "$R" --boot --register=no --keep-unit \
    --capability=all --network-namespace-path="/run/netns/$NS_SRV" --machine=tbt-unit \
    --console=pipe -- systemd.unit=tbt-unit.target </dev/null >"$WORK/console.log" 2>&1 &
NSPAWN_PID=$!
state=""
for ((i = 0; i < BOOT_SECS * 5; i++)); do
    kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/console.log"; die "systemd-nspawn exited"; }
    LEADER="$(container_init)"
    if [[ -n $LEADER ]]; then
        state="$(in_ct systemctl is-system-running 2>/dev/null)" || true
        [[ $state == running || $state == degraded ]] && break
    fi
    sleep 0.2
done
[[ $state == running || $state == degraded ]] ||
    die "the container's systemd is not up after ${BOOT_SECS} s (state '$state')"
log "container up: $(in_ct systemctl --version | head -n 1), state $state"
# nspawn leaves /proc/sys read-only when it is given a network namespace (it makes /proc/sys/net
# writable only for one it creates): the same here, for --enable-forwarding and detach.
in_ct sh -c 'mount --bind /proc/sys/net /proc/sys/net && mount -o remount,bind,rw /proc/sys/net'

in_ct dpkg -i "$DEB_IN" >/dev/null
in_ct sed -i 's/^TURN_BPF_ARGS=.*/TURN_BPF_ARGS="--enable-forwarding turn0 relay0"/' \
    /etc/default/turn-bpf
in_ct systemctl start coturn
in_ct systemctl is-active -q coturn || die "coturn.service did not start"

# The agent's status, as an operator reads it in the container.
status() { in_ct turn-bpf status --bindings 2>&1 || true; }
counter() { awk -v n="$2" '$1 == n { print $2; f = 1 } END { if (!f) print 0 }' <<<"$1"; }
agent_pid() { sed -n 's/.*: process \([0-9]*\) (turn-bpf).*/\1/p' <<<"$1" | head -n 1; }
xdp_on() { ip -n "$NS_SRV" -d link show "$1" | grep -q 'prog/xdp'; }
snooper_on() { tc -n "$NS_SRV" filter show dev turn0 egress | grep -q 'handle 0x7462'; }
wait_agent() {
    local s i
    for ((i = 0; i < 150; i++)); do
        s="$(status)"
        if [[ -n $(agent_pid "$s") ]] && [[ $s == *turn0* ]] && [[ $s == *relay0* ]]; then
            return 0
        fi
        sleep 0.2
    done
    in_ct journalctl -u turn-bpf -u turn-bpf-pin-path --no-pager -n 30 >&2
    return 1
}

in_ct systemctl start turn-bpf
wait_agent || die "turn-bpf.service did not attach"
in_ct systemctl is-active -q turn-bpf || die "turn-bpf.service is not active"
[[ $(in_ct stat -f -c %t /sys/fs/bpf) == cafe4a11 ]] || fail "/sys/fs/bpf is not a bpffs"
for pin in layout xdp_turn0 xdp_relay0; do
    in_ct test -e "$PIN/$pin" || fail "nothing pinned at $PIN/$pin"
done
log "turn-bpf.service up, pinned under $PIN: $(in_ct ls "$PIN" | paste -sd' ')"

# The call: one allocation, one channel, RUN_MSGS datagrams each way over RUN_MSGS/50 s.
ip netns exec "$NS_PEER" turnutils_peer -L 198.51.100.2 -p 3480 </dev/null \
    >"$WORK/peer.log" 2>&1 &
PEER_PID=$!
sleep 0.5
ip netns exec "$NS_CLI" timeout 120 turnutils_uclient -u alice -w alice-secret \
    -e 198.51.100.2 -r 3480 -m 1 -c -l 100 -z 20 -n "$RUN_MSGS" 192.0.2.1 </dev/null \
    >"$WORK/client.log" 2>&1 &
CLIENT_PID=$!

# Before the restart: the positive control (relayed in XDP, both ways).
before=""
for ((i = 0; i < 200; i++)); do
    before="$(status)"
    (($(counter "$before" RELAYED_TO_PEER) >= 100 && $(counter "$before" RELAYED_TO_CLIENT) >= 100)) &&
        break
    sleep 0.1
done
log "before the restart:"
grep -E 'process|RELAYED_TO|LEARN_ALLOC|channel 0x' <<<"$before" || true
(($(counter "$before" RELAYED_TO_PEER) >= 100)) ||
    fail "before the restart the agent relayed fewer than 100 datagrams in XDP (positive control)"
old_pid="$(agent_pid "$before")"

t0=$SECONDS
in_ct systemctl restart turn-bpf
wait_agent || fail "turn-bpf.service did not come back after the restart"
after="$(status)"
log "just after the restart ($((SECONDS - t0)) s):"
grep -E 'process|RELAYED_TO|LEARN_ALLOC|channel 0x' <<<"$after" || true
new_pid="$(agent_pid "$after")"
[[ -n $new_pid && $new_pid != "$old_pid" ]] ||
    fail "no new agent process after the restart (before $old_pid, after '$new_pid')"
journal="$(in_ct journalctl -u turn-bpf --no-pager -o cat)"
grep -q 'swapped the XDP program under the pinned link on turn0' <<<"$journal" ||
    fail "the new agent did not adopt the pinned link on turn0"
grep -q 'replaced the TC egress snooper.s program on turn0 in place' <<<"$journal" ||
    fail "the new agent did not replace the snooper in place"
(($(counter "$after" LEARN_ALLOC) == $(counter "$before" LEARN_ALLOC))) ||
    fail "allocations were learned anew across the restart"

# An upgrade (the same package again: prerm upgrade, then postinst's try-restart) does the same.
sleep 4
in_ct dpkg -i "$DEB_IN" >/dev/null
wait_agent || fail "turn-bpf.service did not come back after the upgrade"
upgraded="$(status)"
log "just after dpkg -i (an upgrade):"
grep -E 'process|RELAYED_TO|LEARN_ALLOC' <<<"$upgraded" || true
up_pid="$(agent_pid "$upgraded")"
[[ -n $up_pid && $up_pid != "$new_pid" ]] ||
    fail "no new agent process after the upgrade (before $new_pid, after '$up_pid')"
(($(in_ct journalctl -u turn-bpf --no-pager -o cat |
    grep -c 'swapped the XDP program under the pinned link on turn0') == 2)) ||
    fail "the agent after the upgrade did not adopt the pinned link on turn0"
(($(counter "$upgraded" LEARN_ALLOC) == $(counter "$before" LEARN_ALLOC))) ||
    fail "allocations were learned anew across the upgrade"

wait "$CLIENT_PID" || fail "turnutils_uclient failed (exit $?)"
CLIENT_PID=""
end="$(status)"
log "the call ended:"
grep -E 'process|RELAYED_TO|LEARN_ALLOC' <<<"$end" || true
grep -E 'tot_send_msgs=|Total lost' "$WORK/client.log" | tail -n 2
grep -Eq "tot_send_msgs=$RUN_MSGS, tot_recv_msgs=$RUN_MSGS( |\$)" "$WORK/client.log" ||
    fail "the client did not get all $RUN_MSGS echoes back"
grep -q 'Total lost packets 0 ' "$WORK/client.log" || fail "the client lost datagrams"
for c in RELAYED_TO_PEER RELAYED_TO_CLIENT; do
    after_restart=$(($(counter "$end" $c) - $(counter "$upgraded" $c)))
    ((after_restart >= 100)) || fail "$c grew by $after_restart only after the upgrade"
    # The counters are kept across the restart (the pinned stats map): the whole call.
    (($(counter "$end" $c) >= RUN_MSGS - 2)) ||
        fail "$c is $(counter "$end" $c): more than 2 of the $RUN_MSGS datagrams missed XDP"
done

# A stop leaves everything pinned and attached (the fast path gives up 5 s later).
in_ct systemctl stop turn-bpf
in_ct test -e "$PIN/xdp_turn0" || fail "systemctl stop removed the pins"
xdp_on turn0 || fail "systemctl stop removed the XDP program from turn0"
snooper_on || fail "systemctl stop removed the snooper"
log "after systemctl stop: $(in_ct ls "$PIN" | wc -l) pins, XDP and snooper on turn0"

# detach removes it all and restores forwarding.
in_ct turn-bpf detach --pin-path "$PIN" turn0 relay0
[[ -z $(in_ct ls -A "$PIN") ]] || fail "pins left after detach: $(in_ct ls "$PIN" | paste -sd' ')"
xdp_on turn0 && fail "an XDP program is left on turn0 after detach"
xdp_on relay0 && fail "an XDP program is left on relay0 after detach"
snooper_on && fail "the snooper is left on turn0 after detach"
[[ $(ip netns exec "$NS_SRV" cat /proc/sys/net/ipv4/conf/turn0/forwarding) == 0 ]] ||
    fail "forwarding on turn0 not restored by detach"
log "after detach: no pin, no XDP, no snooper, forwarding off"

# Removal of the package (prerm) does the same for every interface pinned there.
in_ct systemctl start turn-bpf
wait_agent || fail "turn-bpf.service did not start again"
in_ct dpkg -r turn-bpf >/dev/null
in_ct test -e "$PIN" && fail "$PIN left after dpkg -r"
xdp_on turn0 && fail "an XDP program is left on turn0 after dpkg -r"
snooper_on && fail "the snooper is left on turn0 after dpkg -r"
log "after dpkg -r: no pin, no XDP, no snooper"

((FAILS == 0))
