#!/usr/bin/env bash
# relay-bench.sh - relay throughput on loopback, in one invocation:
#   1. builds weft-relay and the relay-bench client in release,
#   2. runs, one after another, a relay on 127.0.0.1 and the bench client (crates/weft-relay/
#      examples/relay-bench.rs: client A sends one way to client B through the relay, packets of
#      SIZE bytes, at most WINDOW in flight (A paces itself on B's count, in-process: nothing
#      flows back through the relay), 1 s warm-up then SECS measured):
#        weft-plain   weft-relay, plain HTTP
#        weft-tls     weft-relay, TLS (test CA)
#        derper-tls   Tailscale's derper 1.82.5, TLS (same certificate), if WEFT_TAILSCALE_TOOLS
#                     points at it
#   3. prints a markdown table: packets/s and Gbit/s delivered to B (median of N runs, [min-max]),
#      the share of sent packets delivered, and the relay's CPU (all threads; 100 = one core).
#
# usage (from anywhere in a clone): bench/relay-bench.sh [-n N] [-t SECS] [-s SIZE] [-w WINDOW] [-o DIR]
#   -n N      runs per configuration (default 3)
#   -t SECS   measured seconds per run (default 10)
#   -s SIZE   packet size in bytes (default 1280, the tunnel MTU)
#   -w WINDOW packets in flight (default 256; 0 = open loop: send as fast as A's buffer drains,
#             and let the relay drop what B's side cannot take)
#   -o DIR    where raw results go (default: a new mktemp -d directory, printed at the end)
# env: WEFT_RELAY=/path and RELAY_BENCH=/path skip the build; WEFT_TAILSCALE_TOOLS (default
#      /work/shared/tools/tailscale-1.82.5); LAB_QUIET_WAIT_MAX etc. as in lab/lib.sh (each run
#      waits for an idle machine first).
#
# Everything stays on loopback. The bench client and the relay share the machine's cores: the
# numbers are what one box does with both ends and the relay on it, not a relay alone.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=lab/lib.sh
. "$BENCH_DIR/lab/lib.sh"
LAB_LOG_TAG=relay-bench
REPS=3
SECS=10
SIZE=1280
WINDOW=256
OUT=
TOOLS=${WEFT_TAILSCALE_TOOLS:-/work/shared/tools/tailscale-1.82.5}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while getopts "n:t:s:w:o:h" opt; do
    case $opt in
    n) REPS=$OPTARG ;;
    t) SECS=$OPTARG ;;
    s) SIZE=$OPTARG ;;
    w) WINDOW=$OPTARG ;;
    o) OUT=$OPTARG ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
OUT=${OUT:-$(mktemp -d /tmp/relay-bench.XXXXXX)}
mkdir -p "$OUT"

if [ -z "${WEFT_RELAY:-}" ] || [ -z "${RELAY_BENCH:-}" ]; then
    log "cargo build --release -p weft-relay --bin weft-relay --example relay-bench"
    (cd "$REPO" && cargo build --release -q -p weft-relay --bin weft-relay --example relay-bench)
fi
WEFT_RELAY=${WEFT_RELAY:-$REPO/target/release/weft-relay}
RELAY_BENCH=${RELAY_BENCH:-$REPO/target/release/examples/relay-bench}

"$RELAY_BENCH" --make-certs "$OUT/certs" --tls-name derp.test
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # PORT: wait up to 10 s for a listener on 127.0.0.1:PORT
    local i
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    log "nothing listens on 127.0.0.1:$1"
    return 1
}

SERVER_PID=
FLAGS=()
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap stop_server EXIT

