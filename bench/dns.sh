#!/usr/bin/env bash
# dns.sh - issue 13's MagicDNS benchmark: queries/s and p99 latency of the resolver at
# 100.100.100.100, side by side in one run with dnsmasq answering the same names.
#
# It runs the ignored e2e test `dns_e2e::dns_bench` (crates/weftd/tests/e2e/dns_e2e.rs): control
# and two weftd nodes in network namespaces (198.18.0.0/15 only), dnsmasq as the upstream on the
# underlay, and in node n1's namespace, dnsperf (Debian) against
#   tailnet_magicdns           MagicDNS, two tailnet names (A)
#   tailnet_dnsmasq_hosts      dnsmasq on 127.0.0.53 answering the same names from a hosts file
#   forwarded_magicdns         MagicDNS, 50 names it forwards to the upstream dnsmasq
#   forwarded_upstream_direct  the upstream dnsmasq asked directly over the underlay
# each twice: as fast as dnsperf goes (4 clients, 100 outstanding) for queries/s, and paced at
# DNS_BENCH_QPS (default 2000) for p99 latency.
#
# usage (as root, from anywhere in a clone): bench/dns.sh
# env: DNS_BENCH_SECS (default 5) per dnsperf run, DNS_BENCH_QPS (default 2000),
#      CARGO_PROFILE (default dev: the test profile the e2e binaries use; "release" for -r).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, TUN)" >&2; exit 1; }
command -v dnsperf >/dev/null || { echo "dnsperf missing (apt-get install dnsperf)" >&2; exit 1; }
command -v dnsmasq >/dev/null || { echo "dnsmasq missing (apt-get install dnsmasq)" >&2; exit 1; }
profile=()
[ "${CARGO_PROFILE:-dev}" = release ] && profile=(--release)
cargo build "${profile[@]}" -p weft -p weft-control >&2
echo "date=$(date -u +%FT%TZ) load=$(cut -d' ' -f1-3 /proc/loadavg) cores=$(nproc)"
WEFT_E2E=1 cargo test "${profile[@]}" -p weftd --test e2e -- --ignored --exact \
    dns_e2e::dns_bench --nocapture 2>&1 | sed -n 's/^DNSBENCH //p'
