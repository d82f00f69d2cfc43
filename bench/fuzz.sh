#!/usr/bin/env bash
# bench/fuzz.sh - build and run Weft's libFuzzer targets (fuzz/, docs/FUZZING.md).
#
#   bash bench/fuzz.sh build                 build every target (instrumented, release)
#   bash bench/fuzz.sh list                  the targets
#   bash bench/fuzz.sh run TARGET [SECS]     fuzz one target (default 60 s) on fuzz/corpus/TARGET;
#                                            new inputs go to fuzz/work/TARGET (not committed)
#   bash bench/fuzz.sh long [SECS]           every target in turn for SECS each (default 600), nice'd;
#                                            a summary line per target in fuzz/work/summary.txt
#   bash bench/fuzz.sh ci [SECS]             what .ci/run does: build, replay every committed
#                                            corpus, then SECS (default 5) of fuzzing per target;
#                                            fails on any crash, leak, timeout or OOM
#   bash bench/fuzz.sh cmin TARGET           minimise fuzz/corpus/TARGET (plus fuzz/work/TARGET)
#                                            into fuzz/corpus/TARGET (libFuzzer -set_cover_merge=1)
#   bash bench/fuzz.sh repro TARGET FILE     run one input (a crash file) and show the panic
#
# The build needs no cargo-fuzz and no nightly: it passes cargo-fuzz's
# instrumentation flags (SanitizerCoverage: inline 8-bit counters, PC table,
# compare tracing) to stable rustc, without a sanitizer (cargo fuzz -s none).
# Every run has -rss_limit_mb, -malloc_limit_mb and -timeout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
FUZZ=$ROOT/fuzz
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN=$FUZZ/target/$TRIPLE/release
RSS_MB=${WEFT_FUZZ_RSS_MB:-2048}
MALLOC_MB=${WEFT_FUZZ_MALLOC_MB:-512}
TIMEOUT_S=${WEFT_FUZZ_TIMEOUT:-10}
LIMITS=(-rss_limit_mb="$RSS_MB" -malloc_limit_mb="$MALLOC_MB" -timeout="$TIMEOUT_S")

targets() { sed -n 's/^name = "\(.*\)"$/\1/p' "$FUZZ/Cargo.toml" | grep -v '^weft-fuzz$'; }

build() {
    local flags=(
        -Cpasses=sancov-module
        -Cllvm-args=-sanitizer-coverage-level=4
        -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
        -Cllvm-args=-sanitizer-coverage-pc-table
        -Cllvm-args=-sanitizer-coverage-trace-compares
        -Cllvm-args=-sanitizer-coverage-stack-depth
        --cfg fuzzing
    )
    # --target keeps the flags off build scripts and proc macros.
    RUSTFLAGS="${flags[*]}" cargo build --manifest-path "$FUZZ/Cargo.toml" --locked --release \
        --target "$TRIPLE" --bins
}

have() { [ -x "$BIN/$1" ] || { echo "no binary for target '$1' (bash bench/fuzz.sh build)" >&2; exit 2; }; }

# One libFuzzer run: fuzz TARGET SECS [extra args]. Prints libFuzzer's last stats line.
fuzz() {
    local t=$1 secs=$2; shift 2
    have "$t"
    mkdir -p "$FUZZ/corpus/$t" "$FUZZ/work/$t" "$FUZZ/artifacts/$t"
    "$BIN/$t" "${LIMITS[@]}" -max_total_time="$secs" -print_final_stats=1 \
        -artifact_prefix="$FUZZ/artifacts/$t/" "$@" "$FUZZ/work/$t" "$FUZZ/corpus/$t"
}

cmd=${1:-}
case "$cmd" in
build) build ;;
list) targets ;;
run)
    t=${2:?target}; secs=${3:-60}
    fuzz "$t" "$secs"
    ;;
long)
    secs=${2:-600}
    mkdir -p "$FUZZ/work"
    for t in $(targets); do
        log=$FUZZ/work/$t.log
        echo "=== $t: $secs s (log: $log)" >&2
        nice -n 10 "$0" run "$t" "$secs" >"$log" 2>&1 || echo "!!! $t failed; see $log" >&2
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
        printf '%-16s %4ss  execs %-12s %s\n' "$t" "$secs" "${runs:-?}" "${cov:-?}" | tee -a "$FUZZ/work/summary.txt"
    done
    ;;
ci)
    secs=${2:-5}
    build
    for t in $(targets); do
        have "$t"
        echo "=== fuzz $t: replay fuzz/corpus/$t, then fuzz for ${secs}s" >&2
        # libFuzzer first runs every committed input once, then mutates; new
        # inputs and any crash go to a temporary directory.
        tmp=$(mktemp -d)
        rc=0
        "$BIN/$t" "${LIMITS[@]}" -max_total_time="$secs" -print_final_stats=1 \
            -artifact_prefix="$tmp/" "$tmp" "$FUZZ/corpus/$t" >"$tmp.log" 2>&1 || rc=$?
        grep -E '^(INFO: seed corpus|#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units)' "$tmp.log" >&2 || true
        if [ "$rc" -ne 0 ]; then
            tail -n 60 "$tmp.log" >&2
            echo "fuzz target $t failed (exit $rc); reproduce with: bash bench/fuzz.sh repro $t FILE" >&2
            for f in "$tmp"/crash-* "$tmp"/leak-* "$tmp"/timeout-* "$tmp"/oom-*; do
                [ -e "$f" ] && { echo "input $f (base64):" >&2; base64 -w0 "$f" >&2; echo >&2; }
            done
            exit 1
        fi
        rm -rf "$tmp" "$tmp.log"
    done
    ;;
cmin)
    t=${2:?target}
    have "$t"
    new=$(mktemp -d)
    "$BIN/$t" "${LIMITS[@]}" -set_cover_merge=1 "$new" "$FUZZ/corpus/$t" "$FUZZ/work/$t" 2>&1 | tail -3
    rm -rf "$FUZZ/corpus/$t"
    mv "$new" "$FUZZ/corpus/$t"
    echo "fuzz/corpus/$t: $(ls "$FUZZ/corpus/$t" | wc -l) inputs, $(du -sh "$FUZZ/corpus/$t" | cut -f1)" >&2
    ;;
repro)
    t=${2:?target}; f=${3:?file}
    have "$t"
    RUST_BACKTRACE=1 "$BIN/$t" "${LIMITS[@]}" "$f"
    ;;
*)
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
esac
