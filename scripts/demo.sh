#!/usr/bin/env bash
# A local demo: Synapse on http://127.0.0.1:8008 (server name "localhost"), tchap-visio
# on port 29330, a user demo/demo and a room "Démo Visio" with the bot in it.
# State lives in data/demo/ and is kept between runs (delete it to start over).
# Runs in the foreground; Ctrl-C stops both processes.
#
# The first run builds everything (Python venv, the page, the Rust binary: most of the
# time); later runs take seconds. For scripts and tests (tests/integration/test_demo.py):
#   DEMO_EXIT_AFTER_LINK=1   stop both processes and exit 0 once the link is printed
#   TCHAP_VISIO_BIN=path     use this binary, build nothing (neither the page nor Rust)
#   DEMO_DIR, DEMO_HS_PORT, DEMO_AS_PORT, DEMO_UDP_PORT, DEMO_TCP_PORT
#                            another state folder and other ports (the configs are
#                            written on the first run of a folder)
#   DEMO_MEDIA_BIND_IP=0.0.0.0  media on every interface instead of 127.0.0.1 only (for a
#                            system where browsers do not connect through loopback)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DEMO="${DEMO_DIR:-data/demo}"
HS_PORT="${DEMO_HS_PORT:-8008}"
AS_PORT="${DEMO_AS_PORT:-29330}"
UDP_PORT="${DEMO_UDP_PORT:-7882}"
TCP_PORT="${DEMO_TCP_PORT:-7881}"
# Everything on loopback, media included: browsers without a special flag and LiveKit's
# SDKs do not gather loopback candidates, but on Linux their packets from this machine's
# other addresses to 127.0.0.1 stay inside it and arrive (checked with Chromium and the
# Python SDK). Set on the command line so that a config kept from older runs follows too.
MEDIA_BIND_IP="${DEMO_MEDIA_BIND_IP:-127.0.0.1}"
HS_URL="http://127.0.0.1:$HS_PORT"
BOT="@visio:localhost"
PY=.venv/bin/python

if [[ -n "${TCHAP_VISIO_BIN:-}" ]]; then
    BIN="$TCHAP_VISIO_BIN"
    bash scripts/setup-venv.sh
else
    BIN=target/debug/tchap-visio
    if [[ ! -x "$BIN" ]]; then
        echo "First run: installing Synapse and building the meeting page and the Rust binary." \
            "This takes 10 to 15 minutes on 2 cores (most of it compiling Rust);" \
            "later runs are ready in well under a minute."
    fi
    bash scripts/setup-venv.sh
    bash scripts/build-web.sh
    cargo build
fi
mkdir -p "$DEMO"

for port in "$HS_PORT" "$AS_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "port $port is already in use on 127.0.0.1: is a demo already running?" >&2
        exit 1
    fi
done

if [[ ! -f "$DEMO/config.yaml" ]]; then
    "$PY" scripts/demo_helper.py write-config --example config/example-config.yaml --out "$DEMO/config.yaml" \
        --homeserver "$HS_URL" --port "$AS_PORT" --database "sqlite://$DEMO/tchap-visio.db" \
        --udp-port "$UDP_PORT" --tcp-port "$TCP_PORT"
fi
if [[ ! -f "$DEMO/registration.yaml" ]]; then
    # Quiet: its advice (add the file to the homeserver, restart it) is what this script does.
    "$BIN" generate-registration --quiet -c "$DEMO/config.yaml" -r "$DEMO/registration.yaml"
fi
"$PY" scripts/demo_helper.py synapse-config --dir "$DEMO/synapse" --port "$HS_PORT" \
    --registration "$DEMO/registration.yaml"