# start_server CONFIG PORT: starts the relay of CONFIG in the background (SERVER_PID) and sets
# FLAGS to the bench client's flags for it.
start_server() {
    local config=$1 port=$2
    case $config in
    weft-plain)
        "$WEFT_RELAY" --listen "127.0.0.1:$port" --no-stun --key-file "$OUT/relay.key" \
            --admit-any-key-insecure >"$OUT/$config.server.log" 2>&1 &
        SERVER_PID=$!
        FLAGS=(--addr "127.0.0.1:$port")
        ;;
    weft-tls)
        "$WEFT_RELAY" --listen "127.0.0.1:$port" --no-stun --key-file "$OUT/relay.key" \
            --tls-cert "$OUT/certs/derp.test.crt" --tls-key "$OUT/certs/derp.test.key" \
            --admit-any-key-insecure >"$OUT/$config.server.log" 2>&1 &
        SERVER_PID=$!
        FLAGS=(--addr "127.0.0.1:$port" --tls-name derp.test --ca "$OUT/certs/ca.pem")
        ;;
    derper-tls)
        "$TOOLS/derper" -a "127.0.0.1:$port" --certmode manual --certdir "$OUT/certs" \
            --hostname derp.test -http-port -1 --stun=false >"$OUT/$config.server.log" 2>&1 &
        SERVER_PID=$!
        FLAGS=(--addr "127.0.0.1:$port" --tls-name derp.test --ca "$OUT/certs/ca.pem")
        ;;
    esac
}

CONFIGS=(weft-plain weft-tls)
if [ -x "$TOOLS/derper" ]; then
    CONFIGS+=(derper-tls)
else
    log "no $TOOLS/derper: skipping the derper comparison"
fi

{
    echo "date: $(date -u +%FT%TZ)"
    echo "uptime: $(uptime)"
    echo "nproc: $NCPU"
    echo "weft commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    [ -x "$TOOLS/derper" ] && echo "derper: $("$TOOLS/derper" --version 2>&1 | head -1)"
} >"$OUT/versions.txt"

: >"$OUT/summary.txt"
for config in "${CONFIGS[@]}"; do
    port=$(free_port)
    start_server "$config" "$port"
    wait_port "$port"
    for rep in $(seq "$REPS"); do
        wait_quiet
        t0=$(proc_ticks "$SERVER_PID")
        i0=$(idle_ticks)
        s0=$(now_ns)
        line=$("$RELAY_BENCH" "${FLAGS[@]}" --seconds "$SECS" --size "$SIZE" --window "$WINDOW")
        s1=$(now_ns)
        t1=$(proc_ticks "$SERVER_PID")
        i1=$(idle_ticks)
        wall=$(awk -v a="$s0" -v b="$s1" 'BEGIN{printf "%.3f", (b-a)/1e9}')
        cpu=$(pct "$t0" "$t1" "$wall")
        busy=$(busy_pct "$i0" "$i1" "$wall")
        echo "$config $rep relay_cpu_pct=$cpu machine_busy_pct=$busy $line" | tee -a "$OUT/summary.txt" >&2
    done
    stop_server
done

# The table: median [min-max] per configuration.
python3 - "$OUT/summary.txt" "$SIZE" "$WINDOW" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    config, _rep, cpu, busy, js = line.split(" ", 4)
    d = json.loads(js)
    d["cpu"] = float(cpu.split("=")[1]); d["busy"] = float(busy.split("=")[1])
    rows.setdefault(config, []).append(d)
def cell(vals, fmt):
    m = statistics.median(vals)
    s = fmt.format(m)
    if len(vals) > 1 and min(vals) != max(vals):
        s += " [" + fmt.format(min(vals)) + "-" + fmt.format(max(vals)) + "]"
    return s
print(f"| relay ({sys.argv[2]}-byte packets, one way, window {sys.argv[3]}) | packets/s | Gbit/s | delivered | relay CPU % | relay CPU-s per Gbit |")
print("|---|---|---|---|---|---|")
for config, ds in rows.items():
    per_gbit = [d["cpu"] / 100 / d["gbit_per_s"] if d["gbit_per_s"] else 0 for d in ds]
    print(f"| {config} | {cell([d['pps'] for d in ds], '{:,.0f}')} | {cell([d['gbit_per_s'] for d in ds], '{:.2f}')} "
          f"| {cell([100*d['delivered'] for d in ds], '{:.1f}')} % | {cell([d['cpu'] for d in ds], '{:.0f}')} "
          f"| {cell(per_gbit, '{:.2f}')} |")
EOF
log "raw results in $OUT"
