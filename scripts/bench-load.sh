#!/usr/bin/env bash
# Load test, side by side: the same scenario on tchap-visio's SFU and on Janus's VideoRoom
# (Debian `janus`, installed with apt-get when absent), one after the other in one run,
# each server started fresh for each scenario, loaded by tchap-visio-load on loopback.
# Prints, per scenario, both servers' forwarded media packets per CPU-second of the
# server process, loss, one-way delay and memory, and the ratio (ours / Janus); then
# memory per participant at 50 and 200 participants. Everything it starts stops on exit.
#
#   scripts/bench-load.sh                       the comparison (about 6 minutes)
#   SECONDS_PER_RUN=10 scripts/bench-load.sh    shorter windows
#   SCENARIOS="large:10" MEMORY="" scripts/bench-load.sh
#
# Environment:
#   SCENARIOS        scenario:n pairs (default "large:10 livestream:50 audio:50"; empty: none)
#   SECONDS_PER_RUN  measured window of each run, after the warm-up (default 30)
#   LAYER            the simulcast layer every subscriber asks for: q, h or f (default h)
#   DYNACAST         1 (default): a third run per video scenario, on our SFU with the
#                    publishers obeying dynacast (only the layers watched are sent, as
#                    LiveKit's SDKs do; Janus has no such signal); 0: none
#   MEMORY           participant counts for the memory runs, livestream with layer q
#                    (default "50 200"; empty: none)
#   MEMORY_SECONDS   measured window of each memory run (default 10)
#   PROFILE          release (default) or debug: which build to run
#   BUILD=0          run the binaries already built (while web/dist/index.html is
#                    missing, cargo rebuilds the crate every time: minutes on 2 cores)
#   SERVER_BIN       the tchap-visio executable to measure (default: the one built)
#   RESULTS          a file to append every run's JSON line to (default: none)
#   KEEP_TMP=1       keep the temporary directory (configs, logs, JSON lines)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SCENARIOS="${SCENARIOS-large:10 livestream:50 audio:50}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-30}"
LAYER="${LAYER:-h}"
DYNACAST="${DYNACAST:-1}"
MEMORY="${MEMORY-50 200}"
MEMORY_SECONDS="${MEMORY_SECONDS:-10}"
PROFILE="${PROFILE:-release}"
RESULTS="${RESULTS:-}"

# The page is not needed to forward media.
export TCHAP_VISIO_ALLOW_MISSING_WEB="${TCHAP_VISIO_ALLOW_MISSING_WEB:-1}"
if [[ "$PROFILE" == release ]]; then
    [[ "${BUILD:-1}" == 0 ]] || cargo build --release --bin tchap-visio --bin tchap-visio-load
    BIN="$ROOT/target/release"
else
    [[ "${BUILD:-1}" == 0 ]] || cargo build --bin tchap-visio --bin tchap-visio-load
    BIN="$ROOT/target/debug"
fi

SERVER_BIN="${SERVER_BIN:-$BIN/tchap-visio}"

SUDO=""
[[ $(id -u) -ne 0 ]] && SUDO="sudo"
if ! command -v janus >/dev/null; then
    echo "janus is missing: installing it (Debian package janus)" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends janus >/dev/null ||
        { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends janus >/dev/null; }
fi
JANUS_LIB="$(dirname "$(dpkg -L janus | grep -m1 '/janus/plugins/libjanus_videoroom.so$')")/.."

TMP="$(mktemp -d -t tchap-visio-bench-load.XXXXXX)"
SERVER_PID=""
stop_server() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
cleanup() {
    local rc=$?
    stop_server
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        echo "kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { # tcp|udp
    python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1]=='udp' else socket.SOCK_STREAM); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])" "$1"
}
wait_http() { # url what
    for _ in $(seq 300); do
        if curl -s -o /dev/null "$1"; then return 0; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "$2 exited while starting" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "$2 did not answer at $1" >&2
    return 1
}

KEY=loadkey
SECRET="$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 48)"

