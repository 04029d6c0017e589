#!/usr/bin/env bash
# Builds the meeting page (web/) into web/dist/, which the tchap-visio binary serves at
# /m/{slug} and /assets/* (and embeds in release builds).
# Idempotent: `npm ci` runs only when web/package-lock.json changed since the last install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEB="$ROOT/web"

if ! command -v npm >/dev/null 2>&1; then
    echo "build-web: npm is required (Node.js 20.19+ or 22.12+)" >&2
    exit 1
fi

STAMP="$WEB/node_modules/.lockfile-sha256"
LOCK_HASH="$(sha256sum "$WEB/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$LOCK_HASH" ]]; then
    npm --prefix "$WEB" ci --no-audit --no-fund
    echo "$LOCK_HASH" >"$STAMP"
fi

npm --prefix "$WEB" run build
