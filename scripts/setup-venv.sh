#!/usr/bin/env bash
# Create (or refresh) the Python virtual environment at <repo>/.venv with
# everything the integration tests and the demo need: Synapse, matrix-nio, pytest.
# Idempotent: does nothing when .venv was already built from the same
# tests/requirements.txt (a stamp file holds that file's hash).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQ="$ROOT/tests/requirements.txt"
STAMP="$VENV/.requirements.sha256"
PYTHON="${PYTHON:-python3}"

want="$( { sha256sum "$REQ"; "$PYTHON" --version; } | sha256sum | cut -d' ' -f1)"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

echo "setup-venv: installing $REQ into $VENV" >&2
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$REQ"
echo "$want" > "$STAMP"
