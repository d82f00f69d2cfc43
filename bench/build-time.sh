#!/usr/bin/env bash
# build-time.sh - issue 19's question: is the README demo quicker to reach with the dev profile
# (`cargo build --workspace --bins`, what the README runs) or with --release? Builds both from
# scratch in a clean clone of HEAD, one after the other, each into its own fresh target dir, and
# prints wall time, CPU time (user+sys) and the load average around each. The crates must be
# downloaded already (run any cargo build first): this measures compiling, not the network.
# Wall time depends on what else runs; CPU time much less: compare CPU time across loaded runs.
#
# usage (from anywhere in a clone): bench/build-time.sh [profile...]   (default: dev release)
# env: NICE (default 0) runs cargo under `nice -n $NICE`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(dev release)
work=$(mktemp -d /tmp/weft-build-time.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q . "$work/src"
cd "$work/src"
printf '| profile | wall s | CPU s (user+sys) | load before | load after |\n|---|---|---|---|---|\n'
for p in "${profiles[@]}"; do
    flag=()
    [ "$p" = dev ] || flag=(--profile "$p")
    before=$(cut -d' ' -f1-3 /proc/loadavg)
    /usr/bin/time -o "$work/time" -f '%e %U %S' nice -n "${NICE:-0}" \
        env CARGO_TARGET_DIR="$work/target-$p" cargo build -q --locked --workspace --bins "${flag[@]}"
    read -r wall user sys <"$work/time"
    after=$(cut -d' ' -f1-3 /proc/loadavg)
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.0f", u + s }')
    printf '| %s | %.0f | %s | %s | %s |\n' "$p" "$wall" "$cpu" "$before" "$after"
    rm -rf "$work/target-$p"
done
