#!/usr/bin/env bash
# Browser tests of the meeting page (tests/browser/): Debian's Chromium driven by
# playwright-core, tests on Node's built-in runner (node:test). scripts/test.sh calls it.
#
#   scripts/test-browser.sh                   every test file in tests/browser/
#   scripts/test-browser.sh meeting.test.mjs  only these files (relative to tests/browser/)
#   scripts/test-browser.sh --prepare         only install what the tests need, run none
#                                             (the bridge's pytest drives the page too)
#
# Idempotent; prepares what is missing and reuses the rest:
#   - /usr/bin/chromium (Debian's `chromium`, installed with apt-get when absent);
#   - nft (Debian's `nftables`, installed with apt-get when absent; tcp.test.mjs);
#   - tests/browser/node_modules (`npm ci`, only when package-lock.json changed);
#   - web/dist (scripts/build-web.sh when index.html is missing);
#   - .venv with LiveKit's Python SDK (scripts/setup-venv.sh, itself a no-op when current).
# Never builds the binary: $TCHAP_VISIO_BIN (default target/debug/tchap-visio) must exist.
# The tests start the binary (their own config, ports, SQLite), Chromium and the Python
# peer themselves, and stop them at the end. Screenshots go to target/browser-screenshots/.
# The join benchmark is separate: node tests/browser/bench-join.mjs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR="$ROOT/tests/browser"

export TCHAP_VISIO_BIN="${TCHAP_VISIO_BIN:-$ROOT/target/debug/tchap-visio}"
if [[ ! -x "$TCHAP_VISIO_BIN" ]]; then
    echo "test-browser: no tchap-visio binary at $TCHAP_VISIO_BIN: run \`cargo build\` (or set TCHAP_VISIO_BIN)" >&2
    exit 1
fi

if [[ ! -x /usr/bin/chromium ]]; then
    echo "test-browser: installing Debian's chromium" >&2
    SUDO=""
    [[ "$(id -u)" != 0 ]] && SUDO="sudo"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y chromium
fi

# tcp.test.mjs blocks UDP with an nftables rule inside a network namespace of its own
# (unshare from util-linux, ip from iproute2, nft from Debian's nftables);
# throttle.test.mjs shapes one page's downstream there with tc (iproute2, HTB and u32).
if ! command -v nft >/dev/null 2>&1; then
    echo "test-browser: installing Debian's nftables" >&2
    SUDO=""
    [[ "$(id -u)" != 0 ]] && SUDO="sudo"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y nftables
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "test-browser: Node.js 20+ and npm are required" >&2
    exit 1
fi

STAMP="$DIR/node_modules/.lockfile-sha256"
LOCK_HASH="$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$LOCK_HASH" ]]; then
    npm --prefix "$DIR" ci --no-audit --no-fund
    echo "$LOCK_HASH" >"$STAMP"
fi

if [[ ! -f "$ROOT/web/dist/index.html" ]]; then
    echo "test-browser: web/dist is not built: running scripts/build-web.sh" >&2
    bash "$ROOT/scripts/build-web.sh"
fi

# The interoperability test runs a participant on LiveKit's Python SDK.
bash "$ROOT/scripts/setup-venv.sh"

if [[ "${1:-}" == --prepare ]]; then
    exit 0
fi

if [[ $# -gt 0 ]]; then
    files=()
    for f in "$@"; do files+=("$DIR/$f"); done
else
    files=("$DIR"/*.test.mjs)
fi
# One file at a time: each starts its own server and Chromium with three pages of video,
# which is what two cores can carry.
exec node --test --test-concurrency=1 --test-reporter=spec "${files[@]}"
