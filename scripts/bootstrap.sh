#!/usr/bin/env bash
# Prepare this checkout for development, idempotently and quickly on reruns:
#   * PostgreSQL server binaries (Debian: postgresql-15) when none are installed,
#   * pg_cron for that PostgreSQL (Debian: postgresql-<major>-cron),
#   * .venv with `pip install -e '.[test,bench]'`, redone only when pyproject.toml
#     changed since the last install (stamp file inside .venv).
# System packages are installed only as root; otherwise the exact command is
# printed and the script fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
PYTHON=${PYTHON:-python3}
VENV="$ROOT/.venv"
STAMP="$VENV/.sa_pgdispatch-install-stamp"
PG_DEFAULT_MAJOR=15

log() { printf 'bootstrap: %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

APT_UPDATED=0
apt_install() {
    if ! is_root; then
        log "missing system packages; run as root:"
        log "  apt-get update && apt-get install -y $*"
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "no apt-get here: install $* (PostgreSQL server and pg_cron) by other means,"
        log "or set SA_PGDISPATCH_PG_BIN / SA_PGDISPATCH_TEST_DSN (see docs/testing.md)"
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# The PostgreSQL bin directory, as the test harness finds it (same order).
pg_bindir() {
    if [ -n "${SA_PGDISPATCH_PG_BIN:-}" ]; then
        echo "$SA_PGDISPATCH_PG_BIN"
        return
    fi
    local d
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        if [ -n "$d" ] && [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return
        fi
    fi
    # newest /usr/lib/postgresql/<major>/bin
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/postgres" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return
        fi
    done
}

# --- PostgreSQL server ------------------------------------------------------------
BINDIR=$(pg_bindir)
if [ -z "$BINDIR" ]; then
    if is_root; then
        # Do not let the package create and start a default cluster: the tests run
        # their own throwaway servers.
        mkdir -p /etc/postgresql-common/createcluster.d
        echo "create_main_cluster = false" \
            > /etc/postgresql-common/createcluster.d/50-sa-pgdispatch.conf
    fi
    apt_install "postgresql-$PG_DEFAULT_MAJOR"
    BINDIR=$(pg_bindir)
    [ -n "$BINDIR" ] || { log "PostgreSQL still not found after install"; exit 1; }
fi
MAJOR=$("$BINDIR/postgres" --version | sed -E 's/.*\(PostgreSQL\) ([0-9]+).*/\1/')

# --- pg_cron ----------------------------------------------------------------------
if [ -x "$BINDIR/pg_config" ]; then
    SHAREDIR=$("$BINDIR/pg_config" --sharedir)
else
    SHAREDIR="/usr/share/postgresql/$MAJOR"
fi
if [ ! -f "$SHAREDIR/extension/pg_cron.control" ]; then
    apt_install "postgresql-$MAJOR-cron"
    [ -f "$SHAREDIR/extension/pg_cron.control" ] \
        || { log "pg_cron still missing ($SHAREDIR/extension/pg_cron.control)"; exit 1; }
fi
log "PostgreSQL $MAJOR at $BINDIR, pg_cron present"

# --- virtualenv -------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
HAVE=$(cat "$STAMP" 2>/dev/null || true)
if [ "$WANT" != "$HAVE" ] || ! "$VENV/bin/python" -c 'import sa_pgdispatch' 2>/dev/null; then
    log "pip install -e '.[test,bench]'"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test,bench]"
    echo "$WANT" > "$STAMP"
else
    log "virtualenv up to date"
fi
