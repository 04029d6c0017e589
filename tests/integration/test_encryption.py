"""Encrypted rooms, Tchap's default: the bot reads and writes them with a device of its
own. A real Synapse, matrix-nio with encryption as the humans' client, LiveKit's
Python SDK as meeting guests.
"""

from __future__ import annotations

import os

import pytest

try:
    import livekit.rtc  # noqa: F401
except Exception as e:  # noqa: BLE001 - any import failure means the SDK is unusable here
    if os.environ.get("CI"):
        pytest.fail(f"LiveKit's Python SDK cannot be imported in CI: {e!r}", pytrace=False)
    pytest.skip(f"LiveKit's Python SDK cannot be imported: {e!r}", allow_module_level=True)

import nio
import requests

from harness import Env, wait_for
from harness.meetings import (
    NOTICE_S,
    body,
    events,
    in_thread,
    join,
    send_in_thread,
    start_meeting,
    wait_event,
)

GRACE_S = 2


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("e2ee"), overrides={"meetings": {"grace_period_secs": GRACE_S}})
    yield e
    e.close()


def encrypted_room_with_bot(env: Env, owner: str, name: str, device: str = "main"):
    """`owner` (an encrypting client) creates an encrypted room and invites the bot;
    returns once the bot has joined."""
    user = env.e2ee_user(owner, device)
    room = user.create_room(name=name, encrypted=True)
    user.invite(room, env.bot)
    user.wait_membership(room, env.bot, "join")
    user.sync(0)
    return user, room


def server_copy(env: Env, user, room: str, event_id: str) -> dict:
    """The event as the homeserver stores it (nio would decrypt it)."""
    r = requests.get(
        f"{env.synapse.url}/_matrix/client/v3/rooms/{room}/event/{event_id}",
        headers={"Authorization": f"Bearer {user.client.access_token}"},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()


def cannot_read_notices(user, room: str, bot: str) -> list[str]:
    return [body(e) for e in events(user, room) if e.get("sender") == bot and "ne peux pas encore lire" in body(e)]


def test_command_link_chat_both_ways_and_summary_in_an_encrypted_room(env, tmp_path):
    alice, room = encrypted_room_with_bot(env, "alice", "Salon chiffré")
    notice, slug = start_meeting(env, alice, room, "!visio Point chiffré", "Point chiffré")
    root = notice["event_id"]
    assert notice.get("decrypted"), "the link notice was decrypted by the client"
    assert server_copy(env, alice, room, root)["type"] == "m.room.encrypted"

    agathe, _ = join(env, tmp_path, slug, "Agathe")
    agathe.wait_connected()
    # Meeting → room: the bot relays the guest's words (a ghost cannot sign in an
    # encrypted room), her name in front.
    agathe.chat("Bonjour du chiffré")
    relayed = wait_event(
        alice, room, lambda e: in_thread(e, root) and "Bonjour du chiffré" in body(e), "agathe's chat in the thread"
    )
    assert relayed.get("decrypted") and relayed["sender"] == env.bot, relayed
    assert body(relayed).startswith("Agathe (invité·e)"), body(relayed)
    assert server_copy(env, alice, room, relayed["event_id"])["type"] == "m.room.encrypted"

    # Room → meeting: an encrypted thread reply reaches the guest.
    send_in_thread(alice, room, root, "Réponse chiffrée")
    agathe.wait(lambda s: [c for c in s.get("chat", []) if c["text"] == "Réponse chiffrée"], 30, "the thread reply in the meeting")

    agathe.close()
    summary = wait_event(
        alice,
        room,
        lambda e: in_thread(e, root) and e.get("sender") == env.bot and "Compte rendu" in body(e),
        "the summary in the thread",
        timeout=GRACE_S + NOTICE_S,
    )
    assert summary.get("decrypted"), summary
    assert "Agathe (invité·e)" in body(summary), body(summary)
    assert not cannot_read_notices(alice, room, env.bot)
    assert not [e for e in events(alice, room) if e.get("undecryptable")], "every event decrypted"
    assert env.service.metric("tchap_visio_events_decrypted_total") >= 2


def test_a_member_who_left_cannot_decrypt_the_next_message(env):
    alice, room = encrypted_room_with_bot(env, "carole", "Départ")
    bob = env.e2ee_user("bob")
    alice.invite(room, bob.user_id)
    bob._run(bob.client.join(room))
    alice.wait_membership(room, bob.user_id, "join")
    alice.sync(0)
    alice.send_text(room, "!visio aide")
    help_notice = wait_event(bob, room, lambda e: e.get("sender") == env.bot and "!visio aide" in body(e), "the help, read by bob")
    assert help_notice.get("decrypted")

    bob._run(bob.client.room_leave(room))
    alice.wait_membership(room, bob.user_id, "leave")
    # The bot learns of the leave (its membership event), then answers the next command.
    alice.send_text(room, "!visio statut")
    wait_event(alice, room, lambda e: e.get("sender") == env.bot and e.get("decrypted") and e["event_id"] != help_notice["event_id"] and "visio" in body(e).lower(), "the answer to the second command")
    answer = [e for e in events(alice, room) if e.get("sender") == env.bot and e.get("decrypted")][-1]
    after, before = server_copy(env, alice, room, answer["event_id"]), server_copy(env, alice, room, help_notice["event_id"])
    assert after["type"] == before["type"] == "m.room.encrypted"
    assert after["content"]["session_id"] != before["content"]["session_id"], "the room key was rotated when bob left"
    # Bob still holds the key he was given, and no other.
    assert body(decrypt_as(bob, before)) == body(help_notice)
    with pytest.raises(nio.EncryptionError):
        decrypt_as(bob, after)


def decrypt_as(user, event: dict) -> dict:
    """Decrypts an event (the server's copy) with `user`'s keys; raises
    nio.EncryptionError when they hold no key for it."""
    clear = user.client.olm.decrypt_megolm_event(nio.MegolmEvent.from_dict(event), event["room_id"])
    return clear.source


def test_restart_keeps_the_device_and_the_next_command_is_answered(env):
    alice, room = encrypted_room_with_bot(env, "denise", "Redémarrage")
    device_before = device_of(env)
    alice.send_text(room, "!visio aide")
    wait_event(alice, room, lambda e: e.get("sender") == env.bot and "!visio aide" in body(e), "the help before the restart")
    env.service.stop()
    env.service.start()
    assert device_of(env) == device_before
    def answers() -> int:
        return len([e for e in events(alice, room) if e.get("sender") == env.bot and "!visio aide" in body(e)])

    before = answers()
    alice.send_text(room, "!visio aide")
    wait_event(alice, room, lambda e: answers() > before, "the help after the restart")
    assert [e for e in events(alice, room) if e.get("sender") == env.bot and "!visio aide" in body(e)][-1].get("decrypted")


def device_of(env: Env) -> dict:
    """The bot's devices and their keys, as the homeserver publishes them."""
    return env.service.bot_devices()