# tchap-visio with the least it needs to forward media: no homeserver is reachable
# (the bot's registration retries in the background, which costs nothing measurable),
# SQLite, no encryption, no metrics listener, media on loopback, warnings only.
start_tchap() { # dir
    local dir="$1" port udp tcp
    mkdir -p "$dir"
    port="$(free_port tcp)"
    udp="$(free_port udp)"
    tcp="$(free_port tcp)"
    cat >"$dir/config.yaml" <<EOF
homeserver:
  address: http://127.0.0.1:9
  domain: localhost
appservice:
  address: http://127.0.0.1:$port
  hostname: 127.0.0.1
  port: $port
  public_address: http://127.0.0.1:$port
  as_token: "This value is generated when generating the registration"
  hs_token: "This value is generated when generating the registration"
  sender_localpart: "This value is generated when generating the registration"
database:
  uri: sqlite://$dir/tchap-visio.db
sfu:
  udp_port: $udp
  tcp_port: $tcp
  bind_ip: 127.0.0.1
  keys:
    $KEY: "$SECRET"
meetings:
  max_participants: 1000
encryption:
  enabled: false
metrics:
  enabled: false
logging:
  level: warn
EOF
    "$SERVER_BIN" generate-registration -q -c "$dir/config.yaml" -r "$dir/registration.yaml"
    (cd "$dir" && exec "$SERVER_BIN" run -c "$dir/config.yaml") >"$dir/log" 2>&1 &
    SERVER_PID=$!
    URL="ws://127.0.0.1:$port"
    wait_http "http://127.0.0.1:$port/health" tchap-visio
}

# Janus with the VideoRoom plugin and the HTTP transport only, logging warnings.
start_janus() { # dir
    local dir="$1" port
    mkdir -p "$dir"
    port="$(free_port tcp)"
    cat >"$dir/janus.jcfg" <<EOF
general: {
	configs_folder = "$dir"
	plugins_folder = "$JANUS_LIB/plugins"
	transports_folder = "$JANUS_LIB/transports"
	events_folder = "$JANUS_LIB/events"
	loggers_folder = "$JANUS_LIB/loggers"
	debug_level = 3
}
media: {
	rtp_port_range = "20000-30000"
}
nat: {
	nice_debug = false
}
plugins: {
	disable = "libjanus_audiobridge.so,libjanus_duktape.so,libjanus_echotest.so,libjanus_lua.so,libjanus_nosip.so,libjanus_recordplay.so,libjanus_sip.so,libjanus_streaming.so,libjanus_textroom.so,libjanus_videocall.so,libjanus_voicemail.so"
}
transports: {
	disable = "libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so,libjanus_websockets.so"
}
loggers: {
	disable = "libjanus_jsonlog.so"
}
events: {
	broadcast = false
}
EOF
    cat >"$dir/janus.transport.http.jcfg" <<EOF
general: {
	json = "plain"
	base_path = "/janus"
	http = true
	port = $port
	ip = "127.0.0.1"
	https = false
}
admin: {
	admin_http = false
}
EOF
    echo "general: {}" >"$dir/janus.plugin.videoroom.jcfg"
    janus -o -F "$dir" -C "$dir/janus.jcfg" >"$dir/log" 2>&1 &
    SERVER_PID=$!
    URL="http://127.0.0.1:$port/janus"
    wait_http "http://127.0.0.1:$port/janus/info" janus
}

# One run: a fresh server, the load, the JSON line in $TMP/<name>.json.
run_one() { # target scenario n seconds layer name [more tchap-visio-load arguments]
    local target="$1" scenario="$2" n="$3" seconds="$4" layer="$5" name="$6"
    shift 6
    local dir="$TMP/$name"
    "start_$target" "$dir"
    sleep 1 # the server settles (its idle RSS is read first)
    echo "==> $target $scenario n=$n ($seconds s, layer $layer) $*" >&2
    local rc=0
    "$BIN/tchap-visio-load" --target "$target" --url "$URL" --scenario "$scenario" -n "$n" \
        --seconds "$seconds" --layer "$layer" --server-pid "$SERVER_PID" \
        --key "$KEY" --secret "$SECRET" "$@" >"$TMP/$name.json" || rc=$?
    stop_server
    if [[ $rc -ne 0 ]]; then
        echo "tchap-visio-load failed ($rc) on $target; the server's log:" >&2
        tail -20 "$dir/log" >&2
        return $rc
    fi
    if [[ -n "$RESULTS" ]]; then cat "$TMP/$name.json" >>"$RESULTS"; fi
}

