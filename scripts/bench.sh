#!/usr/bin/env bash
# The turn-bpf benchmark, in one run: coturn alone, coturn with turn-bpf attached ("offload") and
# plain UDP through the baseline XDP forwarder (the floor under any relay in this lab), at the
# same offered loads (a sweep past coturn's saturation, plus flat out), modes alternated at every
# load so drift hits them all; then the BPF_PROG_TEST_RUN micro-benchmark: every relay path of
# bpf/ (chanX_to_udpY, udpX_to_chanY), an unrelated datagram, and the baseline forwarder of each
# family, each timed by the kernel's own run-time accounting, with every path's ratio to its
# output family's baseline (median of per-trial ratios, p10-p90 spread); then the scale
# benchmark: the client->peer path with the tables holding 1, 1,000 and 100,000 channels learned
# through the snooper, the same at 100,000 while the other CPU commits 1,000 grants a second,
# the state tables' memory at the default sizes, and the agent's own upkeep at 1,000, 10,000 and
# 100,000 allocations (its sweep code on real maps and relay sockets: summary.json's `scale`).
#
# Writes target/bench/summary.json, summary.md, chart.svg (delivered rate and CPU per datagram vs
# offered load) and runs.json (every point, raw), and prints the summary with the goals.
#
# Usage: scripts/bench.sh [--quick] [--server coturn|pion|both] [--out DIR] [-- MORE turn-load bench ARGS...]
#   --quick   the reduced sweep, micro-benchmark and scale runs (< 3 minutes with the build
#             done); the full run takes < 20 minutes. `-- --family 6` runs the load over IPv6
#             (coturn only).
#   --server  which TURN server to measure alone and with the agent: coturn (the default), pion
#             (pion/turn v2.1.0, the lab's own build: modes pion and pion_offload, the agent
#             started with --server pion), or both (all five modes in one sweep, pion in a
#             second lab: five modes in place of three).
#
# Needs root on Debian 12; installs the Debian packages it needs (as scripts/test.sh does). The lab
# is LAB (default tbb-bench: namespaces tbb-bench-cli/-srv/-peer, plus tbb-micro for the
# micro-benchmark and tbb-scale for the scale benchmark; with --server both also $LAB-pion for
# pion), torn down at the end, also on failure or Ctrl+C.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

SCRIPT=bench.sh
# shellcheck source=scripts/common.sh
source scripts/common.sh
require_root "it installs packages, loads BPF and builds network namespaces"

QUICK=0
SERVER=coturn
OUT=target/bench
EXTRA=()
while (($#)); do
    case "$1" in
    --quick) QUICK=1 ;;
    --server)
        [[ $# -ge 2 ]] || { echo "bench.sh: --server needs coturn, pion or both" >&2; exit 2; }
        case "$2" in
        coturn | pion | both) SERVER="$2" ;;
        *) echo "bench.sh: --server takes coturn, pion or both, not '$2'" >&2; exit 2 ;;
        esac
        shift
        ;;
    --out)
        [[ $# -ge 2 ]] || { echo "bench.sh: --out needs a directory" >&2; exit 2; }
        OUT="$2"
        shift
        ;;
    --)
        shift
        EXTRA=("$@")
        break
        ;;
    -h | --help)
        sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "bench.sh: unknown argument $1 (see --help)" >&2
        exit 2
        ;;
    esac
    shift
done

LAB="${LAB:-tbb-bench}"
# tbb-bench -> tbb-micro, as it always was; another LAB gets its own.
MICRO_NS="${LAB%-bench}-micro"
SCALE_NS="${LAB%-bench}-scale"
# The lab of each server measured: "LAB KIND" lines.
LABS=()
case "$SERVER" in
coturn) LABS=("$LAB coturn") ;;
pion) LABS=("$LAB pion") ;;
both) LABS=("$LAB coturn" "$LAB-pion pion") ;;
esac
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1800}
if ((QUICK)); then
    BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
else
    BENCH_TIMEOUT=${BENCH_TIMEOUT:-2400}
fi
# Both servers: five modes where one server has three.
[[ $SERVER == both ]] && BENCH_TIMEOUT=$((BENCH_TIMEOUT * 2))

# An agent the benchmark started is stopped by it; if the benchmark was killed, stop any turn-bpf
# still running in our server namespace (by pid, from that namespace's own process list).
stop_our_agents() {
    local pid lab="$1"
    [[ -e /run/netns/$lab-srv ]] || return 0
    for pid in $(ip netns pids "$lab-srv" 2>/dev/null); do
        if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == turn-bpf ]]; then
            log "stopping turn-bpf agent $pid left in $lab-srv"
            kill -INT "$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                [[ -d /proc/$pid ]] || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

cleanup() {
    local rc=$? entry name
    trap - EXIT INT TERM
    for entry in "${LABS[@]}"; do
        read -r name _ <<<"$entry"
        stop_our_agents "$name"
        log "tearing the lab $name down"
        LAB="$name" scripts/lab.sh down >/dev/null 2>&1 ||
            log "warning: LAB=$name scripts/lab.sh down failed"
    done
    ip netns del "$MICRO_NS" 2>/dev/null || true
    ip netns del "$SCALE_NS" 2>/dev/null || true
    ip netns del "$SCALE_NS-sw" 2>/dev/null || true
    exit "$rc"
}

install_packages
keep_coturn_service_off
require_cargo
log "$(cargo --version), $(uname -r), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')"

log "building (release)"
timeout --kill-after=30 "$BUILD_TIMEOUT" cargo build --release --workspace --bins

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for entry in "${LABS[@]}"; do
    read -r name kind <<<"$entry"
    log "bringing up the lab $name ($kind)"
    stop_our_agents "$name"
    LAB="$name" TURN_SERVER="$kind" scripts/lab.sh up
done

ARGS=(bench --lab "$LAB" --server "$SERVER" --micro-ns "$MICRO_NS" --scale-ns "$SCALE_NS" --out "$OUT"
    --agent target/release/turn-bpf)
[[ $SERVER == both ]] && ARGS+=(--pion-lab "$LAB-pion")
((QUICK)) && ARGS+=(--quick)
log "target/release/turn-load ${ARGS[*]} ${EXTRA[*]}"
timeout --kill-after=30 "$BENCH_TIMEOUT" target/release/turn-load "${ARGS[@]}" "${EXTRA[@]}"
log "results in $OUT/: summary.json summary.md chart.svg runs.json"
