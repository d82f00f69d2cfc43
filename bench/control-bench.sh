#!/usr/bin/env bash
# control-bench.sh - weft-control under N simulated nodes: runs weft-loadgen REPS times with the
# same arguments, records the load average around each run, and prints one table of medians
# [min-max] over the runs.
#
# usage: bench/control-bench.sh [-r REPS] [-o DIR] [-T SECS] -- WEFT-LOADGEN-ARGS...
#   -r REPS   runs (default 3)
#   -o DIR    where the raw outputs go (default: a new `mktemp -d` directory)
#   -T SECS   wall-clock bound of each run (default 1200; the run is killed after it)
#   e.g. bench/control-bench.sh -- --nodes 1000
#        bench/control-bench.sh -- --nodes 5000 --policy-rules 500
#        eval "$(bash .ci/start-postgres.sh)"; bench/control-bench.sh -r 1 -- --nodes 1000 --db-url "$WEFT_TEST_PG_URL"
#          (PostgreSQL: every run needs an empty database; with -r > 1 pass a fresh one per run
#           with PG_FRESH=1, which creates loadgen_<pid>_<rep> next to the one in the URL)
# env: WEFT_BIN_DIR=DIR uses DIR/weft-loadgen and DIR/weft-control and skips the build.
#
# Output: DIR/run-K.txt (weft-loadgen's report), DIR/runs.tsv (one row per run), the table on
# stdout and in DIR/table.md. Loopback only; weft-loadgen bounds every phase in time.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)
REPS=3
OUT=
TMO=1200
while getopts "r:o:T:h" opt; do
    case $opt in
        r) REPS=$OPTARG ;;
        o) OUT=$OPTARG ;;
        T) TMO=$OPTARG ;;
        *)
            sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 2
            ;;
    esac
done
shift $((OPTIND - 1))
log() { printf '[control-bench %s] %s\n' "$(date +%T)" "$*" >&2; }

if [ -z "${WEFT_BIN_DIR:-}" ]; then
    log "building weft-control and weft-loadgen (release)"
    (cd "$REPO" && cargo build --release -p weft-control --bins) >&2
    WEFT_BIN_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/release
fi
LOADGEN=$WEFT_BIN_DIR/weft-loadgen
[ -x "$LOADGEN" ] || {
    log "ERROR: $LOADGEN not found"
    exit 1
}
[ -n "$OUT" ] || OUT=$(mktemp -d -t "weft-control-bench-$(date +%Y%m%d-%H%M%S).XXXXXX")
mkdir -p "$OUT"
{
    echo "date: $(date -Is)"
    echo "commit: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') x $(nproc)"
    echo "args: $*"
} | tee "$OUT/versions.txt" >&2

printf 'rep\tload_before\tload_after\treg_per_s\tinitial_s\tep_p50_ms\tep_p99_ms\tpol_ep_p50_ms\tpol_ep_p99_ms\tpolicy_set_ms\tpolicy_compile_ms\tpolicy_nodes\tpolicy_last_ms\tedit_set_ms\tedit_nodes\tedit_last_ms\tcpu_s\tpeak_rss_mib\n' >"$OUT/runs.tsv"
for rep in $(seq 1 "$REPS"); do
    args=("$@")
    if [ "${PG_FRESH:-0}" = 1 ]; then
        for i in "${!args[@]}"; do
            if [ "${args[$i]}" = --db-url ]; then
                base=${args[$((i + 1))]}
                db=loadgen_$$_$rep
                psql "$base" -qc "CREATE DATABASE $db" >&2
                args[$((i + 1))]=${base%/*}/$db
            fi
        done
    fi
    load0=$(cut -d' ' -f1 /proc/loadavg)
    log "run $rep/$REPS (load average $(cut -d' ' -f1-3 /proc/loadavg)): weft-loadgen ${*}"
    timeout "$TMO" "$LOADGEN" "${args[@]}" >"$OUT/run-$rep.txt" 2>"$OUT/run-$rep.err" || {
        log "run $rep failed (exit $?), see $OUT/run-$rep.txt and .err"
        tail -5 "$OUT/run-$rep.err" >&2
        continue
    }
    load1=$(cut -d' ' -f1 /proc/loadavg)
    export REP=$rep L0=$load0 L1=$load1
    perl -ne '
        BEGIN { %v = () }
        $v{reg} = $1 if /^register:.*\(([0-9.]+)\/s\)/;
        $v{init} = $1 if /^initial maps:.*full map after ([0-9.]+) s/;
        @v{qw(e50 e99)} = ($1, $2) if /^one node changes endpoints \(allow-all.*delta p50 ([0-9.]+) ms, p99 ([0-9.]+) ms/;
        @v{qw(p50 p99)} = ($1, $2) if /^one node changes endpoints \(policy.*delta p50 ([0-9.]+) ms, p99 ([0-9.]+) ms/;
        @v{qw(ps pc pn pl)} = ($1, $2, $3, $4) if /^policy set \(from allow-all\):.*after ([0-9.]+) ms \(compile ([0-9.]+) ms\); ([0-9]+) nodes.*the last after ([0-9.]+) ms/;
        @v{qw(es en el)} = ($1, $2, $3) if /^policy edit \(one rule\):.*after ([0-9.]+) ms .*; ([0-9]+) nodes.*the last after ([0-9.]+) ms/;
        @v{qw(cpu rss)} = ($2, $1) if /^server: RSS.*peak ([0-9.]+) MiB; CPU ([0-9.]+) s/;
        END {
            print join("\t", $ENV{REP}, $ENV{L0}, $ENV{L1}, map { $v{$_} // "NA" } qw(reg init e50 e99 p50 p99 ps pc pn pl es en el cpu rss)), "\n";
        }' "$OUT/run-$rep.txt" >>"$OUT/runs.tsv"
    grep -E '^(register:|initial maps:|one node|policy|server:)' "$OUT/run-$rep.txt" >&2 || true
done

# Median [min-max] per column over the runs.
awk -F'\t' '
NR == 1 { for (i = 1; i <= NF; i++) h[i] = $i; nf = NF; next }
{ n++; for (i = 1; i <= NF; i++) v[i, n] = $i }
function cell(i,    k, a, m, x, lo, hi) {
    m = 0
    for (k = 1; k <= n; k++) if (v[i, k] != "NA" && v[i, k] != "") a[++m] = v[i, k] + 0
    if (m == 0) return "n/a"
    for (x = 1; x <= m; x++) for (k = x + 1; k <= m; k++) if (a[k] < a[x]) { t = a[x]; a[x] = a[k]; a[k] = t }
    lo = a[1]; hi = a[m]
    med = (m % 2) ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    return (lo == hi) ? sprintf("%g", med) : sprintf("%g [%g-%g]", med, lo, hi)
}
END {
    print "| metric | median [min-max] over " n " run(s) |"
    print "|---|---|"
    for (i = 2; i <= nf; i++) { c = cell(i); if (c != "n/a") printf "| %s | %s |\n", h[i], c }
}' "$OUT/runs.tsv" | tee "$OUT/table.md"
log "results: $OUT"
