"""An ended meeting stays ended: a join token issued while it was open, and not yet
expired, no longer opens its room, even after the service restarts and the SFU's memory
of closed rooms is gone. The decision comes from the meeting's stored state."""

from __future__ import annotations

import base64
import os
import re

import jwt  # PyJWT, a dependency of livekit-api
import requests

LINK = re.compile(r"https?://\S+/m/([A-Za-z0-9]+)")
DEADLINE_S = 30


def start_meeting(env, user, room: str, title: str) -> str:
    """`!visio <title>` in `room`; returns the slug of the link the bot posts."""
    user.send_text(room, f"!visio {title}")
    notice = user.wait_notice_matching(room, env.bot, re.compile(re.escape(title) + r"[\s\S]*" + LINK.pattern), DEADLINE_S)
    return LINK.search(notice).group(1)


def join_token(env, slug: str, name: str) -> str:
    r = requests.post(f"{env.service.url}/api/v1/meetings/{slug}/join", json={"name": name}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["token"]


def validate(env, token: str, path: str = "/rtc/validate") -> requests.Response:
    return requests.get(f"{env.service.url}{path}", params={"access_token": token}, timeout=10)


def upgrade(env, token: str, path: str) -> requests.Response:
    """A WebSocket handshake on `path`, as LiveKit's SDKs open it."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    return requests.get(f"{env.service.url}{path}", params={"access_token": token}, headers=headers, timeout=10)


def test_an_ended_meeting_refuses_its_old_tokens_across_a_restart(fresh_env):
    env, svc = fresh_env, fresh_env.service
    alice, room = env.room_with_bot("alice", name="Fin")
    slug = start_meeting(env, alice, room, "Point du lundi")
    token = join_token(env, slug, "Agathe")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert validate(env, token).status_code == 200, "the open meeting's token is refused"

    alice.send_text(room, "!visio fin")
    alice.wait_notice_matching(room, env.bot, "personne ne l’a rejointe", DEADLINE_S)
    info = requests.get(f"{svc.url}/api/v1/meetings/{slug}", timeout=10).json()
    assert info["state"] == "ended", info

    svc.stop()
    svc.start()
    # Still within the token's lifetime: only the meeting's end can refuse it.
    assert claims["exp"] > info["ended_at"] // 1000 + 60, claims
    for path in ("/rtc/validate", "/rtc/v1/validate"):
        r = validate(env, token, path)
        assert (r.status_code, r.text) == (403, "the meeting has ended"), f"{path}: {r.status_code} {r.text}"
    for path in ("/rtc", "/rtc/v1"):
        r = upgrade(env, token, path)
        assert (r.status_code, r.text) == (403, "the meeting has ended"), f"{path}: {r.status_code} {r.text}"
    assert svc.metric("tchap_visio_signal_refused_total", reason="ended") >= 4
    r = requests.post(f"{svc.url}/api/v1/meetings/{slug}/join", json={"name": "Bruno"}, timeout=10)
    assert r.status_code == 404, r.text

    # Control: after the restart a meeting of the same room opens as before.
    new_slug = start_meeting(env, alice, room, "Point du mardi")
    assert new_slug != slug
    fresh = join_token(env, new_slug, "Agathe")
    assert validate(env, fresh).status_code == 200
    assert upgrade(env, fresh, "/rtc").status_code == 101
