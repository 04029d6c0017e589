"""Bench: how long a `!visio` takes to come back as a link notice, next to a plain
message between two clients through the same Synapse, and the bot's own share.

    .venv/bin/python benches/bridge_latency.py [--rounds 50]

Needs the debug binary (cargo build) and the venv (scripts/setup-venv.sh); starts its
own Synapse and tchap-visio on free loopback ports and stops them. Client-side times
are from the send call to the event arriving in the other client's long-poll /sync.
The bot's share comes from the service's JSON log: from the homeserver's transaction
arriving (`transaction received`) to the link notice's send being issued (`sending`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

import nio  # noqa: E402

from harness import Env  # noqa: E402
from harness.env import PASSWORD  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def login(url: str, user_id: str) -> nio.AsyncClient:
    client = nio.AsyncClient(url, user_id)
    resp = await client.login(PASSWORD, device_name="bench")
    assert isinstance(resp, nio.LoginResponse), resp
    return client


class Receiver:
    """A client whose /sync long-polls forever, recording when each event arrived."""

    def __init__(self, client: nio.AsyncClient):
        self.client = client
        self.seen: list[tuple[float, dict]] = []
        self.arrived = asyncio.Event()

    async def run(self) -> None:
        since = (await self.client.sync(timeout=0)).next_batch
        while True:
            resp = await self.client.sync(timeout=30000, since=since)
            now = time.perf_counter()
            if not isinstance(resp, nio.SyncResponse):
                continue
            since = resp.next_batch
            for room in resp.rooms.join.values():
                for event in room.timeline.events:
                    self.seen.append((now, event.source))
            self.arrived.set()

    async def wait(self, pred, after: int, timeout: float = 30) -> float:
        deadline = time.perf_counter() + timeout
        while True:
            for t, event in self.seen[after:]:
                if pred(event):
                    return t
            self.arrived.clear()
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError("event did not arrive")
            await asyncio.wait_for(self.arrived.wait(), left)


def log_records(log: Path, message: str) -> list[tuple[float, dict]]:
    """(wall-clock time in s, fields) of the service's JSON log lines with this message."""
    found = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        fields = record.get("fields", {})
        if fields.get("message") == message:
            found.append((datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp(), fields))
    return found


async def bench(env: Env, rounds: int) -> dict:
    syn = env.synapse
    alice_id = syn.register_user("alice", PASSWORD)
    bob_id = syn.register_user("bob", PASSWORD)
    alice = await login(syn.url, alice_id)
    bob = await login(syn.url, bob_id)
    room = (await alice.room_create(name="Bench", invite=[bob_id, env.bot])).room_id
    await bob.join(room)
    deadline = time.monotonic() + 30
    while (await alice.room_get_state_event(room, "m.room.member", env.bot)).content.get("membership") != "join":
        assert time.monotonic() < deadline, "the bot did not join"
        await asyncio.sleep(0.1)
    receiver = Receiver(bob)
    task = asyncio.create_task(receiver.run())
    await asyncio.sleep(1)  # let the receiver's first long-poll start

    plain, visio, bot_share = [], [], []
    log = env.service.log_path
    for i in range(rounds):
        # A plain message, alice -> bob.
        mark = len(receiver.seen)
        t0 = time.perf_counter()
        sent = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"plain {i}"})
        t1 = await receiver.wait(lambda e, eid=sent.event_id: e.get("event_id") == eid, mark)
        plain.append(t1 - t0)

        # A call request, alice -> bot -> bob.
        mark = len(receiver.seen)
        t0 = time.perf_counter()
        request = await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": f"!visio Bench {i}"})
        t1 = await receiver.wait(
            lambda e, i=i: e.get("sender") == env.bot and f"Bench {i}" in e.get("content", {}).get("body", "") and "/m/" in e["content"]["body"],
            mark,
        )
        visio.append(t1 - t0)
        received = [t for t, f in log_records(log, "transaction received") if f.get("first_event") == request.event_id]
        if received:
            sending = [t for t, f in log_records(log, "sending") if t >= received[0] and f.get("kind") == "send"]
            if sending:
                bot_share.append(sending[0] - received[0])

        # End it (not measured) so the next round opens a new meeting.
        mark = len(receiver.seen)
        await alice.room_send(room, "m.room.message", {"msgtype": "m.text", "body": "!visio fin"})
        await receiver.wait(lambda e: e.get("sender") == env.bot and "terminée :" in e.get("content", {}).get("body", "") or "terminée sans" in e.get("content", {}).get("body", ""), mark)
    task.cancel()
    await alice.close()
    await bob.close()
    return {"plain": plain, "visio": visio, "bot_share": bot_share}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tv-bench-") as tmp:
        env = Env(Path(tmp), overrides={"logging": {"json": True, "level": "info,tchap_visio=trace"}})
        try:
            result = asyncio.run(bench(env, args.rounds))
        finally:
            env.close()
    ms = {k: [v * 1000 for v in vs] for k, vs in result.items()}
    print(f"rounds: {args.rounds}")
    for name, label in (("plain", "plain message, client to client"), ("visio", "!visio to link notice"), ("bot_share", "bot share (transaction in -> send issued)")):
        vs = ms[name]
        print(f"{label:45s} p50 {statistics.median(vs):7.2f} ms   p90 {pct(vs, 90):7.2f} ms   n={len(vs)}")
    ratio = statistics.median(ms["visio"]) / statistics.median(ms["plain"])
    print(f"ratio !visio / plain (p50): {ratio:.2f}x   (target <= 2.2x; bot share p50 target < 5 ms)")


if __name__ == "__main__":
    main()
