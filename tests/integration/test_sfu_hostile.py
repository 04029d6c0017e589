"""Hostile input against the SFU over real sockets: malformed and oversize signalling
frames, garbage datagrams on the media port, hostile ICE-TCP connections, wrong paths. Nothing may crash the service,
and a well-behaved session must keep working next to the bad one."""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import socket
import uuid

import pytest
import requests

try:
    import aiohttp
    from livekit.protocol import rtc as lk_rtc  # the SDK's own protobuf types
except Exception as e:  # noqa: BLE001
    if os.environ.get("CI"):
        pytest.fail(f"LiveKit's Python SDK cannot be imported in CI: {e!r}", pytrace=False)
    pytest.skip(f"LiveKit's Python SDK cannot be imported: {e!r}", allow_module_level=True)

from harness import wait_for
from harness.lkpeer import token

BAD_FRAMES = "tchap_visio_signal_bad_frames_total"
DROPPED = "tchap_visio_sfu_packets_dropped_total"


def room() -> str:
    return f"hostile-{uuid.uuid4().hex[:8]}"


async def open_session(svc, identity: str, room_name: str):
    """A raw /rtc WebSocket with a valid token; returns (session, ws, join response)."""
    session = aiohttp.ClientSession()
    tok = token(svc.sfu_key, svc.sfu_secret, identity, room_name)
    ws = await session.ws_connect(f"{svc.livekit_url}/rtc?auto_subscribe=1", headers={"Authorization": f"Bearer {tok}"})
    first = await asyncio.wait_for(ws.receive(), 10)
    response = lk_rtc.SignalResponse()
    response.ParseFromString(first.data)
    assert response.WhichOneof("message") == "join", response
    return session, ws, response.join


async def ping_pong(ws) -> None:
    """A legacy ping gets a pong: the session is alive and answering."""
    request = lk_rtc.SignalRequest(ping=12345)
    await ws.send_bytes(request.SerializeToString())
    while True:
        message = await asyncio.wait_for(ws.receive(), 10)
        assert message.type == aiohttp.WSMsgType.BINARY, message
        response = lk_rtc.SignalResponse()
        response.ParseFromString(message.data)
        if response.WhichOneof("message") == "pong":
            return


def test_malformed_frames_are_counted_and_the_session_survives(env):
    svc = env.service
    before = svc.metric(BAD_FRAMES)

    async def scenario():
        session, ws, join = await open_session(svc, "mallory", room())
        assert join.participant.sid.startswith("PA_")
        for garbage in (b"\xff\xff\xff\xff", b"\x0a\xff\x01", os.urandom(300)):
            await ws.send_bytes(garbage)
        await ws.send_str("{not protobuf}")  # text frames are ignored
        await ping_pong(ws)
        await ws.close()
        await session.close()

    asyncio.run(scenario())
    assert svc.metric(BAD_FRAMES) >= before + 2, "malformed frames were not seen as such"
    assert requests.get(f"{svc.url}/health", timeout=5).status_code == 200


def test_an_oversize_frame_closes_only_that_session(env):
    svc = env.service

    async def scenario():
        name = room()
        session_a, ws_a, _ = await open_session(svc, "big", name)
        session_b, ws_b, _ = await open_session(svc, "small", name)
        await ws_a.send_bytes(b"\x00" * (1024 * 1024))
        ending = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        while (message := await asyncio.wait_for(ws_a.receive(), 10)).type not in ending:
            assert message.type == aiohttp.WSMsgType.BINARY, message  # signalling queued before the close
        await ping_pong(ws_b)
        await ws_b.close()
        await session_a.close()
        await session_b.close()

    asyncio.run(scenario())
    assert requests.get(f"{svc.url}/health", timeout=5).status_code == 200


