"""The embedded SFU, driven by LiveKit's official Python SDK over real sockets on loopback.

Each participant is a process of its own (harness/lkpeer.py) so that a test can SIGKILL
one. Peers connect in single peer connection mode (`/rtc/v1`, the SDK's default) unless a
test asks for dual peer connections (`/rtc`); the server's metrics say which signalling
path was used. Covered: three publishers decoding each other (over both paths), a late
joiner, chat both ways, a killed participant reported gone, bad tokens refused, a
signalling resume that keeps the media, a meeting link to media, and simulcast layers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import threading
import time
import uuid

import pytest
import requests

try:
    import livekit.api  # noqa: F401
    import livekit.rtc  # noqa: F401
except Exception as e:  # noqa: BLE001 - any import failure means the SDK is unusable here
    if os.environ.get("CI"):
        pytest.fail(f"LiveKit's Python SDK cannot be imported in CI: {e!r}", pytrace=False)
    pytest.skip(
        f"LiveKit's Python SDK (pip livekit, livekit-api) cannot be imported: {e!r}; "
        "run scripts/setup-venv.sh",
        allow_module_level=True,
    )

import jwt  # PyJWT, a dependency of livekit-api

from harness import wait_for
from harness.lkpeer import Peer, token

PARTICIPANTS = "tchap_visio_sfu_participants"
SIGNAL_CONNECTIONS = "tchap_visio_signal_connections_total"
CHAT_MESSAGES = "tchap_visio_chat_messages_total"
RESUMES = "tchap_visio_sfu_resumes_total"

# Generous deadlines for a loaded 2-core machine; they bound waits, they are not speed claims.
FIRST_MEDIA_S = 45
MORE_MEDIA_S = 20


def room_name(tag: str) -> str:
    return f"sfu-{tag}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def peers(env, tmp_path):
    """peers(name, room, publish=True, **Peer kwargs) -> a connected Peer; all closed at the end."""
    made: list[Peer] = []
    svc = env.service

    def make(name: str, room: str, *, publish: bool = True, tok: str | None = None, **kwargs) -> Peer:
        if tok is None:
            tok = token(svc.sfu_key, svc.sfu_secret, name, room, name=name.title())
        p = Peer(tmp_path, name, svc.livekit_url, tok, publish=publish, **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def participants(env) -> float:
    return env.service.metric(PARTICIPANTS)


def wait_no_participants(env) -> None:
    """Participants of earlier tests have left (the gauge is back to 0)."""
    wait_for(lambda: participants(env) == 0, 20, f"{PARTICIPANTS} to drop to 0")


def wait_full_mesh(group: dict[str, Peer], *, video: int, audio_loud: int, timeout: float) -> None:
    for me, peer in group.items():
        for other in group:
            if other != me:
                peer.wait_media_from(other, video=video, audio_loud=audio_loud, timeout=timeout)


def wait_media_grows(group: dict[str, Peer], *, video: int, audio_loud: int, timeout: float) -> dict:
    """Every peer's counters for every other peer grow by `video` frames (with changing
    content) and `audio_loud` non-silent audio frames from now on. Returns the snapshots."""
    before = {(me, other): peer.remote(other) for me, peer in group.items() for other in group if other != me}
    for (me, other), r0 in before.items():

        def grown(st, other=other, r0=r0):
            r = st["remotes"].get(other)
            return (
                r
                and r["video_frames"] >= r0["video_frames"] + video
                and r["video_changes"] >= r0["video_changes"] + video // 2
                and r["audio_loud"] >= r0["audio_loud"] + audio_loud
            )

        group[me].wait(grown, timeout, f"{me}: {video} more video and {audio_loud} more loud audio frames from {other}")
    return before


def check_three_publishers(env, peers, pc: str) -> None:
    """Three participants publish 320x180@15 video and a sine; each decodes the other two.
    The server's counters say every one of them came through the path `pc` asked for."""
    svc = env.service
    paths = {"single": "/rtc/v1", "dual": "/rtc"}
    before = {path: svc.metric(SIGNAL_CONNECTIONS, path=path) for path in paths.values()}
    room = room_name(pc)
    group = {n: peers(n, room, pc=pc) for n in ("alice", "bob", "carol")}
    for p in group.values():
        assert p.state()["single_peer_connection"] is (pc == "single"), f"the peer did not ask the SDK for {pc} PC"

    wait_full_mesh(group, video=30, audio_loud=25, timeout=FIRST_MEDIA_S)
    wait_media_grows(group, video=15, audio_loud=25, timeout=MORE_MEDIA_S)
    # Everyone publishes a sine: the server's audio-level speaker detection names the others.
    for me, p in group.items():
        others = set(group) - {me}
        wait_for(lambda p=p, others=others: others <= set(p.state()["speakers"]), 15, f"{me} told the others speak")

    for me, peer in group.items():
        for other in group:
            if other == me:
                continue
            r = peer.remote(other)
            assert r["width"] > 0 and r["height"] > 0, f"{me} decoded frames of {other} without a size: {r}"
            print(
                f"{me} <- {other}: {r['video_frames']} video frames ({r['video_changes']} changed), "
                f"last {r['width']}x{r['height']}; audio {r['audio_frames']} frames, {r['audio_loud']} loud"
            )

    wait_for(lambda: participants(env) >= 3, 10, f"{PARTICIPANTS} >= 3")
    # Which signalling path: exactly three connections on the one asked for (no fallback),
    # none on the other (each test runs alone against the service).
    for mode, path in paths.items():
        grown = svc.metric(SIGNAL_CONNECTIONS, path=path) - before[path]
        assert grown == (3 if mode == pc else 0), f"{path}: {grown} new connections for {pc} PC peers"


