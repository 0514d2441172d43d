#!/usr/bin/env bash
# The test command (make test): the whole suite on the default server (Debian's
# PostgreSQL 15 + pg_cron 1.4.2, libpq mode), then the tests marked `cron` (those that
# touch workers, schedules, roles or pg_cron's API) on the trees that managed services
# run: PostgreSQL 15 + pg_cron 1.6.7 in libpq and in background-worker mode, and
# PostgreSQL 18 + pg_cron 1.6.7. The trees are built (or reused) first, by
# scripts/build-test-trees.sh, before any server starts: its apt step may upgrade the
# system's PostgreSQL packages.
#
# Without ../shared/vendor (a developer machine) the pg_cron 1.6.7 runs are skipped with
# the reason; with CI=true they are required. Arguments go to every pytest run.
# SA_PGDISPATCH_MATRIX=default|managed|all (default all) picks the runs.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
MATRIX=${SA_PGDISPATCH_MATRIX:-all}

log() { printf 'test-matrix: %s\n' "$*" >&2; }

declare -A BIN
if [ "$MATRIX" != default ]; then
    trees_out=$(scripts/build-test-trees.sh)
    status=$?
    if [ "$status" -eq 3 ]; then
        log "SKIPPED the pg_cron 1.6.7 / PostgreSQL 18 runs: no upstream sources (../shared/vendor"
        log "or \$SA_PGDISPATCH_VENDOR is missing); only PostgreSQL 15 + pg_cron 1.4.2 is tested"
        MATRIX=default
    elif [ "$status" -ne 0 ]; then
        log "building the pg_cron 1.6.7 test trees failed (exit $status)"
        exit "$status"
    else
        while read -r tag name bin; do
            [ "$tag" = TREE ] && BIN[$name]=$bin
        done <<< "$trees_out"
    fi
fi

results=()
failed=0
run() {  # run NAME ENV... -- PYTEST_ARGS...
    local name=$1; shift
    local envs=()
    while [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    log "== $name"
    local started=$SECONDS out
    out=$(mktemp)
    env "${envs[@]}" "$PY" -m pytest -q "$@" 2>&1 | tee "$out"
    local rc=${PIPESTATUS[0]}
    local last
    last=$(grep -E '^=*ERROR|[0-9]+ (passed|failed|error)' "$out" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    rm -f "$out"
    for kind in passed failed skipped error errors; do
        n=$(grep -oE "[0-9]+ $kind\b" <<< "$last" | head -n1 | cut -d' ' -f1)
        case "$kind" in
            errors) total[error]=$(( ${total[error]:-0} + ${n:-0} )) ;;
            *) total[$kind]=$(( ${total[$kind]:-0} + ${n:-0} )) ;;
        esac
    done
    results+=("$name: exit $rc in $((SECONDS - started)) s: $last")
    [ "$rc" -eq 0 ] || failed=1
}
declare -A total

if [ "$MATRIX" != managed ]; then
    run "PostgreSQL 15 + pg_cron 1.4.2 (Debian), libpq mode, all tests" \
        SA_PGDISPATCH_CRON_MODE=libpq -- "$@"
fi
if [ "$MATRIX" != default ]; then
    pg15=${BIN[pg15-cron1.6.7]:?no pg15-cron1.6.7 tree}
    pg18=${BIN[pg18-cron1.6.7]:?no pg18-cron1.6.7 tree}
    run "PostgreSQL 15 + pg_cron 1.6.7, libpq mode, cron tests" \
        SA_PGDISPATCH_PG_BIN="$pg15" SA_PGDISPATCH_CRON_MODE=libpq -- -m cron "$@"
    run "PostgreSQL 15 + pg_cron 1.6.7, background-worker mode, cron tests" \
        SA_PGDISPATCH_PG_BIN="$pg15" SA_PGDISPATCH_CRON_MODE=bgw -- -m cron "$@"
    run "PostgreSQL 18 + pg_cron 1.6.7, libpq mode, cron tests" \
        SA_PGDISPATCH_PG_BIN="$pg18" SA_PGDISPATCH_CRON_MODE=libpq -- -m cron "$@"
fi

log "summary:"
for line in "${results[@]}"; do log "  $line"; done
# one closing line over every run
failures=$(( ${total[failed]:-0} + ${total[error]:-0} ))
echo "matrix: ${total[passed]:-0} passed, $failures failed, ${total[skipped]:-0} skipped"
exit "$failed"