def test_garbage_datagrams_are_dropped(env):
    svc = env.service
    before = svc.metric(DROPPED)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for payload in (b"", b"\x00", os.urandom(1200), b"GET / HTTP/1.1\r\n\r\n", b"\x00\x01\x00\x00" + os.urandom(16)):
            sock.sendto(payload, ("127.0.0.1", svc.sfu_udp_port))
    finally:
        sock.close()
    wait_for(lambda: svc.metric(DROPPED) >= before + 3, 10, "garbage datagrams counted as dropped")
    assert requests.get(f"{svc.url}/health", timeout=5).status_code == 200


def test_hostile_ice_tcp_connections_are_closed(env):
    """The ICE-TCP port (RFC 4571 frames) closes what is not ICE: garbage, an oversize
    length, a half frame that never completes (slowloris, closed at the first-frame
    deadline), and a peer that only connects. The service keeps answering."""
    svc = env.service
    closed = "tchap_visio_sfu_tcp_closed_total"
    before = svc.metric(closed)
    address = ("127.0.0.1", svc.sfu_tcp_port)
    payloads = (
        b"\x00\x10GET / HTTP/1.1\r\n\r\n",  # a frame that is not STUN
        b"\xff\xff" + os.urandom(64),  # 65535 bytes announced
        b"\x00\x40\x00\x01",  # half a frame, then nothing
        b"",  # connects and says nothing
    )
    sockets = []
    try:
        for payload in payloads:
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(payload)
            sockets.append(sock)
        for sock in sockets:
            # The server closes each one (EOF or reset) within the first-frame deadline.
            sock.settimeout(30)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    finally:
        for sock in sockets:
            sock.close()
    wait_for(lambda: svc.metric(closed) >= before + len(payloads), 10, "hostile TCP connections counted as closed")
    assert requests.get(f"{svc.url}/health", timeout=5).status_code == 200


