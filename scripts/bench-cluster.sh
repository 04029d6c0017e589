#!/usr/bin/env bash
# Cluster scaling: CPU per forwarded packet on each node when two nodes carry twice the
# meetings of one (issue 15). In one run, alternating: one cluster node alone with M
# meetings, then two nodes on the same PostgreSQL with M meetings each, ROUNDS times.
# Each meeting is one tchap-visio-load process (its own room, `large` with N
# participants by default) pointed at its node's own URL, as placement would send it
# (the load generator's rooms are made with the API keys, so a room opens on the node
# its first connection reaches). Each generator reads its node's CPU time from
# /proc/<pid>/stat over its measured window and counts the media packets its
# subscribers receive. Per node: packets (sum over its meetings) / CPU seconds (mean of
# its meetings' readings: their windows overlap). Prints a table with the load average.
# Everything it starts stops on exit.
#
#   scripts/bench-cluster.sh                        1 meeting per node, large:6, 20 s, 2 rounds
#   MEETINGS=2 N=4 ROUNDS=3 scripts/bench-cluster.sh
#
# Environment:
#   MEETINGS         meetings per node (default 1)
#   SCENARIO, N      the load generator's scenario and participant count (large, 6)
#   SECONDS_PER_RUN  measured window, after the warm-up (default 20)
#   ROUNDS           one-node / two-node pairs, alternating (default 2)
#   PROFILE          debug (default) or release: which build to run
#   BUILD=0          run the binaries already built
#   PG_URL           a PostgreSQL server (postgres://user@host:port/db, superuser) to make
#                    the benchmark's databases on; default: a throwaway one started here
#   KEEP_TMP=1       keep the temporary directory (configs, logs, JSON lines)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

MEETINGS="${MEETINGS:-1}"
SCENARIO="${SCENARIO:-large}"
N="${N:-6}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-20}"
ROUNDS="${ROUNDS:-2}"
PROFILE="${PROFILE:-debug}"

export TCHAP_VISIO_ALLOW_MISSING_WEB="${TCHAP_VISIO_ALLOW_MISSING_WEB:-1}"
if [[ "$PROFILE" == release ]]; then
    [[ "${BUILD:-1}" == 0 ]] || cargo build --release --bin tchap-visio --bin tchap-visio-load
    BIN="$ROOT/target/release"
else
    [[ "${BUILD:-1}" == 0 ]] || cargo build --bin tchap-visio --bin tchap-visio-load
    BIN="$ROOT/target/debug"
fi

TMP="$(mktemp -d -t tchap-visio-bench-cluster.XXXXXX)"
chmod 755 "$TMP"
NODE_PIDS=()
PG_DIR=""
PG_CTL=""
stop_nodes() {
    local pid
    for pid in "${NODE_PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${NODE_PIDS[@]}"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    NODE_PIDS=()
}
as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    local rc=$?
    stop_nodes
    if [[ -n "$PG_DIR" ]]; then
        as_postgres "$PG_CTL" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
    fi
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

# A throwaway PostgreSQL unless PG_URL names one.
if [[ -z "${PG_URL:-}" ]]; then
    PG_CTL="$(ls -d /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -1)"
    [[ -x "$PG_CTL" ]] || { echo "no PostgreSQL server found (apt-get install postgresql), or set PG_URL" >&2; exit 1; }
    PG_DIR="$TMP/pg"
    mkdir -p "$PG_DIR"
    [[ $(id -u) -eq 0 ]] && chown postgres: "$PG_DIR"
    pg_port="$(free_port tcp)"
    as_postgres "$(dirname "$PG_CTL")/initdb" -D "$PG_DIR/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
    as_postgres "$PG_CTL" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
        -o "-p $pg_port -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    PG_URL="postgres://postgres@127.0.0.1:$pg_port/postgres"
fi
PG_BASE="${PG_URL%/*}"

KEY=loadkey
SECRET="$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 48)"
DB_SEQ=0

new_database() { # sets DB
    DB_SEQ=$((DB_SEQ + 1))
    local name="bench_cluster_$$_$DB_SEQ"
    python3 - "$PG_URL" "$name" <<'EOF'
import subprocess, sys
url, name = sys.argv[1:]
subprocess.run(["psql", "-q", "-d", url, "-c", f"CREATE DATABASE {name}"], check=True)
EOF
    DB="$PG_BASE/$name"
}

# A cluster node with the least it needs to forward media, as scripts/bench-load.sh's
# single server: no reachable homeserver, encryption and metrics off, media on
# loopback, warnings only; PostgreSQL and a cluster section.
start_node() { # dir node-id database-url; sets NODE_PID and NODE_URL
    local dir="$1" node="$2" db="$3" port udp tcp
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
  public_address: http://localhost:9
  as_token: "This value is generated when generating the registration"
  hs_token: "This value is generated when generating the registration"
  sender_localpart: "This value is generated when generating the registration"
database:
  uri: $db
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
cluster:
  node_id: $node
  node_url: http://127.0.0.1:$port
  drain_timeout_secs: 0
EOF
    "$BIN/tchap-visio" generate-registration -q -c "$dir/config.yaml" -r "$dir/registration.yaml"
    (cd "$dir" && exec "$BIN/tchap-visio" run -c "$dir/config.yaml") >"$dir/log" 2>&1 &
    local pid=$!
    NODE_PIDS+=("$pid")
    NODE_PID="$pid"
    NODE_URL="ws://127.0.0.1:$port"
    for _ in $(seq 300); do
        if curl -s -o /dev/null "http://127.0.0.1:$port/health"; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { echo "node $node exited while starting:" >&2; tail -20 "$dir/log" >&2; return 1; }
        sleep 0.1
    done
    echo "node $node did not answer" >&2
    return 1
}

