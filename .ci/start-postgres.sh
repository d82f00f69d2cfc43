#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for the storage tests and prints the lines to
# eval, or stops one started earlier.
#
#   eval "$(bash .ci/start-postgres.sh)"        # start; exports WEFT_TEST_PG_URL, WEFT_TEST_PG_DIR
#   . .ci/start-postgres.sh                      # the same, when sourced (as .ci/run does)
#   bash .ci/start-postgres.sh stop "$WEFT_TEST_PG_DIR"   # stop that server, remove its files
#
# If the binaries are missing and we are root, `apt-get install postgresql` is
# run first (normally .ci/run has installed the package already).
#
# Uses the Debian `postgresql` package's binaries (/usr/lib/postgresql/<ver>/bin,
# newest version; override with PG_BIN=...). It never touches the Debian
# cluster: whether or not that one auto-started, this script runs its own
# cluster from `initdb` in a fresh temporary directory owned by the `postgres`
# user, listening only on 127.0.0.1 (first free port from 55432, override with
# WEFT_PG_PORT=...) and on a unix socket inside that directory. Stopping uses
# `pg_ctl stop` on that data directory, which signals only the postmaster
# whose pid file is in it.
#
# Everything except the export lines goes to stderr, so `eval "$(...)"` is safe.

# Sourced: run as a child (so no function or option leaks into the caller) and
# take over its exports.
if [[ "${BASH_SOURCE[0]}" != "${0}" ]]; then
    __weft_pg_exports=$(bash "${BASH_SOURCE[0]}" start) || return 1
    eval "$__weft_pg_exports"
    unset __weft_pg_exports
    return 0
fi

set -euo pipefail

log() { printf 'start-postgres: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pg_bins() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        if [[ -x "$d/initdb" ]]; then echo "$d"; fi
    done | sort -t/ -k5,5n | tail -n1
}

find_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        [[ -x "$PG_BIN/initdb" ]] || die "PG_BIN=$PG_BIN has no initdb"
        printf '%s\n' "$PG_BIN"
        return
    fi
    local best
    # The glob sorts lexically; pick the highest major version numerically.
    best=$(pg_bins)
    if [[ -z "$best" && $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        log "no PostgreSQL binaries; apt-get install postgresql"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive \
                 apt-get install -y -q --no-install-recommends postgresql >&2; } \
            || die "apt-get install postgresql failed"
        best=$(pg_bins)
    fi
    [[ -n "$best" ]] || die "no PostgreSQL binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)"
    printf '%s\n' "$best"
}

# Runs a command as the postgres user when we are root (initdb refuses root).
as_pg() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
    local bin port dir
    bin=$(find_bin)
    if [[ $(id -u) -eq 0 ]]; then
        id postgres >/dev/null 2>&1 || die "user 'postgres' does not exist (apt-get install postgresql)"
    fi
    port="${WEFT_PG_PORT:-55432}"
    local tries=0
    while port_busy "$port"; do
        port=$((port + 1)); tries=$((tries + 1))
        (( tries < 100 )) || die "no free port in ${WEFT_PG_PORT:-55432}..$port"
    done
    dir=$(mktemp -d /tmp/weft-pg.XXXXXX)
    chmod 0700 "$dir"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$dir"
    log "initdb in $dir/data ($bin)"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    log "starting on 127.0.0.1:$port"
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=300" \
        start >&2 || { cat "$dir/server.log" >&2 || true; die "pg_ctl start failed"; }
    local i=0
    until as_pg "$bin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; do
        i=$((i + 1)); (( i < 600 )) || die "server did not become ready"
        sleep 0.1
    done
    as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres weft >&2 || die "createdb failed"
    log "ready: postgres://postgres@127.0.0.1:$port/weft (stop: bash .ci/start-postgres.sh stop $dir)"
    printf 'export WEFT_TEST_PG_URL=%q\n' "postgres://postgres@127.0.0.1:$port/weft"
    printf 'export WEFT_TEST_PG_DIR=%q\n' "$dir"
}

stop() {
    local dir="${1:-${WEFT_TEST_PG_DIR:-}}" bin
    [[ -n "$dir" ]] || die "usage: $0 stop DIR (the WEFT_TEST_PG_DIR printed at start)"
    [[ "$dir" == /tmp/weft-pg.* && -d "$dir/data" ]] || die "$dir is not a directory this script created"
    bin=$(find_bin)
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >&2 || die "pg_ctl stop failed"
    fi
    rm -rf -- "$dir"
    log "stopped and removed $dir"
}

case "${1:-start}" in
    start) start ;;
    stop) stop "${2:-}" ;;
    *) die "usage: $0 [start | stop DIR]" ;;
esac