def test_signalling_paths_and_tokens(env):
    svc = env.service
    good = token(svc.sfu_key, svc.sfu_secret, "val", room())
    no_join = token(svc.sfu_key, svc.sfu_secret, "val", room(), room_join=False)
    r = requests.get(f"{svc.url}/rtc/validate", headers={"Authorization": f"Bearer {good}"}, timeout=5)
    assert (r.status_code, r.text) == (200, "success")
    r = requests.get(f"{svc.url}/rtc/validate", params={"access_token": good}, timeout=5)
    assert r.status_code == 200
    r = requests.get(f"{svc.url}/rtc/validate", params={"access_token": no_join}, timeout=5)
    assert r.status_code == 401 and "roomJoin" in r.text, r.text
    r = requests.get(f"{svc.url}/rtc/validate", timeout=5)
    assert r.status_code == 401
    # Single peer connection: /rtc/v1/validate checks the join request as well.
    join = wrapped_join_request()
    r = requests.get(f"{svc.url}/rtc/v1/validate", params={"access_token": good, "join_request": join}, timeout=5)
    assert (r.status_code, r.text) == (200, "success")
    r = requests.get(f"{svc.url}/rtc/v1/validate", params={"access_token": good}, timeout=5)
    assert r.status_code == 400 and "missing" in r.text, r.text
    r = requests.get(f"{svc.url}/rtc/v1/validate", params={"access_token": no_join, "join_request": "!"}, timeout=5)
    assert r.status_code == 401 and "roomJoin" in r.text, r.text
    # A WebSocket upgrade without a token is refused before any session exists.
    r = requests.get(
        f"{svc.url}/rtc",
        headers={"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
        timeout=5,
    )
    assert r.status_code == 401


def wrapped_join_request(join: bytes | None = None, *, gzip_it: bool = False, compression: int | None = None) -> str:
    """The `join_request` query parameter of /rtc/v1, built with the SDK's own types."""
    if join is None:
        join = lk_rtc.JoinRequest(connection_settings=lk_rtc.ConnectionSettings(auto_subscribe=True)).SerializeToString()
    if gzip_it:
        join = gzip.compress(join)
    if compression is None:
        compression = lk_rtc.WrappedJoinRequest.GZIP if gzip_it else lk_rtc.WrappedJoinRequest.NONE
    wrapped = lk_rtc.WrappedJoinRequest(compression=compression, join_request=join)
    return base64.urlsafe_b64encode(wrapped.SerializeToString()).decode()


UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


def test_hostile_v1_join_requests_get_a_clear_refusal(env):
    """/rtc/v1 upgrades with a broken join request are refused with the reason (400), an
    oversized query is refused too, and the service goes on serving a good one."""
    svc = env.service
    tok = token(svc.sfu_key, svc.sfu_secret, "v1", room())
    headers = {**UPGRADE, "Authorization": f"Bearer {tok}"}
    bomb = gzip.compress(b"\0" * (4 * 1024 * 1024))
    cases = {
        "not base64": ("!!!", "base64"),
        "not protobuf": (base64.urlsafe_b64encode(b"\xff\xff\xff\xff").decode(), "WrappedJoinRequest"),
        "bad gzip": (wrapped_join_request(b"not gzip", compression=lk_rtc.WrappedJoinRequest.GZIP), "gzip"),
        "gzip bomb": (wrapped_join_request(bomb, compression=lk_rtc.WrappedJoinRequest.GZIP), "decompressed"),
        "bad inner protobuf": (wrapped_join_request(b"\xff" * 40), "JoinRequest"),
        "unknown compression": (wrapped_join_request(b"", compression=9), "compression"),
        "too long": ("A" * (56 * 1024), "longer"),
    }
    for what, (param, reason) in cases.items():
        r = requests.get(f"{svc.url}/rtc/v1", params={"join_request": param}, headers=headers, timeout=10)
        assert r.status_code == 400 and reason in r.text, f"{what}: {r.status_code} {r.text[:200]}"
    # A request target past 64 KiB is refused by the HTTP server before any handler
    # (414, or 431 once it overflows the header buffer).
    r = requests.get(f"{svc.url}/rtc/v1", params={"join_request": "A" * (1024 * 1024)}, headers=headers, timeout=10)
    assert r.status_code in (414, 431), r.status_code
    assert svc.metric("tchap_visio_signal_refused_total", reason="join_request") >= len(cases) - 1

    async def good_join():
        async with aiohttp.ClientSession() as session:
            url = f"{svc.livekit_url}/rtc/v1?join_request={wrapped_join_request(gzip_it=True)}"
            async with session.ws_connect(url, headers={"Authorization": f"Bearer {tok}"}) as ws:
                first = await asyncio.wait_for(ws.receive(), 10)
                response = lk_rtc.SignalResponse()
                response.ParseFromString(first.data)
                assert response.WhichOneof("message") == "join", response
                # One peer connection: the client negotiates, the server does not offer.
                assert response.join.subscriber_primary is False
                await ping_pong(ws)

    asyncio.run(good_join())


def test_a_full_meeting_says_so(env):
    svc = env.service
    svc.stop()
    svc.start(env={"TCHAP_VISIO_MEETINGS__MAX_PARTICIPANTS": "2"})
    try:
        name = room()

        async def scenario():
            first = await open_session(svc, "one", name)
            second = await open_session(svc, "two", name)
            third = token(svc.sfu_key, svc.sfu_secret, "three", name)
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(f"{svc.livekit_url}/rtc", headers={"Authorization": f"Bearer {third}"})
                assert refused.value.status == 503
                # livekit-client asks /rtc/validate why: the answer names the cause.
                async with session.get(f"{svc.url}/rtc/validate", params={"access_token": third}) as r:
                    assert r.status == 503 and "full" in await r.text()
                # Rejoining with an identity already inside replaces it, so it is admitted.
                async with session.get(f"{svc.url}/rtc/validate", params={"access_token": token(svc.sfu_key, svc.sfu_secret, "one", name)}) as r:
                    assert r.status == 200
            for s, ws, _ in (first, second):
                await ws.close()
                await s.close()

        asyncio.run(scenario())
    finally:
        svc.stop()
        svc.start()
