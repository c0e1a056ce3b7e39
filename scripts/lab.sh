#!/usr/bin/env bash
# The turn-bpf lab: three network namespaces and an unmodified TURN server (coturn, or pion/turn
# with TURN_SERVER=pion).
#
#   ${LAB}-cli   eth0   192.0.2.2/24    2001:db8:1::2/64   default routes via the server
#   ${LAB}-srv   turn0  192.0.2.1/24    2001:db8:1::1/64   the server listens here (:3478)
#                relay0 198.51.100.1/24 2001:db8:2::1/64   the server relays from here
#   ${LAB}-peer  eth0   198.51.100.2/24 2001:db8:2::2/64   default routes via the server
#
# IP forwarding stays off in the server namespace: the agent has its own option for that.
# Every veth end gets `tx off` (full UDP checksums) and `gro on` (NAPI, so XDP_REDIRECT into it is
# received): see shared/NOTES.md. LAB_VETH_DEFAULTS=1 leaves every veth as the kernel made it (tx
# checksum offload on, GRO off), as a container runtime does.
#
# Usage: scripts/lab.sh up [-- SERVER-ARGS...] | down | status
#   LAB=name (default tb) picks the namespace prefix and the state dir /run/turn-bpf-lab/$LAB/.
#   TURN_SERVER=coturn (default) or pion: which server runs in ${LAB}-srv. pion is the lab's own
#   main over pion/turn v2.1.0 (testkit/pion/, built offline by scripts/pion.sh), given the same
#   addresses, user and realm as coturn: -listen 192.0.2.1:3478 -listen [2001:db8:1::1]:3478
#   -relay 198.51.100.1 -users alice=alice-secret -realm turn-bpf.test, then SERVER-ARGS (its
#   flags, e.g. -channel-lifetime 5s -log-level debug; a flag given again wins). Only the IPv4
#   relay address is given: pion v2 allocates every relay as "udp4", so an IPv6 client gets an
#   IPv4 relayed address, as it does from coturn by default.
#   LAB_VERBATIM=1 passes COTURN-ARGS to coturn exactly as given (no `--opt value` -> `--opt=value`
#   rewrite, see join_option_values) and accepts coturn's "Unknown argument" alerts: for tests of
#   how coturn itself reads its command line.
#   LAB_VETH_DEFAULTS=1 leaves the veths' offload settings untouched (see above).
#   TURN_SERVER=none builds the namespaces only: the server is started by someone else
#   (scripts/unit-check.sh runs Debian's coturn.service under systemd in a container there).
set -euo pipefail

LAB="${LAB:-tb}"
LAB_VERBATIM="${LAB_VERBATIM:-0}"
LAB_VETH_DEFAULTS="${LAB_VETH_DEFAULTS:-0}"
TURN_SERVER="${TURN_SERVER:-coturn}"
# ip, ss and ethtool live in /usr/sbin, which a non-login root PATH may lack.
PATH="$PATH:/usr/sbin:/sbin"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CONF="$HERE/turnserver.conf"
STATE="/run/turn-bpf-lab/$LAB"
PIDFILE="$STATE/turnserver.pid"
LOGFILE="$STATE/turnserver.log"
ARGSFILE="$STATE/args"
NS_CLI="$LAB-cli"
NS_SRV="$LAB-srv"
NS_PEER="$LAB-peer"
ALL_NS=("$NS_CLI" "$NS_SRV" "$NS_PEER")
READY_SECS=10
KINDFILE="$STATE/server"
# /proc/<pid>/comm of each server (15 characters at most).
SERVER_COMMS=(turnserver pion-turn-serve)
STOP_SECS=5

say() { echo "lab[$LAB]: $*"; }
die() { echo "lab[$LAB]: error: $*" >&2; exit 1; }

