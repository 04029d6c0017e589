#!/usr/bin/env bash
# The project's one test command (CI runs it through .ci/run).
#
#   scripts/test.sh                 everything: fmt, clippy, build, Rust tests, integration tests
#   scripts/test.sh -k outage       only the integration tests, arguments go to pytest
#   TEST_ONLY=rust scripts/test.sh  fmt, clippy, build, Rust tests (cargo nextest)
#   TEST_ONLY=pytest scripts/test.sh [pytest args]
#   TEST_ONLY=browser scripts/test.sh   the meeting page in headless Chromium
#
# Needs nothing running: it makes the Python venv (.venv), starts a throwaway
# PostgreSQL 15 cluster for the tests that use one (TCHAP_VISIO_TEST_POSTGRES_URL),
# and stops it, and every process the tests started, on exit.
# KEEP_TMP=1 keeps the temporary directory (PostgreSQL, Synapse and service logs).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [[ $# -gt 0 ]]; then
    TEST_ONLY="${TEST_ONLY:-pytest}"
fi
TEST_ONLY="${TEST_ONLY:-all}"
case "$TEST_ONLY" in
    all | rust | pytest | browser) ;;
    *) echo "TEST_ONLY must be all, rust, pytest or browser (got '$TEST_ONLY')" >&2; exit 2 ;;
esac
want() { [[ "$TEST_ONLY" == all || "$TEST_ONLY" == "$1" ]]; }

START=$SECONDS
TIMES=()
PHASE=""
phase_start() { PHASE="$1"; PHASE_T0=$SECONDS; echo "==> $PHASE"; }
phase_end() {
    local took=$((SECONDS - PHASE_T0))
    TIMES+=("$(printf '%-10s %4ds%s' "$PHASE" "$took" "${1:-}")")
    echo "<== $PHASE: ${took}s${1:-}"
    PHASE=""
}

TMP="$(mktemp -d -t tchap-visio-test.XXXXXX)"
chmod 755 "$TMP"  # the postgres user must reach its data directory inside
export TCHAP_VISIO_TEST_PIDFILE="$TMP/pids"
: >"$TCHAP_VISIO_TEST_PIDFILE"
PGBIN=/usr/lib/postgresql/15/bin
PGDIR="$TMP/postgres"

cleanup() {
    local rc=$?
    [[ -n "$PHASE" ]] && phase_end " (FAILED, exit $rc)"
    # Whatever the tests started and did not stop (pytest killed, for instance).
    if [[ -s "$TCHAP_VISIO_TEST_PIDFILE" ]]; then
        while read -r pid; do
            kill -9 "$pid" 2>/dev/null || true
        done <"$TCHAP_VISIO_TEST_PIDFILE"
    fi
    if [[ -f "$PGDIR/data/postmaster.pid" ]]; then
        runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "kept $TMP"
    else
        rm -rf "$TMP"
    fi
    if ((${#TIMES[@]})); then
        echo "==> times"
        printf '    %s\n' "${TIMES[@]}"
        echo "    total      $((SECONDS - START))s"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A clean CI clone gains nothing from incremental state, which roughly doubles the
# size of the project's own artefacts on a small disk.
if [[ -n "${CI:-}" ]]; then
    export CARGO_INCREMENTAL=0
fi

if want rust; then
    phase_start lint
    cargo fmt --check
    cargo clippy --all-targets --quiet -- -D warnings
    phase_end
fi

phase_start venv
bash scripts/setup-venv.sh
phase_end

phase_start postgres
if [[ ! -x "$PGBIN/initdb" ]]; then
    echo "PostgreSQL 15 is missing: installing it"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
fi
mkdir -p "$PGDIR"
chown postgres: "$PGDIR"
PGPORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$PGDIR/initdb.log"
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/log" -w \
    -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
    start >/dev/null
export TCHAP_VISIO_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
echo "PostgreSQL on 127.0.0.1:$PGPORT"
phase_end

if want pytest; then
    # Janus, for the load test's side-by-side leg (test_load_smoke.py).
    phase_start janus
    if ! command -v janus >/dev/null; then
        echo "Janus is missing: installing it"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends janus >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends janus >/dev/null; }
    fi
    phase_end
fi

phase_start build
if want rust; then
    cargo build --all-targets
else
    cargo build --bins
fi
phase_end

if want rust; then
    phase_start nextest
    cargo nextest run --no-tests=warn
    phase_end
fi

if want pytest || want browser; then
    # The page (web/dist), Chromium and the browser tests' node_modules: the browser
    # tests need them, and so does the bridge's integration test that drives the page.
    phase_start web
    bash scripts/build-web.sh
    TCHAP_VISIO_BIN="$ROOT/target/debug/tchap-visio" bash scripts/test-browser.sh --prepare
    phase_end
fi

if want pytest; then
    # Runs after the page build; among the tests, test_openapi_conformance.py starts the
    # service and runs schemathesis against it with docs/openapi.json (seeded, ~1 min).
    phase_start pytest
    export TCHAP_VISIO_BIN="$ROOT/target/debug/tchap-visio"
    .venv/bin/pytest tests/integration -x -q --basetemp="$TMP/pytest" "$@"
    phase_end
fi

if want browser; then
    phase_start browser
    export TCHAP_VISIO_BIN="$ROOT/target/debug/tchap-visio"
    bash scripts/test-browser.sh
    phase_end
fi