def test_three_publishers_each_decode_the_other_two(env, peers):
    """(a) Dual peer connections (`/rtc`), the path older SDKs take."""
    check_three_publishers(env, peers, "dual")


def test_single_peer_connection_three_participants_see_each_other(env, peers):
    """The same over one peer connection each (`/rtc/v1`); the server
    counts the connections on that path, and its log never holds the join request."""
    check_three_publishers(env, peers, "single")
    log = env.service.log_path.read_text()
    assert "join_request=" not in log and "access_token=" not in log, "a query string reached the log"


def test_meetings_spread_over_the_shards_and_media_flows_on_each(env, peers):
    """The service runs two shards (engines with a UDP port each, `sfu.shards: 2`): a
    second meeting opens on the shard the first left idle, its participants reach that
    shard's port, and each pair decodes the other on its own engine."""
    svc = env.service
    wait_no_participants(env)

    def on_shard(i: int) -> float:
        return svc.metric("tchap_visio_sfu_shard_participants", shard=str(i))

    rooms = room_name("shard-a"), room_name("shard-b")
    first = {n: peers(n, rooms[0]) for n in ("anna", "basile")}
    wait_for(lambda: on_shard(0) + on_shard(1) == 2, 30, "the first pair joined")
    busy = 0 if on_shard(0) == 2 else 1
    assert on_shard(busy) == 2, "both of the first meeting on one shard"
    second = {n: peers(n, rooms[1]) for n in ("chloe", "denis")}
    wait_full_mesh(first, video=15, audio_loud=10, timeout=FIRST_MEDIA_S)
    wait_full_mesh(second, video=15, audio_loud=10, timeout=FIRST_MEDIA_S)
    assert on_shard(busy) == 2 and on_shard(1 - busy) == 2, (
        f"one meeting per shard: {on_shard(0)} and {on_shard(1)} participants"
    )
    # Media keeps flowing on both engines at once.
    wait_media_grows(first, video=15, audio_loud=10, timeout=MORE_MEDIA_S)
    wait_media_grows(second, video=15, audio_loud=10, timeout=MORE_MEDIA_S)


