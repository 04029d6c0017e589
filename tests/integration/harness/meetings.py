"""Meetings seen from a room: the link notice, guests joining with LiveKit's SDK, the
meeting's thread. Shared by the bridge tests of clear and encrypted rooms."""

from __future__ import annotations

import re

import requests

from .lkpeer import Peer
from .util import wait_for

# Generous deadlines for a loaded 2-core machine; they bound waits, they are not speed claims.
NOTICE_S = 30
LINK = re.compile(r"https?://\S+/m/([A-Za-z0-9]+)")


def events(user, room: str) -> list[dict]:
    return user.timelines.get(room, [])


def wait_event(user, room: str, pred, what: str, timeout: float = NOTICE_S) -> dict:
    """Sync until an event of the room's timeline satisfies `pred`; returns it."""

    def found():
        for e in events(user, room):
            if pred(e):
                return e
        user.sync(500)
        return next((e for e in events(user, room) if pred(e)), None)

    return wait_for(found, timeout, what, interval=0)


def body(e: dict) -> str:
    return e.get("content", {}).get("body", "") if e.get("type") == "m.room.message" else ""


def in_thread(e: dict, root: str) -> bool:
    rel = e.get("content", {}).get("m.relates_to") or {}
    return rel.get("rel_type") == "m.thread" and rel.get("event_id") == root


def start_meeting(env, user, room: str, command: str, title: str) -> tuple[dict, str]:
    """Sends `command`; returns (the link notice event, the slug of its link)."""
    user.send_text(room, command)
    notice = wait_event(
        user,
        room,
        lambda e: e.get("sender") == env.bot and title in body(e) and LINK.search(body(e)),
        f"the link notice for {title!r}",
    )
    return notice, LINK.search(body(notice)).group(1)


def join(env, tmp_path, slug: str, name: str, **kwargs) -> tuple[Peer, dict]:
    r = requests.post(f"{env.service.url}/api/v1/meetings/{slug}/join", json={"name": name}, timeout=10)
    assert r.status_code == 200, r.text
    grant = r.json()
    return Peer(tmp_path, name.lower(), grant["url"], grant["token"], **kwargs), grant


def peer_chats(peer: Peer, sender: str, text: str) -> list[dict]:
    return [c for c in peer.state().get("chat", []) if c["from"] == sender and c["text"] == text]


def send_in_thread(user, room: str, root: str, text: str) -> str:
    content = {
        "msgtype": "m.text",
        "body": text,
        "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": True, "m.in_reply_to": {"event_id": root}},
    }
    return user.send(room, content)


def encrypted_room_with_bot(env, owner: str, name: str, device: str = "main"):
    """`owner` (an encrypting client) creates an encrypted room and invites the bot;
    returns once the bot has joined."""
    user = env.e2ee_user(owner, device)
    room = user.create_room(name=name, encrypted=True)
    user.invite(room, env.bot)
    user.wait_membership(room, env.bot, "join")
    user.sync(0)
    return user, room


def server_copy(env, user, room: str, event_id: str) -> dict:
    """The event as the homeserver stores it (nio would decrypt it)."""
    r = requests.get(
        f"{env.synapse.url}/_matrix/client/v3/rooms/{room}/event/{event_id}",
        headers={"Authorization": f"Bearer {user.client.access_token}"},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()
