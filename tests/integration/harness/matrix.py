"""matrix-nio clients driven synchronously from tests (each owns an event loop)."""

from __future__ import annotations

import asyncio
import re
from typing import Any, Callable

import nio

from .util import wait_for

# Sync filter: a timeline long enough that no test room's sync is ever "limited".
_SYNC_FILTER = {"room": {"timeline": {"limit": 1000}}, "presence": {"not_types": ["*"]}}


def quoted(word: str) -> re.Pattern:
    """Matches `word` between quotes: « word » (any spaces), “word”, "word", 'word'."""
    return re.compile(r"[«“\"'‘`]\s*" + re.escape(word) + r"\s*[»”\"'’`]")


class MatrixUser:
    """A logged-in user on the test Synapse, through matrix-nio's AsyncClient."""

    def __init__(self, homeserver_url: str, user_id: str, password: str, store_path: str | None = None, device_name: str = "integration-test"):
        """With `store_path` (a directory), the client encrypts: it keeps its keys there,
        answers key requests after every sync, and decrypts what it receives."""
        self.user_id = user_id
        self.encrypted = store_path is not None
        self.loop = asyncio.new_event_loop()
        self.client = nio.AsyncClient(
            homeserver_url,
            user_id,
            store_path=store_path or "",
            config=nio.AsyncClientConfig(
                encryption_enabled=self.encrypted, store_sync_tokens=self.encrypted, max_timeouts=5, request_timeout=30
            ),
        )
        resp = self._run(self.client.login(password, device_name=device_name))
        assert isinstance(resp, nio.LoginResponse), f"login of {user_id} failed: {resp}"
        self.device_id = resp.device_id
        # Timeline events seen by sync, per joined room, oldest first (raw dicts).
        self.timelines: dict[str, list[dict[str, Any]]] = {}
        # Rooms this user was invited to, as sync reported them.
        self.invited: set[str] = set()
        self.sync(0)

    def _run(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        try:
            self._run(self.client.close())
        finally:
            self.loop.close()

    # -- rooms -------------------------------------------------------------

    def create_room(self, name: str | None = None, encrypted: bool = False, invite: list[str] = ()) -> str:
        state = []
        if encrypted:
            state.append({"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        resp = self._run(self.client.room_create(name=name, initial_state=state, invite=list(invite)))
        assert isinstance(resp, nio.RoomCreateResponse), f"room creation failed: {resp}"
        return resp.room_id

    def invite(self, room_id: str, user_id: str) -> None:
        resp = self._run(self.client.room_invite(room_id, user_id))
        assert isinstance(resp, nio.RoomInviteResponse), f"invite of {user_id} failed: {resp}"

    def send_text(self, room_id: str, body: str, msgtype: str = "m.text") -> str:
        return self.send(room_id, {"msgtype": msgtype, "body": body})

    def send(self, room_id: str, content: dict[str, Any]) -> str:
        """An m.room.message; encrypted in an encrypted room (for every device, verified or not)."""
        resp = self._run(self.client.room_send(room_id, "m.room.message", content, ignore_unverified_devices=True))
        assert isinstance(resp, nio.RoomSendResponse), f"send failed: {resp}"
        return resp.event_id

    def react(self, room_id: str, event_id: str, key: str) -> str:
        """An m.reaction (annotation) on `event_id`; encrypted in an encrypted room."""
        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        resp = self._run(self.client.room_send(room_id, "m.reaction", content, ignore_unverified_devices=True))
        assert isinstance(resp, nio.RoomSendResponse), f"reaction failed: {resp}"
        return resp.event_id

    def join(self, room_id: str) -> None:
        resp = self._run(self.client.join(room_id))
        assert isinstance(resp, nio.JoinResponse), f"join of {room_id} failed: {resp}"

    def leave(self, room_id: str) -> None:
        resp = self._run(self.client.room_leave(room_id))
        assert isinstance(resp, nio.RoomLeaveResponse), f"leave of {room_id} failed: {resp}"

    def ban(self, room_id: str, user_id: str) -> None:
        resp = self._run(self.client.room_ban(room_id, user_id))
        assert isinstance(resp, nio.RoomBanResponse), f"ban of {user_id} failed: {resp}"

    def set_power_level(self, room_id: str, user_id: str, level: int) -> None:
        resp = self._run(self.client.room_get_state_event(room_id, "m.room.power_levels", ""))
        assert isinstance(resp, nio.RoomGetStateEventResponse), f"power levels: {resp}"
        content = dict(resp.content)
        content.setdefault("users", {})[user_id] = level
        put = self._run(self.client.room_put_state(room_id, "m.room.power_levels", content))
        assert isinstance(put, nio.RoomPutStateResponse), f"power levels: {put}"

    def member(self, room_id: str, user_id: str) -> dict[str, Any] | None:
        """Content of `user_id`'s m.room.member event in the room, None if there is none."""
        resp = self._run(self.client.room_get_state_event(room_id, "m.room.member", user_id))
        if isinstance(resp, nio.RoomGetStateEventResponse):
            return resp.content
        return None

    def wait_membership(self, room_id: str, user_id: str, membership: str, timeout: float = 20) -> dict[str, Any]:
        """Wait until `user_id`'s membership is `membership`; returns the member content."""
        return wait_for(
            lambda: (c := self.member(room_id, user_id)) is not None and c.get("membership") == membership and c,
            timeout,
            f"{user_id} membership {membership!r} in {room_id}",
            interval=0.1,
        )

    # -- timeline ------------------------------------------------------------

    def sync(self, timeout_ms: int = 0) -> None:
        """One sync (long-polls up to timeout_ms); appends new timeline events."""
        resp = self._run(self.client.sync(timeout=timeout_ms, sync_filter=_SYNC_FILTER))
        assert isinstance(resp, nio.SyncResponse), f"sync failed: {resp}"
        if self.encrypted:
            self.keep_keys()
        self.invited.update(resp.rooms.invite.keys())
        for room_id, room in resp.rooms.join.items():
            assert not (room.timeline.limited and room_id in self.timelines), f"sync of {room_id} was limited"
            self.timelines.setdefault(room_id, []).extend(self._as_dict(e) for e in room.timeline.events)

    @staticmethod
    def _as_dict(event) -> dict[str, Any]:
        """The event as a dict: decrypted ones as their clear event (with `decrypted`
        set), undecryptable ones as received (with `undecryptable` set)."""
        source = dict(event.source)
        if getattr(event, "decrypted", False):
            source["decrypted"] = True
        if isinstance(event, nio.MegolmEvent):
            source["undecryptable"] = True
        return source

    def keep_keys(self) -> None:
        """What an encrypting client does after each sync: upload its keys, learn others'
        devices, claim one-time keys for new sessions."""
        if self.client.should_upload_keys:
            self._run(self.client.keys_upload())
        if self.client.should_query_keys:
            self._run(self.client.keys_query())
        if self.client.should_claim_keys:
            self._run(self.client.keys_claim(self.client.get_users_for_key_claiming()))

    def notices(self, room_id: str, sender: str) -> list[str]:
        """Bodies of the m.notice messages from `sender` in the room, in timeline order."""
        return [
            e["content"].get("body", "")
            for e in self.timelines.get(room_id, [])
            if e.get("type") == "m.room.message"
            and e.get("sender") == sender
            and e.get("content", {}).get("msgtype") == "m.notice"
        ]

    def wait_notices(
        self, room_id: str, sender: str, done: Callable[[list[str]], bool], timeout: float, what: str
    ) -> list[str]:
        """Sync until done(notices) holds; returns the notices then."""

        def check() -> bool:
            if done(self.notices(room_id, sender)):
                return True
            self.sync(500)
            return done(self.notices(room_id, sender))

        wait_for(check, timeout, what, interval=0)
        return self.notices(room_id, sender)

    def wait_notice_matching(self, room_id: str, sender: str, pattern: str | re.Pattern, timeout: float = 20) -> str:
        """Wait for a notice whose body matches `pattern`; returns that body."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        notices = self.wait_notices(
            room_id, sender, lambda ns: any(rx.search(n) for n in ns), timeout, f"a notice from {sender} matching {rx.pattern!r}"
        )
        return next(n for n in notices if rx.search(n))
