#!/usr/bin/env bash
# Checks the syntax of docker/nginx/cluster.conf, the load balancer of
# docker-compose.cluster.yml, with this machine's nginx (`nginx -t`), outside Docker:
# the compose service names, which only compose's network resolves, are replaced by
# 127.0.0.1 in a temporary copy. Needs nginx (apt-get install nginx-core).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command -v nginx >/dev/null || { echo "nginx is missing: apt-get install nginx-core" >&2; exit 1; }
TMP="$(mktemp -d -t tchap-visio-nginx.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT
sed -E 's/\bvisio-[12]:29330\b/127.0.0.1:29330/' "$ROOT/docker/nginx/cluster.conf" >"$TMP/nginx.conf"
nginx -t -q -p "$TMP" -c "$TMP/nginx.conf" -g "error_log $TMP/error.log;"
echo "docker/nginx/cluster.conf: syntax ok (nginx $(nginx -v 2>&1 | sed 's|.*/||'))"