def test_late_joiner_decodes_each_remote_video(env, peers):
    """(b) A participant joining a running meeting decodes each remote video; the time is printed."""
    room = room_name("b")
    group = {n: peers(n, room) for n in ("alice", "bob")}
    wait_full_mesh(group, video=15, audio_loud=10, timeout=FIRST_MEDIA_S)

    t0 = time.monotonic()
    late = peers("dave", room, publish=False)
    for other in group:
        late.wait_media_from(other, video=1, timeout=30)
    st = late.state()
    connect_at = st["t_connect_start"]
    for other in group:
        r = st["remotes"][other]
        print(
            f"late joiner: first decoded frame of {other} {r['first_video_t'] - connect_at:.3f} s after connect() "
            f"({r['first_video_t'] - t0:.3f} s after spawning the process; joined after "
            f"{st['t_connected'] - connect_at:.3f} s), {r['width']}x{r['height']}"
        )
    for other in group:
        late.wait_media_from(other, video=15, audio_loud=10, timeout=MORE_MEDIA_S)
    for name, p in group.items():
        p.wait(
            lambda s: any(e["identity"] == "dave" for e in s["participant_connected"]),
            10,
            f"{name} to see dave join",
        )


def _chats(st: dict, sender: str, text: str) -> list[dict]:
    return [c for c in st.get("chat", []) if c["from"] == sender and c["text"] == text]


def test_chat_text_stream_and_server_injection(env, peers):
    """(c) lk.chat text streams reach the others and the engine counts each message once;
    chat injected through the API reaches everyone from the "tchap" participant."""
    svc = env.service
    room = room_name("c")
    group = {n: peers(n, room, publish=False) for n in ("alice", "bob", "carol")}
    for me, p in group.items():
        others = set(group) - {me}
        p.wait(lambda s, others=others: others <= set(s["remotes"]), 15, f"{me} to know {others}")

    before = svc.metric(CHAT_MESSAGES)
    # Message 1 in both shapes that chat components send (text stream + legacy packet, same id).
    sent = group["alice"].chat("bonjour à tous 👋", legacy=True)
    for name in ("bob", "carol"):
        group[name].wait(lambda s: _chats(s, "alice", "bonjour à tous 👋"), 15, f"{name} to receive alice's chat")
    # Message 2, a marker on the same (ordered, reliable) channel: once it has arrived the
    # server has handled everything alice sent before it.
    group["alice"].chat("marker")
    for name in ("bob", "carol"):
        group[name].wait(lambda s: _chats(s, "alice", "marker"), 15, f"{name} to receive alice's marker")
    wait_for(lambda: svc.metric(CHAT_MESSAGES) >= before + 2, 10, f"{CHAT_MESSAGES} to count 2 messages")
    assert svc.metric(CHAT_MESSAGES) == before + 2, "the engine must emit each chat message exactly once"

    for name in ("bob", "carol"):
        st = group[name].state()
        copies = _chats(st, "alice", "bonjour à tous 👋")
        assert len(copies) == 1, f"{name} got the text stream {len(copies)} times: {copies}"
        assert copies[0]["stream_id"] == sent["stream_id"]
        assert copies[0]["topic"] == "lk.chat"
    assert not _chats(group["alice"].state(), "alice", "marker"), "the sender got its own message back"

    # Server-side injection, authorised by a room_admin token for this room.
    url = f"{svc.url}/api/v1/rooms/{room}/chat"
    body = {"name": "Alice", "text": "bonjour"}
    admin = token(svc.sfu_key, svc.sfu_secret, "test-admin", room, room_join=False, room_admin=True)
    not_admin = token(svc.sfu_key, svc.sfu_secret, "test-user", room)
    other_room = token(svc.sfu_key, svc.sfu_secret, "test-admin", room + "-x", room_join=False, room_admin=True)
    for bad, why in ((None, "no token"), (not_admin, "no room_admin"), (other_room, "admin of another room")):
        headers = {"Authorization": f"Bearer {bad}"} if bad else {}
        r = requests.post(url, json=body, headers=headers, timeout=10)
        assert r.status_code in (401, 403), f"chat injection with {why}: {r.status_code} {r.text}"
    for hostile in ("Alice\u202e", "\u3164" * 3, "x" * 60):
        r = requests.post(url, json={"name": hostile, "text": "x"}, headers={"Authorization": f"Bearer {admin}"}, timeout=10)
        assert r.status_code == 400, f"author {hostile!r}: {r.status_code} {r.text}"
    r = requests.post(url, json=body, headers={"Authorization": f"Bearer {admin}"}, timeout=10)
    assert r.ok, f"chat injection refused: {r.status_code} {r.text}"
    for name, p in group.items():
        got = p.wait(lambda s: _chats(s, "tchap", "bonjour"), 15, f"{name} to receive the injected chat")
        # Marked as a server-side tool's words, never a person's.
        assert got[0]["attributes"].get("tchap.author_name") == "Alice (bot)", got
        assert got[0]["topic"] == "lk.chat"
        print(f"{name}: injected chat from 'tchap' known as {p.remote('tchap').get('name')!r}: {got[0]}")