report() { # name-of-tchap-run name-of-janus-run [name-of-tchap-dynacast-run]
    python3 - "$TMP/$1.json" "$TMP/$2.json" ${3:+"$TMP/$3.json"} <<'EOF'
import json, sys
ours, janus, *more = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:])
dyn = more[0] if more else None
def f(v, spec):
    return "-" if v is None else format(v, spec)
print(f"{ours['scenario']} n={ours['n']} ({ours['participants']} participants, layer {ours['layer']}, {ours['seconds']:.0f} s)")
print(f"  {'':9} {'packets/s':>10} {'CPU s':>7} {'pkts/CPU-s':>11} {'loss %':>7} {'p50 ms':>7} {'p99 ms':>7} {'RSS MB':>7} {'kB/part.':>9}")
for name, r in (("tchap", ours), ("janus", janus)) + ((("tchap+dyn", dyn),) if dyn else ()):
    rss = r.get("server_rss_kb")
    print(f"  {name:9} {r['packets_per_s']:>10.0f} {f(r['server_cpu_s'], '.2f'):>7} {f(r['packets_per_cpu_s'], '.0f'):>11} "
          f"{r['loss_pct']:>7.2f} {f(r['delay_ms_p50'], '.2f'):>7} {f(r['delay_ms_p99'], '.2f'):>7} "
          f"{f(rss and rss / 1024, '.1f'):>7} {f(r['rss_per_participant_kb'], '.0f'):>9}")
a, b = ours.get("packets_per_cpu_s"), janus.get("packets_per_cpu_s")
if a and b:
    ratio = a / b
    verdict = "goal met (>= 2x)" if ratio >= 2 else "gate met (>= 1.5x)" if ratio >= 1.5 else "below the gate (1.5x)"
    print(f"  ratio (tchap / janus packets per server CPU-second): {ratio:.2f}  {verdict}")
if dyn and dyn.get("packets_per_cpu_s") and b:
    print(f"  with dynacast (tchap+dyn / janus): {dyn['packets_per_cpu_s'] / b:.2f}")
print(f"  load average at the end: tchap {ours['load_average']}, janus {janus['load_average']}")
EOF
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
SUMMARY="$TMP/summary"
: >"$SUMMARY"
for pair in $SCENARIOS; do
    scenario="${pair%%:*}"
    n="${pair##*:}"
    run_one tchap "$scenario" "$n" "$SECONDS_PER_RUN" "$LAYER" "tchap-$scenario-$n"
    run_one janus "$scenario" "$n" "$SECONDS_PER_RUN" "$LAYER" "janus-$scenario-$n"
    dyn=""
    if [[ "$DYNACAST" == 1 && "$scenario" != audio ]]; then
        run_one tchap "$scenario" "$n" "$SECONDS_PER_RUN" "$LAYER" "tchap-dyn-$scenario-$n" --dynacast
        dyn="tchap-dyn-$scenario-$n"
    fi
    report "tchap-$scenario-$n" "janus-$scenario-$n" $dyn | tee -a "$SUMMARY"
done
for participants in $MEMORY; do
    n=$((participants - 1)) # one publisher
    run_one tchap livestream "$n" "$MEMORY_SECONDS" q "tchap-memory-$participants"
    run_one janus livestream "$n" "$MEMORY_SECONDS" q "janus-memory-$participants"
    report "tchap-memory-$participants" "janus-memory-$participants" | tee -a "$SUMMARY"
done
echo
echo "==> summary (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
cat "$SUMMARY"