usage() {
    echo "usage: [LAB=name] [LAB_VERBATIM=1] [LAB_VETH_DEFAULTS=1] [TURN_SERVER=coturn|pion|none] $0 up [-- SERVER-ARGS...] | down | status" >&2
    exit 2
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (network namespaces, veths and coturn need it)"
}

need_tools() {
    local missing=()
    command -v ip >/dev/null || missing+=("ip (package iproute2)")
    command -v ss >/dev/null || missing+=("ss (package iproute2)")
    command -v ethtool >/dev/null || missing+=("ethtool (package ethtool)")
    if [[ $TURN_SERVER == coturn ]]; then
        command -v turnserver >/dev/null || missing+=("turnserver (package coturn)")
    fi
    if ((${#missing[@]})); then
        die "missing: ${missing[*]}; install with apt-get (scripts/test.sh does)"
    fi
}

ns_exists() { [[ -e "/run/netns/$1" ]]; }

is_server_comm() {
    local comm c
    comm="$(cat "/proc/$1/comm" 2>/dev/null)" || return 1
    for c in "${SERVER_COMMS[@]}"; do
        [[ $comm == "$c" ]] && return 0
    done
    return 1
}

# The server's pid from the pid file, if that process is alive and is a TURN server (either).
coturn_pid() {
    local pid
    [[ -r $PIDFILE ]] || return 1
    pid="$(tr -dc '0-9' <"$PIDFILE")"
    [[ -n $pid ]] || return 1
    is_server_comm "$pid" || return 1
    echo "$pid"
}

# TURN server processes inside the server namespace (fallback when the pid file is gone).
coturn_pids_in_ns() {
    local pid
    ns_exists "$NS_SRV" || return 0
    for pid in $(ip netns pids "$NS_SRV" 2>/dev/null); do
        is_server_comm "$pid" && echo "$pid"
    done
    return 0
}

# Which server this lab runs: TURN_SERVER when bringing it up, the state file afterwards.
server_kind() {
    if [[ -r $KINDFILE ]]; then
        cat "$KINDFILE"
    else
        echo "$TURN_SERVER"
    fi
}

server_comm() {
    case "$(server_kind)" in
    pion) echo pion-turn-serve ;;
    *) echo turnserver ;;
    esac
}

coturn_listening() {
    local out
    out="$(ip netns exec "$NS_SRV" ss -Hulnp 2>/dev/null)" || return 1
    grep -q "192\\.0\\.2\\.1:3478 .*\"$(server_comm)\"" <<<"$out"
}

# Kill one pid: SIGTERM, a bounded wait, then SIGKILL.
stop_pid() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < STOP_SECS * 10; i++)); do
        [[ -d /proc/$pid ]] || return 0
        sleep 0.1
    done
    say "server pid $pid ignored SIGTERM for ${STOP_SECS}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 20; i++)); do
        [[ -d /proc/$pid ]] || return 0
        sleep 0.1
    done
    say "warning: pid $pid still exists after SIGKILL"
}

lab_down() {
    local pid pids=() ns
    if pid="$(coturn_pid)"; then
        pids+=("$pid")
    fi
    for pid in $(coturn_pids_in_ns); do
        [[ " ${pids[*]} " == *" $pid "* ]] || pids+=("$pid")
    done
    for pid in "${pids[@]}"; do
        say "stopping $(cat "/proc/$pid/comm" 2>/dev/null || echo server) (pid $pid)"
        stop_pid "$pid"
    done
    for ns in "${ALL_NS[@]}"; do
        if ns_exists "$ns"; then
            say "deleting namespace $ns"
            ip netns del "$ns"
        fi
    done
    rm -rf "$STATE"
}

veth_settings() {
    local ns="$1" dev="$2"
    [[ $LAB_VETH_DEFAULTS == 1 ]] && return 0
    ip netns exec "$ns" ethtool -K "$dev" tx off >/dev/null
    ip netns exec "$ns" ethtool -K "$dev" gro on >/dev/null
}