def test_killed_participant_reported_disconnected_within_10s(env, peers):
    """(d) SIGKILL one participant: the others are told it left within 10 s."""
    room = room_name("d")
    group = {n: peers(n, room) for n in ("alice", "bob", "carol")}
    wait_full_mesh(group, video=10, audio_loud=5, timeout=FIRST_MEDIA_S)
    wait_for(lambda: participants(env) >= 3, 10, f"{PARTICIPANTS} >= 3")
    gauge_before = participants(env)

    t_kill = time.monotonic()
    group["carol"].kill()
    for name in ("alice", "bob"):
        ev = group[name].wait(
            lambda s: next((e for e in s["participant_disconnected"] if e["identity"] == "carol"), None),
            20,
            f"{name} to see carol disconnected",
        )
        latency = ev["t"] - t_kill
        print(f"{name} saw carol disconnected {latency:.2f} s after SIGKILL (reason {ev['reason']})")
        assert latency <= 10, f"{name} was told only after {latency:.1f} s"
    wait_for(lambda: participants(env) <= gauge_before - 1, 10, f"{PARTICIPANTS} to drop after the kill")
    # The survivors still exchange media.
    wait_media_grows({n: group[n] for n in ("alice", "bob")}, video=15, audio_loud=10, timeout=MORE_MEDIA_S)


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).rstrip(b"=").decode()


def _claims(env, identity: str, room: str) -> dict:
    svc = env.service
    return jwt.decode(token(svc.sfu_key, svc.sfu_secret, identity, room), options={"verify_signature": False})


def test_bad_tokens_are_refused(env, peers):
    """(e) Expired, not yet valid, unknown key, wrong secret, alg none, no roomJoin: refused,
    and never counted as participants."""
    svc = env.service
    room = room_name("e")
    key, secret = svc.sfu_key, svc.sfu_secret
    now = int(time.time())

    expired = {**_claims(env, "expired", room), "nbf": now - 7200, "exp": now - 3600}
    future = {**_claims(env, "future", room), "nbf": now + 3600, "exp": now + 7200}
    bad = {
        "expired": jwt.encode(expired, secret, algorithm="HS256"),
        "not-yet-valid": jwt.encode(future, secret, algorithm="HS256"),
        "unknown-key": token("otherkey", secret, "unknown-key", room),
        "wrong-secret": token(key, secrets.token_urlsafe(36), "wrong-secret", room),
        "alg-none": _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims(env, "alg-none", room)) + ".",
        "no-room-join": token(key, secret, "no-room-join", room, room_join=False),
    }

    wait_no_participants(env)
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append(participants(env))
            except requests.RequestException:
                pass
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        attempts = {
            name: peers(name, room, publish=False, tok=tok, once=True, wait_connected=False, chat_log=False)
            for name, tok in bad.items()
        }
        results = {name: p.wait_exit(40) for name, p in attempts.items()}
    finally:
        stop.set()
        sampler.join(5)
    for name, (code, st) in results.items():
        assert code == 2 and st.get("phase") == "failed", f"token {name!r} was not refused: exit {code}, {st}"
        # A refusal the SDK does not retry: 401 from the upgrade (and /rtc/validate).
        assert "401" in (st.get("error") or ""), f"token {name!r}: {st.get('error')}"
        print(f"{name}: {st['error']}")
    assert samples, "no sample of the participants gauge was taken"
    assert max(samples) == 0, f"{PARTICIPANTS} counted a refused participant: max {max(samples)}"

    # Control: the same sampling sees a participant with a good token.
    samples.clear()
    stop.clear()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        good = peers("good", room, publish=False)
        wait_for(lambda: samples and max(samples) >= 1, 10, "the sampler to see the good participant")
    finally:
        stop.set()
        sampler.join(5)
    good.close()


