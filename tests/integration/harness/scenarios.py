"""Checks shared by several test modules (SQLite and PostgreSQL runs, for instance)."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from .env import Env
from .matrix import MatrixUser, quoted

HELP_WORD = {"fr": "commandes", "en": "commands"}
HELP_COMMAND = {"fr": "!visio aide", "en": "!visio help"}


def is_help(body: str, language: str = "fr") -> bool:
    """The bot's help notice: a list of commands naming the help command itself.

    An unknown-command hint also says "commandes" and "!visio aide", but it quotes
    the unknown word (« x »), which the help never does.
    """
    return (
        HELP_WORD[language] in body.lower()
        and HELP_COMMAND[language] in body
        and not re.search(r"[«“]", body)
    )


def wait_help(user: MatrixUser, room_id: str, bot: str, count: int = 1, language: str = "fr", timeout: float = 20) -> list[str]:
    """Wait until the room holds `count` help notices from the bot; returns all its notices."""
    return user.wait_notices(
        room_id, bot, lambda ns: sum(is_help(n, language) for n in ns) >= count, timeout, f"{count} help notice(s)"
    )


def fake_message(room_id: str, sender: str, body: str, event_id: str | None = None) -> dict:
    """An m.room.message event as a homeserver would put it in a transaction."""
    return {
        "type": "m.room.message",
        "event_id": event_id or f"$fake-{uuid.uuid4().hex}",
        "room_id": room_id,
        "sender": sender,
        "origin_server_ts": int(time.time() * 1000),
        "content": {"msgtype": "m.text", "body": body},
        "unsigned": {"age": 0},
    }


def marker(user: MatrixUser, room_id: str, bot: str, timeout: float = 30) -> list[str]:
    """Send `!visio <unique word>` and wait for the bot's hint naming it.

    The bot handles a room's events in order, so once this hint is there, every
    reply to an earlier event that was ever going to be sent is there too.
    Returns the bot's notices at that point.
    """
    word = f"mark{uuid.uuid4().hex[:8]}"
    user.send_text(room_id, f"!visio {word}")
    user.wait_notice_matching(room_id, bot, quoted(word), timeout)
    return user.notices(room_id, bot)


def invite_and_help(env: Env, language: str = "fr") -> None:
    """A user invites the bot, which joins and answers `!visio aide` and `!visio help`."""
    alice, room = env.room_with_bot("alice", name="Invite and help")
    alice.send_text(room, "!visio aide")
    wait_help(alice, room, env.bot, 1, language)
    alice.send_text(room, "!visio help")
    wait_help(alice, room, env.bot, 2, language)


def replay(env: Env, copies: int = 100) -> None:
    """One transaction delivered `copies` times (concurrently) is handled once."""
    alice, room = env.room_with_bot("alice", name="Replay")
    txn_id = f"replay-{uuid.uuid4().hex}"
    body = {"events": [fake_message(room, alice.user_id, "!visio aide", f"$replay-{uuid.uuid4().hex}")]}

    replayed_before = env.service.metric("tchap_visio_transactions_replayed_total")
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: env.service.put_transaction(txn_id, body).status_code, range(copies)))
    assert statuses == [200] * copies, f"statuses other than 200: {sorted(set(statuses))}"
    replayed = env.service.metric("tchap_visio_transactions_replayed_total") - replayed_before
    assert replayed >= copies - 1, f"only {replayed:g} of {copies - 1} copies counted as replays"

    wait_help(alice, room, env.bot)
    notices = marker(alice, room, env.bot)
    helps = [n for n in notices if is_help(n)]
    assert len(helps) == 1, f"{len(helps)} help replies to one transaction sent {copies} times: {notices}"
