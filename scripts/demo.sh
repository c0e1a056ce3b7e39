#!/usr/bin/env bash
# The demo: on a fresh Debian 12 machine, install what is missing, build, bring the lab up, run
# coturn's own test client (turnutils_uclient -> coturn -> turnutils_peer) once through coturn
# alone and once with turn-bpf attached, print the two side by side, and take the lab down.
#
#   scripts/demo.sh                           # as root; about a minute
#   CLIENTS=20 MESSAGES=5000 scripts/demo.sh  # as root
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SCRIPT=demo.sh
# shellcheck source=scripts/common.sh
source scripts/common.sh
require_root "it installs packages, loads BPF and builds network namespaces"

LAB=${LAB:-tbdemo}
CLIENTS=${CLIENTS:-10}    # turnutils_uclient sessions
MESSAGES=${MESSAGES:-3000} # datagrams per session, each way
LENGTH=${LENGTH:-200}     # bytes per datagram
INTERVAL=${INTERVAL:-1}   # ms between datagrams of one session
export LAB

install_packages
keep_coturn_service_off
require_cargo
log "building (cargo build --release)"
cargo build --release --quiet
BIN=$PWD/target/release/turn-bpf

WORK=$(mktemp -d)
PEER_PID=
AGENT_PID=
cleanup() {
    set +e # every step runs, whatever the one before did
    if [[ -n $AGENT_PID ]]; then
        kill -INT "$AGENT_PID" 2>/dev/null
        wait "$AGENT_PID" 2>/dev/null
    fi
    if [[ -n $PEER_PID ]]; then
        kill "$PEER_PID" 2>/dev/null
        wait "$PEER_PID" 2>/dev/null
    fi
    scripts/lab.sh down >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

log "bringing the lab up (LAB=$LAB)"
scripts/lab.sh up >/dev/null
SRV=$LAB-srv CLI=$LAB-cli PEER=$LAB-peer
COTURN_PID=$(cat "/run/turn-bpf-lab/$LAB/turnserver.pid")
HZ=$(getconf CLK_TCK)

ip netns exec "$PEER" turnutils_peer -L 198.51.100.2 -p 3480 >/dev/null 2>&1 &
PEER_PID=$!
sleep 0.5

# coturn's CPU time so far, in ms (utime + stime from /proc/<pid>/stat).
coturn_cpu_ms() {
    awk -v hz="$HZ" '{ sub(/^.*\) /, ""); print int(($12 + $13) * 1000 / hz) }' \
        "/proc/$COTURN_PID/stat"
}
# UDP datagrams delivered to sockets in the server namespace (coturn's sockets).
srv_udp_in() {
    ip netns exec "$SRV" cat /proc/net/snmp | awk '/^Udp: [0-9]/ { print $2 }'
}

# run MODE: one uclient run; leaves "sent recv lost_pct cpu_ms srv_in relayed" in $WORK/MODE.
run() {
    local mode=$1 cpu0 cpu1 in0 in1 out relayed=0
    if [[ $mode == offload ]]; then
        ip netns exec "$SRV" "$BIN" --enable-forwarding turn0 relay0 >"$WORK/agent.log" 2>&1 &
        AGENT_PID=$!
        for _ in $(seq 100); do
            grep -q "offloading TURN port" "$WORK/agent.log" && break
            kill -0 "$AGENT_PID" 2>/dev/null || { cat "$WORK/agent.log"; exit 1; }
            sleep 0.1
        done
    fi
    cpu0=$(coturn_cpu_ms) in0=$(srv_udp_in)
    out=$(ip netns exec "$CLI" timeout 120 turnutils_uclient -u alice -w alice-secret \
        -e 198.51.100.2 -r 3480 -m "$CLIENTS" -n "$MESSAGES" -l "$LENGTH" -z "$INTERVAL" -c \
        192.0.2.1 2>&1)
    cpu1=$(coturn_cpu_ms) in1=$(srv_udp_in)
    if [[ $mode == offload ]]; then
        kill -INT "$AGENT_PID"
        wait "$AGENT_PID" || true
        AGENT_PID=
        relayed=$(awk '$1 == "RELAYED_TO_PEER" || $1 == "RELAYED_TO_CLIENT" { n += $2 } END { print n + 0 }' \
            "$WORK/agent.log")
    fi
    local sent recv lost
    sent=$(grep -o 'tot_send_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
    recv=$(grep -o 'tot_recv_msgs=[0-9]*' <<<"$out" | tail -1 | cut -d= -f2)
    lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%)' <<<"$out" | tail -1 |
        sed 's/.*(\(.*\)%)/\1/')
    echo "${sent:-0} ${recv:-0} ${lost:-?} $((cpu1 - cpu0)) $((in1 - in0)) $relayed" >"$WORK/$mode"
}

log "run 1: coturn alone ($CLIENTS sessions x $MESSAGES datagrams of $LENGTH bytes, each way)"
run coturn
log "run 2: coturn with turn-bpf attached"
run offload

read -r c_sent c_recv c_lost c_cpu c_in c_rel <"$WORK/coturn"
read -r o_sent o_recv o_lost o_cpu o_in o_rel <"$WORK/offload"
echo
printf '%-44s %14s %16s\n' "" "coturn alone" "with turn-bpf"
printf '%-44s %14s %16s\n' "datagrams sent / echoed back (uclient)" "$c_sent / $c_recv" "$o_sent / $o_recv"
printf '%-44s %13s%% %15s%%\n' "loss (uclient)" "$c_lost" "$o_lost"
printf '%-44s %14s %16s\n' "datagrams relayed in the kernel (XDP)" "$c_rel" "$o_rel"
printf '%-44s %14s %16s\n' "datagrams that reached coturn's sockets" "$c_in" "$o_in"
printf '%-44s %14s %16s\n' "coturn CPU time (ms)" "$c_cpu" "$o_cpu"
echo
echo "The agent's own report (counters on exit):"
sed -n '/turn-bpf counters:/,$p' "$WORK/agent.log"