def test_signal_reconnect_resumes_without_losing_media(env, peers):
    """(f) simulate_scenario(SIMULATE_SIGNAL_RECONNECT) drops alice's WebSocket: she resumes
    (same participant, same tracks), media keeps flowing, nobody sees her leave."""
    svc = env.service
    room = room_name("f")
    group = {n: peers(n, room) for n in ("alice", "bob")}
    alice, bob = group["alice"], group["bob"]
    wait_full_mesh(group, video=30, audio_loud=25, timeout=FIRST_MEDIA_S)

    resumes_before = svc.metric(RESUMES)
    st0 = alice.state()
    joins_seen_by_bob = sum(e["identity"] == "alice" for e in bob.state()["participant_connected"])

    alice.simulate("signal_reconnect")
    ev = alice.wait(
        lambda s: next((e for e in s["room_events"] if e["event"] == "reconnected"), None),
        30,
        "alice's SDK to report the reconnection",
    )
    wait_for(lambda: svc.metric(RESUMES) >= resumes_before + 1, 10, f"{RESUMES} to count the resume")
    t_resumed = ev["t"]
    print(f"alice resumed {t_resumed - st0['t_connected']:.2f} s after she first joined; events: {alice.state()['room_events']}")

    # Media after the resume, both ways, audio and video.
    wait_media_grows(group, video=30, audio_loud=25, timeout=MORE_MEDIA_S)

    st1, bst = alice.state(), bob.state()
    assert ev["sid"] == st0["sid"] == st1["sid"], "alice came back as a new participant (full reconnect, not resume)"
    assert st1["published"] == st0["published"], "alice's tracks were republished"
    assert not [e for e in bst["participant_disconnected"] if e["identity"] == "alice"], "bob saw alice leave"
    assert sum(e["identity"] == "alice" for e in bst["participant_connected"]) == joins_seen_by_bob, (
        "bob saw alice join again"
    )
    # A full reconnect makes the SDK drop every remote participant locally first.
    assert not st1["participant_disconnected"], f"alice's SDK dropped participants: {st1['participant_disconnected']}"
    assert st1["phase"] == "connected"


