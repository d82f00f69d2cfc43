#!/usr/bin/env bash
# wg-bench.sh - Weft's WireGuard data-plane benchmark, in one invocation:
#   1. builds weftd in release (cargo build --release -p weftd),
#   2. runs, one after another in the same namespace pair (lab-a -> lab-b, see lab/README.md):
#        veth      no tunnel: the raw veth underlay, the ceiling
#        wg-go     Debian's wireguard-go on both sides
#        weftd     `weftd wg {if}` on both sides
#      each with iperf3 TCP 1 stream, iperf3 TCP -P 4 and ping RTT (lab/bench-wg.sh),
#   3. prints a markdown table: Gbit/s, the ratio weftd / wireguard-go, RTT and CPU use.
#
# usage (as root, from anywhere in a clone): bench/wg-bench.sh [-n N] [-t SECS] [-o DIR] [-x] [-u]
#   -n N      repetitions of every test (default 3; the median is shown, [min-max] if they differ)
#   -t SECS   iperf3 duration of each run (default 10, max 10)
#   -o DIR    where results go (default: a new `mktemp -d` directory, printed at the end)
#   -x        also the interop pairs weftd>wireguard-go and wireguard-go>weftd (1 run each)
#   -u        also iperf3 UDP at 500M and 1G (loss %, in DIR/summary.txt and DIR/table-full.md)
# env: everything lab/bench-wg.sh reads passes through (LAB_QUIET_WAIT_MAX, LAB_TUN_MTU,
#      WIREGUARD_GO, ...); WEFTD=/path/to/weftd skips the build and uses that binary;
#      LAB_LOCK_WAIT (default 1800 s): how long to wait (per try, 5 tries) for another bench on
#      this machine to end.
#
# Output: the table on stdout; DIR/summary.txt (one bench-wg.sh result line per config),
# DIR/table.md (this table), DIR/table-full.md (lab/mktable.sh, all columns), DIR/versions.txt
# and one sub-directory of raw logs per config.
#
# Numbers from a shared or different machine are not comparable: compare rows of one run. The
# bench waits for an idle machine before each test and retries disturbed runs (lab/lib.sh).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
LAB=$BENCH_DIR/lab
REPS=3
DUR=10
OUT=
CROSS=0
TESTS=tcp1,tcp4,ping

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while getopts "n:t:o:xuh" opt; do
    case $opt in
        n) REPS=$OPTARG ;;
        t) DUR=$OPTARG ;;
        o) OUT=$OPTARG ;;
        x) CROSS=1 ;;
        u) TESTS=tcp1,tcp4,udp,ping ;;
        h)
            usage
            exit 0
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || {
    usage >&2
    exit 2
}
log() { printf '[wg-bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

[ "$(id -u)" -eq 0 ] || die "run as root (network namespaces, TUN devices)"
for tool in ip iperf3 ping jq wg wireguard-go awk flock; do
    command -v "$tool" >/dev/null || die "missing tool: $tool (apt-get install wireguard-tools wireguard-go iperf3 iputils-ping jq iproute2)"
done
[ -n "$OUT" ] || OUT=$(mktemp -d -t "weft-wg-bench-$(date +%Y%m%d-%H%M%S).XXXXXX")
mkdir -p "$OUT"
log "results: $OUT"

# ------------------------------------------------------------------ 1. build
if [ -z "${WEFTD:-}" ]; then
    command -v cargo >/dev/null || die "cargo not found (or set WEFTD=/path/to/weftd)"
    log "building weftd (release)"
    (cd "$REPO" && cargo build --release -p weftd) >&2
    TARGET_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)
    WEFTD=$TARGET_DIR/release/weftd
fi
[ -x "$WEFTD" ] || die "weftd binary not found at $WEFTD"
WEFTD=$(cd "$(dirname "$WEFTD")" && pwd)/$(basename "$WEFTD")