SYNAPSE_PID=""
SERVICE_PID=""
stop_all() {
    trap - EXIT INT TERM
    echo
    echo "Stopping..."
    for pid in $SERVICE_PID $SYNAPSE_PID; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in $SERVICE_PID $SYNAPSE_PID; do
        wait "$pid" 2>/dev/null || true
    done
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$PY" -m synapse.app.homeserver -c "$DEMO/synapse/homeserver.yaml" >"$DEMO/synapse/stdout.log" 2>&1 &
SYNAPSE_PID=$!
"$PY" scripts/demo_helper.py wait-health --url "$HS_URL/health" --pid "$SYNAPSE_PID" --timeout 60 || {
    tail -n 30 "$DEMO/synapse/stdout.log" "$DEMO/synapse/homeserver.log" >&2
    exit 1
}

TCHAP_VISIO_SFU__BIND_IP="$MEDIA_BIND_IP" "$BIN" run -c "$DEMO/config.yaml" >>"$DEMO/tchap-visio.log" 2>&1 &
SERVICE_PID=$!
"$PY" scripts/demo_helper.py wait-health --url "http://127.0.0.1:$AS_PORT/health" --pid "$SERVICE_PID" --timeout 60 || {
    tail -n 30 "$DEMO/tchap-visio.log" >&2
    exit 1
}

# The demo user's room with the bot, then "!visio Démo" typed in it: the second line
# is the link the bot posted (or the one of the meeting still open from a previous run).
SETUP="$("$PY" scripts/demo_helper.py setup-room --homeserver "$HS_URL" --synapse-dir "$DEMO/synapse" \
    --user demo --password demo --room-name "Démo Visio" --room-file "$DEMO/room_id" --bot "$BOT" \
    --call "Démo")"
ROOM_ID="$(sed -n 1p <<<"$SETUP")"
MEETING_LINK="$(sed -n 2p <<<"$SETUP")"
if [[ "$MEDIA_BIND_IP" == 0.0.0.0 ]]; then
    LAN_IP="$("$PY" scripts/demo_helper.py primary-ip)"
    MEDIA_WHERE="all interfaces (0.0.0.0), announced to browsers as ${LAN_IP:+$LAN_IP and }127.0.0.1:
  other machines on your network can reach these two ports."
else
    MEDIA_WHERE="$MEDIA_BIND_IP only. If your browser does not connect to
  a meeting, run the demo again with DEMO_MEDIA_BIND_IP=0.0.0.0 (media on every interface)."
fi

cat <<EOF

The demo is running.
  Homeserver : $HS_URL   (server name: localhost)
  User       : demo   password: demo   (@demo:localhost)
  Room       : Démo Visio   $ROOM_ID   (the bot $BOT is in it)

What listens where:
  Synapse on 127.0.0.1:$HS_PORT, tchap-visio's page and API on 127.0.0.1:$AS_PORT.
  Meeting media: UDP $UDP_PORT and TCP $TCP_PORT on $MEDIA_WHERE

Log in with any Matrix client (Element desktop: "Edit" the homeserver, enter $HS_URL),
open the room "Démo Visio": "!visio Démo" was typed there for you, and the bot answered
with this link; open it in a browser (two tabs make two participants):
  $MEETING_LINK
What you type in the meeting's chat appears in the thread under the bot's notice, and
your replies in that thread appear in the meeting. "!visio aide" lists the commands.

Logs: $DEMO/tchap-visio.log, $DEMO/synapse/homeserver.log
Ctrl-C stops Synapse and tchap-visio.
EOF

if [[ -n "${DEMO_EXIT_AFTER_LINK:-}" ]]; then
    exit 0  # the EXIT trap stops both processes
fi

# Foreground until Ctrl-C (or TERM), or until one of the two stops by itself.
STOPPING=0
trap 'STOPPING=1' INT TERM
set +e
wait -n "$SYNAPSE_PID" "$SERVICE_PID"
rc=$?
set -e
if [[ "$STOPPING" == 1 ]]; then
    exit 0
fi
if kill -0 "$SYNAPSE_PID" 2>/dev/null; then
    echo "tchap-visio stopped by itself (exit $rc); see $DEMO/tchap-visio.log" >&2
else
    echo "Synapse stopped by itself (exit $rc); see $DEMO/synapse/homeserver.log" >&2
fi
exit 1