def test_meeting_link_to_media(env, peers):
    """`meeting create` → the join endpoint → LiveKit's SDK with the returned URL and token."""
    svc = env.service
    created = svc.cli("meeting", "create", "--title", "Point hebdo", "-c", str(svc.config_path))
    assert created.returncode == 0, created.stdout
    link = next(line.split()[-1] for line in created.stdout.splitlines() if "/m/" in line)
    slug = link.rsplit("/m/", 1)[1]
    meeting_id = next(line.split()[-1] for line in created.stdout.splitlines() if line.strip().startswith("id:"))

    joins = []
    for name in ("Agathe", "Bruno"):
        r = requests.post(f"{svc.url}/api/v1/meetings/{slug}/join", json={"name": name}, timeout=10)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["url"].startswith("ws://") and body["meeting"]["id"] == meeting_id, body
        claims = jwt.decode(body["token"], options={"verify_signature": False})
        assert claims["video"]["room"] == meeting_id and claims["name"] == name, claims
        joins.append(body)
    assert joins[0]["identity"] != joins[1]["identity"], "identities are unique per join"

    a = peers("agathe", meeting_id, tok=joins[0]["token"])
    b = peers("bruno", meeting_id, tok=joins[1]["token"])
    a.wait_media_from(joins[1]["identity"], video=5, timeout=FIRST_MEDIA_S)
    b.wait_media_from(joins[0]["identity"], video=5, timeout=FIRST_MEDIA_S)
    assert requests.post(f"{svc.url}/api/v1/meetings/not-a-slug/join", json={"name": "X"}, timeout=10).status_code == 404


LAYERS_RECEIVED = "tchap_visio_sfu_simulcast_layers_received"
LAYER_SWITCHES = "tchap_visio_sfu_layer_switches_total"
DYNACAST_UPDATES = "tchap_visio_sfu_dynacast_updates_total"


@pytest.mark.parametrize("pc", ["single", "dual"])
def test_simulcast_layer_follows_the_quality_asked_and_dynacast_pauses_the_rest(env, peers, pc):
    """A simulcast publisher (1280x720, q/h/f); a viewer asks for LOW then
    HIGH and the decoded size follows without a decoding stall; with nobody wanting more
    than LOW, the publisher (dynacast on) stops sending the upper layers, and sends them
    again when they are wanted. In both peer connection modes."""
    svc = env.service
    # The layer gauges count every room: earlier tests' publishers must be gone.
    wait_no_participants(env)
    room = room_name(f"simulcast-{pc}")
    args = ["--simulcast", "--size", "1280x720", "--dynacast"]
    alice = peers("alice", room, publish=True, pc=pc, extra_args=args)
    bob = peers("bob", room, publish=False, pc=pc)
    bob.wait_media_from("alice", video=15, audio_loud=0, timeout=FIRST_MEDIA_S)
    # Unasked, a viewer gets the best layer the publisher sends, once the bandwidth
    # estimate has grown to carry it (probing on loopback: seconds).
    bob.wait(lambda st: st["remotes"]["alice"]["width"] >= 1280, FIRST_MEDIA_S, "the full layer (1280 wide)")
    wait_for(lambda: svc.metric(LAYERS_RECEIVED, rid="f") >= 1, 10, "the server to receive layer f")
    switches_before = svc.metric(LAYER_SWITCHES)

    def switch(quality: str, arrived, what: str) -> dict:
        r0 = bob.remote("alice")
        t0 = time.monotonic()
        result = bob.send("video_quality", identity="alice", quality=quality)
        assert all(result["simulcasted"]), f"the SDK does not see the track as simulcast: {result}"
        st = bob.wait(lambda st: st if arrived(st["remotes"]["alice"]["width"]) else None, FIRST_MEDIA_S, what)
        took = time.monotonic() - t0
        r1 = st["remotes"]["alice"]
        # No stall: frames go on arriving after the switch, and the longest wait between
        # two decoded frames stays far below what a frozen decoder would show.
        bob.wait(
            lambda st: st["remotes"]["alice"]["video_frames"] >= r1["video_frames"] + 15,
            MORE_MEDIA_S,
            "15 more frames after the switch",
        )
        r2 = bob.remote("alice")
        print(
            f"{pc} PC, {quality}: {r0['width']}x{r0['height']} -> {r1['width']}x{r1['height']} in {took:.2f} s; "
            f"longest gap between decoded frames so far {r2['max_video_gap']:.3f} s; sizes {r2['sizes'][-3:]}"
        )
        assert r2["max_video_gap"] < 3.0, f"a decoding stall of {r2['max_video_gap']:.2f} s"
        return r2

    switch("low", lambda w: 0 < w <= 320, "the low layer (at most 320 wide)")
    # Dynacast: only LOW is wanted, so the publisher is told to pause h and f, and does.
    # Each layer is seen paused once its own packets stop, so f and h may go quiet a
    # housekeeping tick apart: wait for both.
    wait_for(
        lambda: svc.metric(LAYERS_RECEIVED, rid="f") == 0 and svc.metric(LAYERS_RECEIVED, rid="h") == 0,
        20,
        "the publisher to pause layers h and f",
    )
    assert svc.metric(LAYERS_RECEIVED, rid="q") >= 1, "the wanted low layer stopped"
    assert svc.metric(DYNACAST_UPDATES) >= 1

    switch("high", lambda w: w >= 1280, "the full layer again (1280 wide)")
    wait_for(lambda: svc.metric(LAYERS_RECEIVED, rid="f") >= 1, 10, "the publisher to resume layer f")
    assert svc.metric(LAYER_SWITCHES) >= switches_before + 2
    assert alice.alive()