{
    echo "date: $(date -Is)"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "kernel: $(uname -r)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') x $(nproc)"
    echo "weftd: $WEFTD"
    echo "wireguard-go: $(${WIREGUARD_GO:-wireguard-go} --version 2>/dev/null | head -1)"
    echo "iperf3: $(iperf3 --version | head -1)"
    echo "runs: n=$REPS t=${DUR}s tests=$TESTS"
    echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$OUT/versions.txt" >&2

# ------------------------------------------------------------------ 2. measure
# Namespace names unique to this run (the project's lab rule); lab/bench-wg.sh removes them on
# exit, and one bench per machine runs at a time (its lock), so the interface names can be fixed.
export LAB_NS_A=${LAB_NS_A:-wgb$$-a} LAB_NS_B=${LAB_NS_B:-wgb$$-b}
# Also tear them down here: a bench-wg.sh killed from outside cannot run its own cleanup.
trap '"$LAB/netns-pair.sh" down >/dev/null 2>&1 || true' EXIT
trap 'exit 130' INT TERM
export WG_CUSTOM_CMD="$WEFTD wg {if}"
unset WG_CUSTOM_CMD_B
CONFIGS=("veth raw" "wireguard-go wireguard-go" "weftd custom")
if ((CROSS)); then
    CONFIGS+=("weftd>wireguard-go custom wireguard-go" "wireguard-go>weftd wireguard-go custom")
fi
: >"$OUT/summary.txt"
: >"$OUT/load.txt"
for c in "${CONFIGS[@]}"; do
    read -r label impls <<<"$c"
    n=$REPS
    [[ $label == *">"* ]] && n=1
    dir=$OUT/$(tr -c 'A-Za-z0-9_.\n-' '_' <<<"$label")
    log "== $label"
    echo "$label $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/load.txt"
    # One bench per machine (lab/bench-wg.sh holds /run/lab-bench.lock while it runs): when
    # someone else's bench is on, wait for the lock and try again rather than fail.
    for attempt in 1 2 3 4 5; do
        flock -w "${LAB_LOCK_WAIT:-1800}" /run/lab-bench.lock true || true
        # Result line to $dir.line; the progress log both to the terminal and to $dir.err.
        set +e
        # shellcheck disable=SC2086 # impls is one or two words on purpose
        "$LAB/bench-wg.sh" -n "$n" -t "$DUR" -T "$TESTS" -o "$dir" -l "$label" $impls 2>&1 >"$dir.line" | tee "$dir.err" >&2
        rc=${PIPESTATUS[0]}
        set -e
        if ((rc == 0)); then
            cat "$dir.line" >>"$OUT/summary.txt"
            break
        fi
        if grep -q "another bench-wg.sh is running" "$dir.err" && ((attempt < 5)); then
            log "another lab bench took the machine first: waiting for it (attempt $attempt)"
            continue
        fi
        echo "impl=$label FAILED (see $dir)" >>"$OUT/summary.txt"
        log "$label FAILED, logs in $dir"
        break
    done
done

# ------------------------------------------------------------------ 3. table
"$LAB/mktable.sh" "$OUT/summary.txt" >"$OUT/table-full.md"
awk '
function get(k) { return (k in kv) ? kv[k] : "NA" }
function med(v) { split(v, m, /[][,]/); return m[1] + 0 }   # "med[min,max]" -> med
function cell(v,    m) {
    if (v == "NA" || v == "") return "n/a"
    if (split(v, m, /[][,]/) >= 3 && m[2] != m[3]) return m[1] " [" m[2] + 0 "-" m[3] + 0 "]"
    split(v, m, /[][,]/); return m[1]
}
/^impl=/ {
    delete kv
    for (i = 1; i <= NF; i++) { split($i, p, "="); kv[p[1]] = substr($i, length(p[1]) + 2) }
    n++; label[n] = kv["impl"]; failed[n] = ($0 ~ / FAILED/)
    t1[n] = get("tcp1_gbps"); t4[n] = get("tcp4_gbps"); rtt[n] = get("rtt_ms")
    c1[n] = get("cpu_tcp1_pct"); c4[n] = get("cpu_tcp4_pct"); h1[n] = get("host_tcp1_pct"); h4[n] = get("host_tcp4_pct")
    runs[n] = get("n") " x " get("t")
    if (get("CONTAMINATED_RUNS") != "NA") { runs[n] = runs[n] ", " get("CONTAMINATED_RUNS") " disturbed"; disturbed = 1 }
    if (label[n] == "wireguard-go" && !failed[n]) { base1 = t1[n]; base4 = t4[n] }
}
function ratio(v, b) {
    if (v == "NA" || b == "NA" || b == "" || med(b) == 0) return "-"
    return sprintf("%.2f", med(v) / med(b))
}
END {
    print "| config | TCP 1 stream Gbit/s | TCP -P 4 Gbit/s | ÷ wireguard-go (1 / -P 4) | ping RTT ms | CPU % tunnel daemons (1 / -P 4) | CPU % whole host (1 / -P 4) | runs |"
    print "|---|---|---|---|---|---|---|---|"
    for (i = 1; i <= n; i++) {
        if (failed[i]) { printf "| %s | FAILED |||||||\n", label[i]; continue }
        r = (label[i] == "veth") ? "-" : ratio(t1[i], base1) " / " ratio(t4[i], base4)
        printf "| %s | %s | %s | %s | %s | %s / %s | %s / %s | %s |\n", label[i], cell(t1[i]), cell(t4[i]), r, cell(rtt[i]),
            cell(c1[i]), cell(c4[i]), cell(h1[i]), cell(h4[i]), runs[i]
    }
    print ""
    print "CPU: % of one core (100 = one core; the host has " NCPU " cores). Tunnel daemons = both sides summed; veth has none."
    if (disturbed) print "Disturbed: runs during which other processes used a lot of CPU even after 3 attempts (see runs.tsv in the config directories); their numbers are not trustworthy."
}' NCPU="$(nproc)" "$OUT/summary.txt" | tee "$OUT/table.md"
{
    echo
    printf 'Load average (1 / 5 / 15 min, `uptime`) when each config started:'
    awk '{ printf " %s %s / %s / %s;", $1, $2, $3, $4 }' "$OUT/load.txt"
    echo " after the run: $(cut -d' ' -f1-3 /proc/loadavg | sed 's# # / #g')."
} | tee -a "$OUT/table.md"
log "results: $OUT (table.md, table-full.md, summary.txt, per-config logs)"
if grep -q ' FAILED' "$OUT/summary.txt"; then
    exit 1
fi
