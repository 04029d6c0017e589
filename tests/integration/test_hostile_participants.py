"""Hostile participants over real sockets: LiveKit's Python SDK peers joined
through a meeting link the bot posted in a real Synapse room, and raw signalling
WebSockets where an SDK would not misbehave on purpose. A link must not be enough to
exhaust the server's memory, speak as someone else, publish private messages, forge an
identity, or flood the others.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import socket
import time
import urllib.parse

import pytest
import requests

try:
    import aiohttp
    import livekit.rtc  # noqa: F401
    from livekit.protocol import models as lk_models
    from livekit.protocol import rtc as lk_rtc
except Exception as e:  # noqa: BLE001 - any import failure means the SDK is unusable here
    if os.environ.get("CI"):
        pytest.fail(f"LiveKit's Python SDK cannot be imported in CI: {e!r}", pytrace=False)
    pytest.skip(f"LiveKit's Python SDK cannot be imported: {e!r}", allow_module_level=True)

from harness import Env, wait_for
from harness.lkpeer import Peer, token
from harness.webhooks import WebhookReceiver

# Generous deadlines for a loaded 2-core machine; they bound waits, they are not speed claims.
DEADLINE_S = 30
LINK = re.compile(r"https?://\S+/m/([A-Za-z0-9]+)")


@pytest.fixture(scope="module")
def hooks():
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def env(tmp_path_factory, hooks):
    e = Env(tmp_path_factory.mktemp("hostile"), overrides={"webhooks": [hooks.config()]})
    yield e
    e.close()


def body(e: dict) -> str:
    return e.get("content", {}).get("body", "") if e.get("type") == "m.room.message" else ""


def in_thread(e: dict, root: str) -> bool:
    rel = e.get("content", {}).get("m.relates_to") or {}
    return rel.get("rel_type") == "m.thread" and rel.get("event_id") == root


def wait_event(user, room: str, pred, what: str, timeout: float = DEADLINE_S) -> dict:
    def found():
        user.sync(500)
        return next((e for e in user.timelines.get(room, []) if pred(e)), None)

    return wait_for(found, timeout, what, interval=0)


def meeting_in_a_room(env, user_name: str, title: str) -> tuple[object, str, dict, str]:
    """A room with the bot, `!visio <title>`: (user, room id, link notice, slug)."""
    user, room = env.room_with_bot(user_name, name=title)
    user.send_text(room, f"!visio {title}")
    notice = wait_event(
        user, room, lambda e: e.get("sender") == env.bot and title in body(e) and LINK.search(body(e)), "the link notice"
    )
    return user, room, notice, LINK.search(body(notice)).group(1)


def join(env, tmp_path, slug: str, name: str, session: requests.Session | None = None, **kwargs) -> tuple[Peer, dict]:
    """Joins through the page's endpoint (with the browser's cookie jar when given)."""
    http = session or requests
    r = http.post(f"{env.service.url}/api/v1/meetings/{slug}/join", json={"name": name}, timeout=10)
    assert r.status_code == 200, r.text
    grant = r.json()
    return Peer(tmp_path, re.sub(r"\W", "", name.lower()) or "peer", grant["url"], grant["token"], **kwargs), grant


def chats_seen(peer: Peer, text: str) -> list[dict]:
    return [c for c in peer.state().get("chat", []) if c["text"] == text]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def create_bot_token(env, name: str) -> str:
    svc = env.service
    r = svc.cli("api-token", "create", "--name", name, "--all-rooms", "-c", str(svc.config_path))
    assert r.returncode == 0, r.stdout
    return r.stdout.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------
# Memory: a flood of metadata updates next to a participant that never reads
# --------------------------------------------------------------------------------------


def silent_websocket(svc, tok: str) -> socket.socket:
    """A signalling WebSocket whose client never reads after the upgrade: a real socket
    with a tiny receive buffer, so the server's writes back up into its own queue."""
    url = urllib.parse.urlparse(svc.livekit_url)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((url.hostname, url.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /rtc?auto_subscribe=1 HTTP/1.1\r\nHost: {url.hostname}:{url.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {tok}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        assert chunk, "closed during the upgrade"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s


async def ws_join(session, svc, identity: str, room_name: str, **grants):
    tok = token(svc.sfu_key, svc.sfu_secret, identity, room_name, **grants)
    ws = await session.ws_connect(f"{svc.livekit_url}/rtc?auto_subscribe=1", headers={"Authorization": f"Bearer {tok}"})
    return ws


async def next_response(ws, kind: str, timeout: float = 10, pred=lambda r: True):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        message = await asyncio.wait_for(ws.receive(), max(0.1, end - loop.time()))
        assert message.type == aiohttp.WSMsgType.BINARY, message
        response = lk_rtc.SignalResponse()
        response.ParseFromString(message.data)
        if response.WhichOneof("message") == kind and pred(response):
            return response


def test_a_metadata_flood_next_to_a_silent_reader_keeps_memory_bounded(env):
    """Before: one client sending 200 KiB attribute frames next to one that never read
    took the server from 28 MB to 515 MB in 3 s. Now oversize attributes are refused,
    each participant's updates are rate-limited (so flooders cannot make the server
    broadcast on their behalf), what waits for a member is bounded, flooders are cut
    off, and the silent reader leaves the meeting while the others go on."""
    svc = env.service
    pid = svc.proc.pid
    room_name = f"flood-{os.urandom(4).hex()}"
    before = rss_kib(pid)
    peak = before

    async def flood(ws, frames) -> int:
        nonlocal peak
        sent = 0
        for i, attributes in enumerate(frames):
            request = lk_rtc.SignalRequest(update_metadata=lk_rtc.UpdateParticipantMetadata(attributes=attributes, request_id=i + 1))
            try:
                await ws.send_bytes(request.SerializeToString())
            except (ConnectionError, aiohttp.ClientError):
                break  # the server cut this flooder off: fine too
            sent += 1
            if i % 100 == 0:
                peak = max(peak, rss_kib(pid))
                await asyncio.sleep(0)
        return sent

    async def scenario():
        nonlocal peak
        async with aiohttp.ClientSession() as session:
            observer = await ws_join(session, svc, "observer", room_name)
            await next_response(observer, "join")
            seen: list = []

            async def read_observer():
                # An ordinary client reads everything as it comes.
                while True:
                    message = await observer.receive()
                    if message.type != aiohttp.WSMsgType.BINARY:
                        seen.append(None)
                        return
                    response = lk_rtc.SignalResponse()
                    response.ParseFromString(message.data)
                    seen.append(response)

            reader = asyncio.create_task(read_observer())

            async def keep_observer_alive():
                # A media-less client is removed after 7 s without signalling; an empty
                # subscription update is what keeps this one present, as media would.
                while True:
                    await observer.send_bytes(lk_rtc.SignalRequest(subscription=lk_rtc.UpdateSubscription()).SerializeToString())
                    await asyncio.sleep(1)

            alive = asyncio.create_task(keep_observer_alive())
            silent = silent_websocket(svc, token(svc.sfu_key, svc.sfu_secret, "silent", room_name))
            attackers = []
            for n in range(4):
                ws = await ws_join(session, svc, f"attacker{n}", room_name, can_update_own_metadata=True)
                await next_response(ws, "join")
                attackers.append(ws)
            # 1,000 valid updates from each (16 attributes, under 1 KiB: every member gets
            # each one), then 1,000 of 200 KiB (over the attribute budget: refused).
            valid = [{f"k{j}": f"{i}-{j}-" + "v" * 40 for j in range(16)} for i in range(1000)]
            sent = await asyncio.gather(*(flood(ws, valid) for ws in attackers))
            big = [{"blob": "x" * (200 * 1024)}] * 1000
            sent_big = await flood(await ws_join(session, svc, "attacker-big", room_name, can_update_own_metadata=True), big)
            print(f"valid updates sent per attacker: {sent}; oversize: {sent_big}")

            # The silent reader leaves the meeting: the observer hears it.
            def silent_gone():
                assert None not in seen, "the observer, which reads, was disconnected"
                return any(
                    p.identity == "silent" and p.state == lk_models.ParticipantInfo.State.DISCONNECTED
                    for r in seen
                    if r.WhichOneof("message") == "update"
                    for p in r.update.participants
                )

            loop = asyncio.get_running_loop()
            end = loop.time() + DEADLINE_S
            while not silent_gone():
                assert loop.time() < end, "the silent reader is still in the meeting"
                peak = max(peak, rss_kib(pid))
                await asyncio.sleep(0.1)
            # The meeting goes on: the observer still talks to the server.
            await observer.send_bytes(lk_rtc.SignalRequest(ping=42).SerializeToString())
            while not any(r is not None and r.WhichOneof("message") == "pong" for r in seen):
                assert None not in seen and loop.time() < end + 10, "no pong"
                await asyncio.sleep(0.05)
            reader.cancel()
            alive.cancel()
            silent.close()
            for ws in [observer, *attackers]:
                await ws.close()

    asyncio.run(scenario())
    growth_mib = (peak - before) / 1024
    print(f"RSS before {before} KiB, peak {peak} KiB, growth {growth_mib:.1f} MiB")
    assert growth_mib < 64, f"memory grew by {growth_mib:.1f} MiB under the flood"
    assert svc.metric("tchap_visio_sfu_requests_refused_total", reason="LIMIT_EXCEEDED") >= 1
    assert requests.get(f"{svc.url}/health", timeout=5).status_code == 200


# --------------------------------------------------------------------------------------
# Identity: grants, renames, metadata and reserved attributes
# --------------------------------------------------------------------------------------


def test_renames_metadata_and_reserved_attributes_cannot_forge_an_identity(env, tmp_path):
    _, _, _, slug = meeting_in_a_room(env, "rose", "Identité")
    mallory, _ = join(env, tmp_path, slug, "Mallory")
    bob, _ = join(env, tmp_path, slug, "Bob")
    mallory_id = mallory.identity
    bob.wait(lambda st: st.get("remotes", {}).get(mallory_id), DEADLINE_S, "bob sees mallory")

    refused = lambda reason: env.service.metric("tchap_visio_sfu_requests_refused_total", reason=reason)  # noqa: E731
    before = {r: refused(r) for r in ("INVALID_NAME", "NOT_ALLOWED", "LIMIT_EXCEEDED")}
    # LiveKit's Python SDK does not surface the server's refusal (livekit-client rejects
    # the call); what counts is that nobody else ever sees these.
    hostile_names = [
        "x" * 700,
        "Ministre\u202e\u200b" + "\u3164" * 40,
        "Bob\u200d",
    ]
    for name in hostile_names:
        mallory.send("set_name", name=name)
    for attributes in ({"tchap.matrix_user_id": "@ministre:tchap.gouv.fr"}, {"a": "x" * 2000}, {f"k{i}": "v" for i in range(17)}):
        mallory.send("set_attributes", attributes=attributes)
    mallory.send("set_metadata", metadata='{"matrix_user_id": "@ministre:tchap.gouv.fr", "verified": true}')

    # What the page does is allowed: a raised hand, a plain rename.
    mallory.send("set_attributes", attributes={"hand": "up"})
    mallory.send("set_name", name="Mallory D.")
    seen = bob.wait(
        lambda st: (r := st.get("remotes", {}).get(mallory_id)) and r.get("attributes", {}).get("hand") == "up" and r.get("name") == "Mallory D." and r,
        DEADLINE_S,
        "bob sees the raised hand and the rename",
    )
    # Updates are applied in order: had any hostile one been accepted, bob would hold it.
    assert seen["metadata"] == "", seen
    # Only the raised hand, besides what the server set at join (how she came in).
    assert seen["attributes"] == {"hand": "up", "tchap.access": "public"}, seen
    assert refused("INVALID_NAME") >= before["INVALID_NAME"] + 3
    assert refused("NOT_ALLOWED") >= before["NOT_ALLOWED"] + 2
    assert refused("LIMIT_EXCEEDED") >= before["LIMIT_EXCEEDED"] + 2
    mallory.close()
    bob.close()


def test_a_guest_with_another_guests_browser_id_gets_its_own_ghost(env, tmp_path):
    rose, room, notice, slug = meeting_in_a_room(env, "rose2", "Fantômes")
    root = notice["event_id"]
    browser = requests.Session()
    agathe, grant_a = join(env, tmp_path, slug, "Agathe", session=browser)
    # What everyone in the meeting sees of Agathe: her identity; its stable part is all
    # an attacker could copy, into the old body field or a forged cookie.
    stable = grant_a["identity"].rsplit("-", 1)[0]
    assert not any(stable in c.value for c in browser.cookies), "the room never sees the browser id"
    forged = requests.Session()
    forged.cookies.set("tv_browser", f"{stable}.{'0' * 32}", path="/api/v1/meetings")
    r = forged.post(f"{env.service.url}/api/v1/meetings/{slug}/join", json={"name": "Agathe", "browser_id": stable}, timeout=10)
    assert r.status_code == 200, r.text
    eve_grant = r.json()
    assert eve_grant["identity"].rsplit("-", 1)[0] != stable
    eve = Peer(tmp_path, "eve", eve_grant["url"], eve_grant["token"])

    agathe.chat("Je suis Agathe")
    eve.chat("Moi aussi, je suis Agathe")
    mirrored_a = wait_event(rose, room, lambda e: in_thread(e, root) and body(e) == "Je suis Agathe", "agathe's chat")
    mirrored_e = wait_event(rose, room, lambda e: in_thread(e, root) and body(e) == "Moi aussi, je suis Agathe", "eve's chat")
    assert mirrored_a["sender"] != mirrored_e["sender"], "eve spoke as agathe's ghost"

    # The real Agathe rejoining from her browser keeps her ghost.
    agathe.close()
    agathe2, grant_a2 = join(env, tmp_path, slug, "Agathe", session=browser)
    assert grant_a2["identity"].rsplit("-", 1)[0] == stable
    agathe2.chat("Toujours moi")
    again = wait_event(rose, room, lambda e: in_thread(e, root) and body(e) == "Toujours moi", "agathe's second chat")
    assert again["sender"] == mirrored_a["sender"]
    agathe2.close()
    eve.close()


# --------------------------------------------------------------------------------------
# Private messages, Markdown from guests, floods
# --------------------------------------------------------------------------------------


def test_private_chat_stays_private_and_guest_markdown_stays_plain(env, hooks, tmp_path):
    rose, room, notice, slug = meeting_in_a_room(env, "rose3", "Confidentiel")
    root = notice["event_id"]
    zoe, _ = join(env, tmp_path, slug, "Zoé")
    paul, _ = join(env, tmp_path, slug, "Paul")
    claire, _ = join(env, tmp_path, slug, "Claire")
    for p in (paul, claire):
        p.wait(lambda st: st.get("remotes", {}).get(zoe.identity), DEADLINE_S, "sees zoé")

    secret = "Le code du coffre est 1234"
    zoe.chat(secret, to=[paul.identity])
    paul.wait(lambda st: any(c["text"] == secret for c in st.get("chat", [])), DEADLINE_S, "paul gets the private message")

    # A heading and a link whose text hides its target, then a public marker message.
    zoe.chat("# Message officiel")
    zoe.chat("[https://tchap.gouv.fr](https://evil.example/login)")
    zoe.chat("fin du test, **merci**")
    marker = wait_event(rose, room, lambda e: in_thread(e, root) and "fin du test" in body(e), "the public message")
    assert marker["content"].get("formatted_body") == "<p>fin du test, <strong>merci</strong></p>", marker["content"]
    heading = wait_event(rose, room, lambda e: in_thread(e, root) and "Message officiel" in body(e), "the heading")
    assert heading["content"]["body"] == "# Message officiel" and "formatted_body" not in heading["content"], heading["content"]
    link = wait_event(rose, room, lambda e: in_thread(e, root) and "evil.example" in body(e), "the disguised link")
    assert "formatted_body" not in link["content"], link["content"]

    # Claire, not a recipient, never saw it; nor did the thread, the database (bot API)
    # or the webhooks.
    assert not chats_seen(claire, secret)
    thread_bodies = [body(e) for e in rose.timelines.get(room, [])]
    assert not any(secret in b for b in thread_bodies)
    bot = create_bot_token(env, "audit")
    meetings = requests.get(
        f"{env.service.url}/api/v1/rooms/{urllib.parse.quote(room, safe='')}/meetings",
        headers={"Authorization": f"Bearer {bot}"},
        timeout=10,
    ).json()["meetings"]
    detail = requests.get(f"{env.service.url}/api/v1/meetings/{meetings[0]['id']}", headers={"Authorization": f"Bearer {bot}"}, timeout=10).json()
    texts = [c["text"] if "text" in c else c.get("body", "") for c in detail["chat"]]
    assert any("fin du test" in t for t in texts), texts
    assert not any(secret in t for t in texts), texts
    hooks.wait_accepted(lambda ds: any("fin du test" in str(d.body) for d in ds), DEADLINE_S, "the public chat webhook")
    assert not any(secret in str(d.body) for d in hooks.all())
    for p in (zoe, paul, claire):
        p.close()


def test_a_data_flood_is_throttled_and_the_others_go_on(env, tmp_path):
    _, room, _, slug = meeting_in_a_room(env, "rose4", "Inondation")
    flooder, _ = join(env, tmp_path, slug, "Flood")
    anne, _ = join(env, tmp_path, slug, "Anne")
    bruno, _ = join(env, tmp_path, slug, "Bruno")
    bruno.wait(lambda st: st.get("remotes", {}).get(anne.identity), DEADLINE_S, "bruno sees anne")
    dropped_before = env.service.metric("tchap_visio_sfu_packets_dropped_total", reason="data_rate")

    # 6 MB of reliable data (every byte reaches the server), as fast as the SDK sends.
    count, size = 400, 15_000
    t0 = time.monotonic()
    flooder.send("flood", count=count, size=size, timeout=120)
    anne.chat("toujours là")
    bruno.wait(lambda st: any(c["text"] == "toujours là" for c in st.get("chat", [])), DEADLINE_S, "anne's chat reaches bruno")
    elapsed = time.monotonic() - t0
    relayed = sum(d["size"] for d in bruno.state().get("data", []) if d.get("topic") == "flood")
    dropped = env.service.metric("tchap_visio_sfu_packets_dropped_total", reason="data_rate") - dropped_before
    # What the server lets one participant send: a burst of 1 MiB, then 256 KiB a second.
    budget = 1024 * 1024 + 256 * 1024 * elapsed
    print(f"flood: {count * size} bytes sent in ~{elapsed:.1f} s, {relayed} relayed to bruno (budget {budget:.0f}), {dropped:.0f} packets dropped")
    assert relayed <= budget + size, "more was relayed than the budget allows"
    assert dropped > 0 or count * size <= budget, "nothing was throttled"
    # Attendance is exact: three people, each once, all still present.
    bot = create_bot_token(env, "attendance")
    auth = {"Authorization": f"Bearer {bot}"}
    listed = requests.get(
        f"{env.service.url}/api/v1/rooms/{urllib.parse.quote(room, safe='')}/meetings", headers=auth, timeout=10
    ).json()["meetings"]
    detail = requests.get(f"{env.service.url}/api/v1/meetings/{listed[0]['id']}", headers=auth, timeout=10).json()
    names = sorted(a["name"] for a in detail["attendance"])
    assert names == ["Anne (invité·e)", "Bruno (invité·e)", "Flood (invité·e)"], names
    for p in (flooder, anne, bruno):
        p.close()
