"""`mode: bot`: the service as an ordinary account (where a homeserver refuses
appservices), in encrypted rooms, a one-to-one room with the bot, and a direct room of
two other people. A real Synapse with no appservice registration, matrix-nio with
encryption, LiveKit's Python SDK as the guest.
"""

from __future__ import annotations

import pytest

from harness.util import require_livekit_sdk

require_livekit_sdk()

import nio

from harness import Env
from harness.meetings import (
    NOTICE_S,
    body,
    encrypted_room_with_bot,
    events,
    in_thread,
    join,
    send_in_thread,
    server_copy,
    start_meeting,
    wait_event,
)

GRACE_S = 2
DIRECT = {"type": "im.vector.room.access_rules", "state_key": "", "content": {"rule": "direct"}}
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("botmode"), bot_account="robot", overrides={"meetings": {"grace_period_secs": GRACE_S}})
    yield e
    e.close()


def test_an_ordinary_account_runs_meetings_in_an_encrypted_room(env, tmp_path):
    assert env.bot == "@robot:localhost"
    alice, room = encrypted_room_with_bot(env, "alice", "Salon du bot")
    notice, slug = start_meeting(env, alice, room, "!visio Réunion du bot", "Réunion du bot")
    root = notice["event_id"]
    assert notice.get("decrypted") and server_copy(env, alice, room, root)["type"] == "m.room.encrypted"

    zoe, _ = join(env, tmp_path, slug, "Zoé")
    zoe.wait_connected()
    zoe.chat("Bonjour du compte bot")
    relayed = wait_event(alice, room, lambda e: in_thread(e, root) and "Bonjour du compte bot" in body(e), "zoé's chat in the thread")
    assert relayed["sender"] == env.bot and relayed.get("decrypted"), relayed
    assert body(relayed).startswith("Zoé (invité·e)"), body(relayed)

    send_in_thread(alice, room, root, "Réponse au compte bot")
    zoe.wait(lambda s: [c for c in s.get("chat", []) if c["text"] == "Réponse au compte bot"], 30, "the thread reply in the meeting")
    zoe.close()
    summary = wait_event(
        alice,
        room,
        lambda e: in_thread(e, root) and e.get("sender") == env.bot and "Compte rendu" in body(e),
        "the summary",
        timeout=GRACE_S + NOTICE_S,
    )
    assert summary.get("decrypted") and "Zoé (invité·e)" in body(summary), body(summary)
    # No ghost ever entered the room: the account has none.
    members = alice._run(alice.client.joined_members(room))
    assert {m.user_id for m in members.members} == {alice.user_id, env.bot}, members


def test_a_one_to_one_room_with_the_bot_works(env):
    bruno = env.e2ee_user("bruno")
    resp = bruno._run(bruno.client.room_create(is_direct=True, invite=[env.bot], initial_state=[ENCRYPTION, DIRECT]))
    assert isinstance(resp, nio.RoomCreateResponse), resp
    room = resp.room_id
    bruno.wait_membership(room, env.bot, "join")
    bruno.sync(0)
    bruno.send_text(room, "!visio aide")
    answer = wait_event(bruno, room, lambda e: e.get("sender") == env.bot and "!visio aide" in body(e), "the help in the direct chat")
    assert answer.get("decrypted")


def test_a_direct_room_of_two_other_people_is_refused_with_advice(env):
    carole = env.user("carole")
    env.user("denis")
    resp = carole._run(carole.client.room_create(is_direct=True, invite=["@denis:localhost"], initial_state=[DIRECT]))
    assert isinstance(resp, nio.RoomCreateResponse), resp
    room = resp.room_id
    carole.invite(room, env.bot)
    left = carole.wait_membership(room, env.bot, "leave")
    assert "deux personnes" in left.get("reason", "") and "!visio" in left["reason"], left
    assert not [e for e in events(carole, room) if e.get("sender") == env.bot and e.get("type") == "m.room.message"]
