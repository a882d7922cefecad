#!/usr/bin/env bash
# Real TimescaleDB for the tests: Debian trixie's postgresql-17-timescaledb (Apache edition) in a
# chroot, since this Debian release does not package it. Idempotent: reuses the root, the cluster
# and a running server. Run as root.
set -euo pipefail

ROOT=${HAZARDWATCH_TSDB_ROOT:-/var/tmp/hazardwatch-ci/trixie}
PORT=${HAZARDWATCH_TSDB_PORT:-5433}
DATA=/var/lib/hazardwatch-tsdb          # inside the root
PGBIN=/usr/lib/postgresql/17/bin        # inside the root

say() { printf '== %s\n' "$*"; }
die() { printf 'timescaledb.sh: %s\n' "$*" >&2; exit 1; }

answers() { pg_isready -q -h 127.0.0.1 -p "$PORT" 2>/dev/null; }

check_extension() {
    # a probe database of this run's own: parallel runs (several worktrees) never race on one name
    local probe="hw_tsdb_probe_$$"
    psql -q -X -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL \
        || die "server on port $PORT answers but CREATE EXTENSION timescaledb failed"
CREATE DATABASE $probe;
\\c $probe
CREATE EXTENSION timescaledb;
\\c postgres
DROP DATABASE $probe;
SQL
}
[ "$(id -u)" = 0 ] || die "run as root (it uses debootstrap and chroot)"
command -v pg_isready >/dev/null || die "pg_isready missing: apt-get install postgresql-client"

if answers; then
    check_extension
    say "TimescaleDB already running on 127.0.0.1:$PORT"
    exit 0
fi

if [ ! -x "$ROOT$PGBIN/postgres" ] || ! ls "$ROOT"/usr/lib/postgresql/17/lib/timescaledb*.so >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || {
        say "installing debootstrap"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    # An interrupted earlier attempt leaves a partial root: unmount and start again.
    for m in proc dev; do mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m"; done
    rm -rf "$ROOT"
    mkdir -p "$(dirname "$ROOT")"
    # Use the mirror this machine's apt already uses (debootstrap's own default otherwise).
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    say "building a Debian trixie root with postgresql-17-timescaledb in $ROOT (about a minute)"
    debootstrap --variant=minbase --include=postgresql-17,postgresql-17-timescaledb trixie "$ROOT" $mirror \
        >"$(dirname "$ROOT")/debootstrap.log" 2>&1 \
        || die "debootstrap failed; see $(dirname "$ROOT")/debootstrap.log"
fi

mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
mountpoint -q "$ROOT/dev" || mount --bind /dev "$ROOT/dev"
mkdir -p "$ROOT$DATA" "$ROOT/run/postgresql"
chroot "$ROOT" chown postgres:postgres "$DATA" /run/postgresql

if [ ! -s "$ROOT$DATA/PG_VERSION" ]; then
    say "initialising the TimescaleDB cluster"
    chroot --userspec=postgres:postgres "$ROOT" "$PGBIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 \
        --locale=C.UTF-8 >/dev/null || die "initdb failed"
fi

say "starting TimescaleDB on 127.0.0.1:$PORT"
rm -f "$ROOT$DATA/postmaster.pid"  # stale after a reboot; a live server would have answered above
chroot --userspec=postgres:postgres "$ROOT" env HOME=/var/lib/postgresql "$PGBIN/pg_ctl" -D "$DATA" \
    -l "$DATA/server.log" -w -t 60 \
    -o "-p $PORT -c listen_addresses=127.0.0.1 -c shared_preload_libraries=timescaledb -c max_connections=300 -c timescaledb.telemetry_level=off" \
    start >/dev/null || die "server did not start; see $ROOT$DATA/server.log"
for _ in $(seq 60); do answers && break; sleep 0.5; done
answers || die "server did not answer on $PORT; see $ROOT$DATA/server.log"
check_extension
say "TimescaleDB ready on 127.0.0.1:$PORT ($(psql -X -qAt -h 127.0.0.1 -p "$PORT" -U postgres -c 'SELECT version()' | cut -d, -f1))"