build_net() {
    local ns
    for ns in "${ALL_NS[@]}"; do
        say "creating namespace $ns"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
    # No forwarding in the server namespace, whatever a new namespace inherits.
    # (/proc/sys/net shows the namespace of the process reading it; no procps needed.)
    ip netns exec "$NS_SRV" sh -c 'echo 0 >/proc/sys/net/ipv4/ip_forward &&
        echo 0 >/proc/sys/net/ipv6/conf/all/forwarding'

    say "veth $NS_SRV/turn0 <-> $NS_CLI/eth0"
    ip -n "$NS_SRV" link add turn0 type veth peer name eth0 netns "$NS_CLI"
    say "veth $NS_SRV/relay0 <-> $NS_PEER/eth0"
    ip -n "$NS_SRV" link add relay0 type veth peer name eth0 netns "$NS_PEER"

    ip -n "$NS_SRV" addr add 192.0.2.1/24 dev turn0
    ip -n "$NS_SRV" addr add 2001:db8:1::1/64 dev turn0 nodad
    ip -n "$NS_SRV" addr add 198.51.100.1/24 dev relay0
    ip -n "$NS_SRV" addr add 2001:db8:2::1/64 dev relay0 nodad
    ip -n "$NS_CLI" addr add 192.0.2.2/24 dev eth0
    ip -n "$NS_CLI" addr add 2001:db8:1::2/64 dev eth0 nodad
    ip -n "$NS_PEER" addr add 198.51.100.2/24 dev eth0
    ip -n "$NS_PEER" addr add 2001:db8:2::2/64 dev eth0 nodad

    veth_settings "$NS_SRV" turn0
    veth_settings "$NS_SRV" relay0
    veth_settings "$NS_CLI" eth0
    veth_settings "$NS_PEER" eth0

    ip -n "$NS_SRV" link set turn0 up
    ip -n "$NS_SRV" link set relay0 up
    ip -n "$NS_CLI" link set eth0 up
    ip -n "$NS_PEER" link set eth0 up

    ip -n "$NS_CLI" route add default via 192.0.2.1
    ip -n "$NS_CLI" -6 route add default via 2001:db8:1::1
    ip -n "$NS_PEER" route add default via 198.51.100.1
    ip -n "$NS_PEER" -6 route add default via 2001:db8:2::1
}

