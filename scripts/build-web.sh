#!/usr/bin/env bash
# Builds the meeting page (web/) into web/dist/, which the tchap-visio binary serves at
# /m/{slug} and /assets/* (and embeds in release builds).
# Idempotent: `npm ci` runs only when web/package-lock.json changed since the last install.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEB="$ROOT/web"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "build-web: Node.js and npm are required (Node.js 20.19+ or 22.12+)" >&2
    exit 1
fi

# The range of web/package.json's `engines` (Vite's own): an older Node.js fails here,
# with its version, rather than deep inside Vite; web/.npmrc's engine-strict makes
# `npm ci` refuse any dependency whose `engines` exclude the running Node.js.
NODE_VERSION="$(node -p 'process.versions.node')"
IFS=. read -r NODE_MAJOR NODE_MINOR _ <<<"$NODE_VERSION"
if ! { [[ "$NODE_MAJOR" == 20 && "$NODE_MINOR" -ge 19 ]] ||
    [[ "$NODE_MAJOR" == 22 && "$NODE_MINOR" -ge 12 ]] ||
    [[ "$NODE_MAJOR" -ge 23 ]]; }; then
    echo "build-web: Node.js $NODE_VERSION is not supported: the page needs Node.js 20.19+ or 22.12+ (web/package.json \`engines\`)" >&2
    exit 1
fi

STAMP="$WEB/node_modules/.lockfile-sha256"
LOCK_HASH="$(sha256sum "$WEB/package-lock.json" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$LOCK_HASH" ]]; then
    npm --prefix "$WEB" ci --no-audit --no-fund
    echo "$LOCK_HASH" >"$STAMP"
fi

npm --prefix "$WEB" run build