# One phase: `nodes` nodes on a fresh database, MEETINGS generators on each at once.
phase() { # round nodes
    local round="$1" nodes="$2" k m pids=() specs=() name
    new_database
    for k in $(seq "$nodes"); do
        start_node "$TMP/r$round-$nodes/n$k" "n$k" "$DB"
        specs+=("n$k $NODE_PID $NODE_URL")
    done
    sleep 1 # the nodes settle (their idle RSS is read first)
    echo "==> round $round: $nodes node(s), $MEETINGS meeting(s) each, $SCENARIO n=$N, $SECONDS_PER_RUN s" >&2
    for spec in "${specs[@]}"; do
        read -r node pid url <<<"$spec"
        for m in $(seq "$MEETINGS"); do
            name="$TMP/r$round-$nodes-$node-m$m"
            "$BIN/tchap-visio-load" --target tchap --url "$url" --scenario "$SCENARIO" -n "$N" \
                --seconds "$SECONDS_PER_RUN" --server-pid "$pid" --key "$KEY" --secret "$SECRET" \
                >"$name.json" 2>"$name.err" &
            pids+=("$!")
        done
    done
    local rc=0
    for pid in "${pids[@]}"; do
        wait "$pid" || rc=$?
    done
    stop_nodes
    if [[ $rc -ne 0 ]]; then
        echo "a load generator failed ($rc):" >&2
        tail -5 "$TMP"/r"$round"-"$nodes"-*.err >&2
        return $rc
    fi
}

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq "$ROUNDS"); do
    phase "$round" 1
    phase "$round" 2
done

python3 - "$TMP" "$ROUNDS" "$PROFILE" <<'EOF'
import glob, json, os, re, statistics, sys
tmp, rounds, profile = sys.argv[1], int(sys.argv[2]), sys.argv[3]
runs = {}
for path in sorted(glob.glob(os.path.join(tmp, "r*-*-n*-m*.json"))):
    r, nodes, node, _ = re.match(r"r(\d+)-(\d+)-(n\d+)-m(\d+)\.json", os.path.basename(path)).groups()
    lines = open(path).read().strip().splitlines()
    runs.setdefault((int(r), int(nodes), node), []).append(json.loads(lines[-1]))
print(f"build: {profile}; per node: media packets its subscribers received / its CPU seconds")
print("a round counts only if every meeting's subscribers all received every source before the window (ready) and lost under 1 %")
print(f"{'round':>5} {'nodes':>5} {'node':>4} {'meetings':>8} {'packets':>9} {'CPU s':>7} {'pkts/CPU-s':>10} {'vs 1 node':>9} {'loss %':>6} {'ready':>5} {'load avg':>16}")
ratios, singles, pairs = [], [], []
for rnd in range(1, rounds + 1):
    single, valid, round_ratios, round_pers = None, True, [], []
    for nodes in (1, 2):
        for node in sorted({k[2] for k in runs if k[:2] == (rnd, nodes)}):
            rs = runs[(rnd, nodes, node)]
            packets = sum(x["packets"] for x in rs)
            cpu = statistics.mean(x["server_cpu_s"] for x in rs)
            per = packets / cpu if cpu else 0
            loss = max(x["loss_pct"] for x in rs)
            ready = all(x["ready"] for x in rs)
            valid = valid and ready and loss < 1
            if nodes == 1:
                single = per
                rel = "-"
            else:
                round_pers.append(per)
                round_ratios.append(per / single)
                rel = f"{per / single:.3f}"
            load = rs[0]["load_average"]
            load = " ".join(f"{v:.2f}" for v in load) if isinstance(load, list) else str(load)
            print(f"{rnd:>5} {nodes:>5} {node:>4} {len(rs):>8} {packets:>9} {cpu:>7.2f} {per:>10.0f} {rel:>9} {loss:>6.2f} {'yes' if ready else 'NO':>5} {load:>16}")
    if valid:
        ratios += round_ratios
        singles.append(single)
        pairs += round_pers
    else:
        print(f"round {rnd} does not count: the load did not flow in full (machine too busy)")
if ratios:
    worst = max(abs(1 - r) for r in ratios)
    print(f"two-node / one-node packets per CPU-second, rounds that count: {', '.join(f'{r:.3f}' for r in ratios)}; "
          f"largest gap {100 * worst:.1f} % ({'within' if worst <= 0.10 else 'outside'} 10 %)")
    # A round's ratio carries the single node's own round-to-round spread; the means over
    # the rounds that count compare the two set-ups with that spread averaged out.
    mean_single, mean_pair = statistics.mean(singles), statistics.mean(pairs)
    spread = (max(singles) - min(singles)) / mean_single if len(singles) > 1 else 0
    gap = mean_pair / mean_single
    print(f"means: one node {mean_single:.0f}, each node of two {mean_pair:.0f} packets per CPU-second; "
          f"ratio {gap:.3f} ({'within' if abs(1 - gap) <= 0.10 else 'outside'} 10 %); "
          f"the single node's own spread over the rounds {100 * spread:.1f} %")
else:
    print("no round counts")
EOF
echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