# coturn 4.6.1 takes the values of its long options only as `--name=value`: `--name value` leaves
# the option at its default and logs "CONFIGURATION ALERT: Unknown argument: value". coturn has no
# positional arguments, so a word that follows an option is that option's value: join them.
join_option_values() {
    local out=() a
    while (($#)); do
        a="$1"
        shift
        if (($#)) && [[ $1 != -* ]]; then
            if [[ $a == --* && $a != *=* ]]; then
                a="$a=$1"
                shift
            elif [[ $a == -? ]]; then
                a="$a$1"
                shift
            fi
        fi
        out+=("$a")
    done
    printf '%s\n' "${out[@]}"
}

# What went wrong, from coturn's log: its complaints first (a bad option makes it print its whole
# usage text), then the last lines.
show_log() {
    {
        echo "--- complaints in $LOGFILE:"
        grep -iE 'unrecognized|unknown|alert|error|cannot|failed' "$LOGFILE" | head -n 10 || true
        echo "--- last lines of $LOGFILE:"
        tail -n 15 "$LOGFILE" || true
    } >&2
}

# A configuration alert that makes the lab refuse to start. A verbatim lab expects coturn's
# "Unknown argument" alerts (a value coturn took as a stray word): that is what it is for.
coturn_rejected() {
    if [[ $LAB_VERBATIM == 1 ]]; then
        [[ -n "$(grep 'CONFIGURATION ALERT' "$LOGFILE" | grep -v 'Unknown argument')" ]]
    else
        grep -q 'CONFIGURATION ALERT' "$LOGFILE"
    fi
}

start_coturn() {
    local pid i extra=()
    if [[ $LAB_VERBATIM == 1 ]]; then
        extra=("$@")
    elif (($#)); then
        mapfile -t extra < <(join_option_values "$@")
    fi
    say "starting coturn in $NS_SRV${extra[*]:+ with extra args: ${extra[*]}}"
    : >"$LOGFILE"
    # stdio goes to the log (never to our stdout: a caller capturing our output would wait for
    # coturn to exit); that is where getopt complaints about bad arguments end up.
    # shellcheck disable=SC2094 # coturn appends to the log it also writes itself: intended.
    ip netns exec "$NS_SRV" setsid turnserver -c "$CONF" \
        --pidfile "$PIDFILE" --log-file "$LOGFILE" --userdb "$STATE/turndb" \
        "${extra[@]}" </dev/null >>"$LOGFILE" 2>&1 &
    pid=$!
    for ((i = 0; i < READY_SECS * 10; i++)); do
        if coturn_rejected; then
            echo "lab[$LAB]: error: coturn rejected its configuration" >&2
            show_log
            stop_pid "$pid"
            return 1
        fi
        if coturn_listening; then
            # coturn writes its pid file itself; keep ours if it has not (yet).
            coturn_pid >/dev/null || echo "$pid" >"$PIDFILE"
            say "coturn is up (pid $(coturn_pid)), listening on 192.0.2.1:3478"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "lab[$LAB]: error: coturn is not listening on 192.0.2.1:3478 after ${READY_SECS}s" >&2
    else
        echo "lab[$LAB]: error: coturn exited before listening on 192.0.2.1:3478" >&2
    fi
    show_log
    kill -0 "$pid" 2>/dev/null && stop_pid "$pid"
    return 1
}

# The lab's pion/turn server (see the header), started like coturn: its output is the log, the
# pid file is ours (pion writes none).
start_pion() {
    local pid i
    say "starting pion/turn ($PION_BIN) in $NS_SRV${*:+ with extra args: $*}"
    : >"$LOGFILE"
    ip netns exec "$NS_SRV" setsid "$PION_BIN" \
        -listen 192.0.2.1:3478 -listen '[2001:db8:1::1]:3478' -relay 198.51.100.1 \
        -users alice=alice-secret -realm turn-bpf.test \
        "$@" </dev/null >>"$LOGFILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
    for ((i = 0; i < READY_SECS * 10; i++)); do
        if coturn_listening; then
            say "pion/turn is up (pid $pid), listening on 192.0.2.1:3478"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "lab[$LAB]: error: pion/turn is not listening on 192.0.2.1:3478 after ${READY_SECS}s" >&2
        stop_pid "$pid"
    else
        echo "lab[$LAB]: error: pion/turn exited before listening on 192.0.2.1:3478" >&2
    fi
    show_log
    return 1
}

lab_up() {
    local args_now="" ns complete=1
    if (($#)); then
        args_now="$(printf '%q ' "$@")"
    fi
    # a pion lab is not the same lab as a coturn one with the same arguments
    if [[ $TURN_SERVER == pion ]]; then
        args_now="pion: $args_now"
    fi
    # a verbatim lab is not the same lab as a rewritten one with the same arguments
    if [[ $LAB_VERBATIM == 1 ]]; then
        args_now="verbatim: $args_now"
    fi
    for ns in "${ALL_NS[@]}"; do
        ns_exists "$ns" || complete=0
    done
    if ((complete)) && coturn_pid >/dev/null && [[ -r $ARGSFILE ]] &&
        [[ "$(server_kind)" == "$TURN_SERVER" ]] &&
        [[ "$(cat "$ARGSFILE")" == "$args_now" ]] && coturn_listening; then
        say "already up (coturn pid $(coturn_pid)); nothing to do"
        return 0
    fi
    for ns in "${ALL_NS[@]}"; do
        if ns_exists "$ns" || [[ -d $STATE ]]; then
            say "a partial or different lab exists: recreating it"
            lab_down
            break
        fi
    done

    # Tear down whatever was built if any step fails (set -e exits through this trap).
    trap up_failed EXIT
    mkdir -p "$STATE"
    printf '%s' "$args_now" >"$ARGSFILE"
    echo "$TURN_SERVER" >"$KINDFILE"
    build_net
    case $TURN_SERVER in
    pion) start_pion "$@" ;;
    none) say "no server (TURN_SERVER=none): the namespaces only" ;;
    *) start_coturn "$@" ;;
    esac
    trap - EXIT
}

up_failed() {
    local rc=$?
    trap - EXIT
    echo "lab[$LAB]: error: up failed (exit $rc); tearing down" >&2
    lab_down || true
    exit "$rc"
}

lab_status() {
    local ns ok=0 pid
    for ns in "${ALL_NS[@]}"; do
        if ns_exists "$ns"; then
            echo "namespace $ns:"
            ip -n "$ns" -br link | sed 's/^/  link /'
            ip -n "$ns" -br addr | sed 's/^/  addr /'
        else
            echo "namespace $ns: missing"
            ok=1
        fi
    done
    if ns_exists "$NS_SRV"; then
        echo "forwarding in $NS_SRV:" \
            "ipv4=$(ip netns exec "$NS_SRV" cat /proc/sys/net/ipv4/ip_forward)" \
            "ipv6=$(ip netns exec "$NS_SRV" cat /proc/sys/net/ipv6/conf/all/forwarding)"
    fi
    local kind
    kind="$(server_kind)"
    if pid="$(coturn_pid)"; then
        echo "$kind: pid $pid, extra args: $(cat "$ARGSFILE" 2>/dev/null || echo '?')"
        echo "$kind: command line: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || echo '?')"
        echo "$kind: log $LOGFILE"
        if coturn_listening; then
            echo "$kind: listening on 192.0.2.1:3478"
        else
            echo "$kind: NOT listening on 192.0.2.1:3478"
            ok=1
        fi
    else
        echo "$kind: not running"
        ok=1
    fi
    if ((ok)); then
        echo "lab $LAB is not up"
    else
        echo "lab $LAB is up"
    fi
    return "$ok"
}

main() {
    local cmd="${1:-}"
    # LAB names namespaces and a directory that `down` removes: keep it plain.
    [[ $LAB =~ ^[A-Za-z0-9_-]{1,32}$ ]] || die "LAB must be 1-32 characters of [A-Za-z0-9_-]"
    [[ $LAB_VERBATIM == 0 || $LAB_VERBATIM == 1 ]] || die "LAB_VERBATIM must be 0 or 1"
    [[ $LAB_VETH_DEFAULTS == 0 || $LAB_VETH_DEFAULTS == 1 ]] ||
        die "LAB_VETH_DEFAULTS must be 0 or 1"
    [[ $TURN_SERVER == coturn || $TURN_SERVER == pion || $TURN_SERVER == none ]] ||
        die "TURN_SERVER must be coturn, pion or none"
    [[ -n $cmd ]] || usage
    shift
    case "$cmd" in
    up)
        if (($#)); then
            [[ $1 == -- ]] || usage
            shift
        fi
        need_root
        need_tools
        [[ -r $CONF ]] || die "missing $CONF"
        if [[ $TURN_SERVER == pion ]]; then
            # Built (or found up to date) before any namespace exists.
            PION_BIN="$("$HERE/pion.sh" build)" || die "building pion/turn failed (scripts/pion.sh)"
        fi
        lab_up "$@"
        ;;
    down)
        (($# == 0)) || usage
        need_root
        command -v ip >/dev/null || die "missing: ip (package iproute2)"
        lab_down
        say "down"
        ;;
    status)
        (($# == 0)) || usage
        need_root
        command -v ip >/dev/null || die "missing: ip (package iproute2)"
        lab_status
        ;;
    *) usage ;;
    esac
}

main "$@"
