#!/usr/bin/env bash
# Instructions per forwarded packet in the SFU engine, split into str0m's share and ours,
# with callgrind (valgrind; Debian's `valgrind`, installed with apt-get when absent).
# Hardware counters (`perf stat`) are not available on the development VMs; callgrind
# counts instructions exactly, whatever else runs on the machine.
#
#   scripts/bench-forwarding-callgrind.sh [N ...]     default: 1 10 50
#   FORWARDING_PROFILE=realistic scripts/bench-forwarding-callgrind.sh [N ...]   default: 50
#
# The profile (FORWARDING_PROFILE) and its settings (FORWARDING_PUBLISHERS,
# FORWARDING_WARMUP, FORWARDING_IDLE) pass through to the bench; the realistic profile
# counts media packets only, so its figure is Ir per media packet.
#
# Runs benches/forwarding.rs (one round of 1 virtual second per N) under callgrind,
# counting only inside the engine calls made while measuring (the bench routes them
# through its `measured` function), and prints, per N:
#   - Ir in the engine and Ir per forwarded RTP packet;
#   - str0m's share: the inclusive cost of the str0m functions the engine calls
#     (Rtc::handle_input, Rtc::poll_output, Rtc::accepts, media writers, ...), crypto
#     included (str0m calls it);
#   - ours: the rest (engine bookkeeping, allocation and copies it asks for, routing).
# FORWARDING_BIN=path runs that bench executable instead of building one.
# KEEP=1 keeps the callgrind output files (open them with callgrind_annotate or kcachegrind).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ! command -v valgrind >/dev/null 2>&1; then
    SUDO=""
    [[ "$(id -u)" != 0 ]] && SUDO="sudo"
    $SUDO apt-get update
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y valgrind
fi

export TCHAP_VISIO_ALLOW_MISSING_WEB=1
BIN="${FORWARDING_BIN:-}"
[[ -n "$BIN" ]] || BIN="$(cargo bench --bench forwarding --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "forwarding" and m.get("executable"):
        print(m["executable"])')"
[[ -x "$BIN" ]] || { echo "could not build the forwarding bench" >&2; exit 1; }

OUT="$(mktemp -d -t forwarding-callgrind.XXXXXX)"
[[ "${KEEP:-0}" == 1 ]] || trap 'rm -rf "$OUT"' EXIT

PROFILE="${FORWARDING_PROFILE:-one-publisher}"
WHAT="forwarded RTP packets"
[[ "$PROFILE" == realistic ]] && WHAT="media packets"
SIZES=("$@")
if [[ ${#SIZES[@]} -eq 0 ]]; then
    SIZES=(1 10 50)
    [[ "$PROFILE" == realistic ]] && SIZES=(50)
fi
for n in "${SIZES[@]}"; do
    FORWARDING_PROFILE="$PROFILE" FORWARDING_N="$n" FORWARDING_ROUNDS=1 FORWARDING_SECONDS=1 \
        valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*forwarding*measured*' \
        --callgrind-out-file="$OUT/callgrind.$n" "$BIN" >"$OUT/bench.$n" 2>"$OUT/valgrind.$n"
    forwarded="$(awk -v n="$n" '$1 == n { print $2 }' "$OUT/bench.$n")"
    callgrind_annotate --inclusive=yes --threshold=100 "$OUT/callgrind.$n" >"$OUT/inclusive.$n"
    callgrind_annotate --threshold=100 "$OUT/callgrind.$n" >"$OUT/self.$n"
    python3 - "$n" "$forwarded" "$OUT/inclusive.$n" "$OUT/self.$n" "$PROFILE" "$WHAT" <<'EOF'
import re
import sys

n, forwarded, inclusive_path, self_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
profile, what = sys.argv[5], sys.argv[6]
line_re = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+(?:\*\s+)?(\S.*?)(?:\s+\[[^\]]*\])?$")


def costs(path):
    out = []
    for line in open(path, encoding="utf-8", errors="replace"):
        m = line_re.match(line)
        if m and ":" in m.group(2):
            out.append((int(m.group(1).replace(",", "")), m.group(2).split(":", 1)[1] if m.group(2).startswith("???:") or "/" in m.group(2).split(":", 1)[0] else m.group(2)))
    return out


def name(fn):
    # "file:function" from callgrind_annotate; keep the function.
    return fn


inclusive = costs(inclusive_path)
total = sum(c for c, _ in costs(self_path))
# The str0m entry points the engine calls: their inclusive costs do not overlap (none
# calls another), and everything below them (SRTP, DTLS, SCTP, pacing) is str0m's.
entry = re.compile(r"str0m::(Rtc::(handle_input|poll_output|accepts|writer|media|channel|direction)|media::writer::Writer::(write|match_params|request_keyframe)|channel::Channel::write)\b")
entries = {}
for cost, fn in inclusive:
    m = entry.search(fn)
    if m and m.group(0) not in entries:
        entries[m.group(0)] = cost
str0m = sum(entries.values())
print(f"{profile} N={n}: {forwarded} {what}, {total:,} Ir in the engine: "
      f"{total / max(forwarded, 1):,.0f} Ir/packet; str0m {str0m / max(total, 1):.0%} "
      f"({str0m / max(forwarded, 1):,.0f}/packet), ours {(total - str0m) / max(total, 1):.0%} "
      f"({(total - str0m) / max(forwarded, 1):,.0f}/packet)")
for fn, cost in sorted(entries.items(), key=lambda kv: -kv[1]):
    print(f"    str0m  {cost / max(forwarded, 1):>9,.0f} Ir/packet  {fn}")
selfc = sorted(costs(self_path), reverse=True)[:12]
print("    top functions by own cost (Ir/packet):")
for cost, fn in selfc:
    print(f"    {cost / max(forwarded, 1):>9,.0f}  {fn[:110]}")
EOF
done
[[ "${KEEP:-0}" == 1 ]] && echo "callgrind files kept in $OUT"
exit 0
