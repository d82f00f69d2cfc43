#!/usr/bin/env bash
# paths.sh - issue 12's path benchmark, in one invocation:
#   1. builds weft, weft-control, weftd and weft-paths-bench in release,
#   2. waits for a quiet machine (lab/lib.sh), then runs weft-paths-bench (crates/weft-lab/src/
#      bin/weft-paths-bench.rs) once: one set of namespaces (weft_lab::nat: control + relay on
#      "the internet", two easy-NAT sites, two hard-NAT sites), and in it, each measured N times:
#        raw underlay   iperf3 TCP 1 stream, a's LAN -> a host on the internet (through a's NAT)
#        direct         iperf3 TCP 1 stream through the tunnel, a <-> b (easy NATs), direct path
#        relay          iperf3 TCP 1 stream through the tunnel, c <-> d (hard NATs), via the relay,
#                       with control's process CPU (the relay is embedded) per relayed Gbit
#        up             a fresh node behind an easy NAT: `weft up` exit, first ICMP reply through
#                       the tunnel, direct path to b (seconds after `weft up` started)
#   3. prints key=value lines and a markdown table (also in DIR/result.txt).
#
# usage (as root, from anywhere in a clone): bench/paths.sh [-n N] [-t SECS] [-o DIR]
#   -n N      runs of each measurement (default 3; median [min-max] shown)
#   -t SECS   iperf3 duration (default 10)
#   -o DIR    where the output goes (default: a new mktemp -d directory, printed at the end)
# env: WEFT_BIN_DIR=/dir with weft, weft-control, weftd and weft-paths-bench skips the build;
#      LAB_QUIET_WAIT_MAX etc. as in lab/lib.sh.
#
# Everything runs in the run's network namespaces (198.18.0.0/15), torn down at exit. The
# machine's cores are shared by both ends, the NAT routers and the relay: compare rows of one run.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
# shellcheck source=lab/lib.sh
. "$BENCH_DIR/lab/lib.sh"
LAB_LOG_TAG=paths
REPS=3
SECS=10
OUT=

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while getopts "n:t:o:h" opt; do
    case $opt in
    n) REPS=$OPTARG ;;
    t) SECS=$OPTARG ;;
    o) OUT=$OPTARG ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { log "run as root (namespaces, nftables, TUN)"; exit 1; }
OUT=${OUT:-$(mktemp -d /tmp/paths-bench.XXXXXX)}
mkdir -p "$OUT"

if [ -z "${WEFT_BIN_DIR:-}" ]; then
    log "cargo build --release -p weft -p weft-control -p weftd -p weft-lab --bin weft-paths-bench (+ the three daemons)"
    (cd "$REPO" && cargo build --release -q -p weft -p weft-control -p weftd &&
        cargo build --release -q -p weft-lab --bin weft-paths-bench)
    export WEFT_BIN_DIR=$REPO/target/release
fi
for b in weft weft-control weftd weft-paths-bench; do
    [ -x "$WEFT_BIN_DIR/$b" ] || { log "$WEFT_BIN_DIR/$b missing"; exit 1; }
done

{
    echo "date=$(date -u +%FT%TZ) host=$(hostname) cpus=$NCPU kernel=$(uname -r)"
    echo "commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "loadavg_before=$(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/result.txt"
wait_quiet
"$WEFT_BIN_DIR/weft-paths-bench" -n "$REPS" -t "$SECS" 2> "$OUT/stderr.txt" | tee -a "$OUT/result.txt"
echo "loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/result.txt"
log "results in $OUT"