def test_a_two_layer_simulcast_publisher_switches_down_and_up(env, peers):
    """A 640x360 simulcast publisher: LiveKit's SDKs send two layers there, q and h
    (announced LOW and MEDIUM), no f. A viewer asking for LOW is switched to q (and
    dynacast pauses h), asking for HIGH brings h back: the best layer there is."""
    svc = env.service
    wait_no_participants(env)
    room = room_name("two-layers")
    alice = peers("alice", room, publish=True, pc="dual", extra_args=["--simulcast", "--size", "640x360", "--dynacast"])
    bob = peers("bob", room, publish=False, pc="dual")
    bob.wait_media_from("alice", video=15, audio_loud=0, timeout=FIRST_MEDIA_S)
    wait_for(
        lambda: svc.metric(LAYERS_RECEIVED, rid="q") >= 1 and svc.metric(LAYERS_RECEIVED, rid="h") >= 1,
        FIRST_MEDIA_S,
        "the server to receive layers q and h",
    )
    assert svc.metric(LAYERS_RECEIVED, rid="f") == 0, "a 640x360 publisher sends no f"

    def forwarded() -> list[str]:
        # The layers the server switched bob to, in order: its debug log names them. The
        # decoded size cannot tell: LiveKit's Rust core (under the Python SDK) encodes a
        # 640x360 camera's q from its 360p preset, so q is 640x360 too (at a lower bit
        # rate and frame rate than h).
        return re.findall(r'simulcast layer switch .*layer="?([qhf])', svc.log_path.read_text())

    def switch(quality: str, rid: str) -> None:
        seen = len(forwarded())
        frames = bob.remote("alice")["video_frames"]
        result = bob.send("video_quality", identity="alice", quality=quality)
        assert all(result["simulcasted"]), f"the SDK does not see the track as simulcast: {result}"
        wait_for(lambda: rid in forwarded()[seen:], FIRST_MEDIA_S, f"bob switched to {rid} after asking {quality}")
        bob.wait(
            lambda st: st["remotes"]["alice"]["video_frames"] >= frames + 15, MORE_MEDIA_S, "15 more frames after the switch"
        )
        r = bob.remote("alice")
        print(f"{quality}: layers forwarded {forwarded()}, decoded sizes {r['sizes'][-3:]}")
        assert r["max_video_gap"] < 3.0, f"a decoding stall of {r['max_video_gap']:.2f} s"

    switch("low", "q")
    wait_for(lambda: svc.metric(LAYERS_RECEIVED, rid="h") == 0, 20, "the publisher to pause h")
    assert svc.metric(LAYERS_RECEIVED, rid="q") >= 1, "the wanted low layer stopped"
    switch("high", "h")
    wait_for(lambda: svc.metric(LAYERS_RECEIVED, rid="h") >= 1, 10, "the publisher to resume h")
    assert alice.alive()
