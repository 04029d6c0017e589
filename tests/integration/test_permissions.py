"""Who may invite the bot: an allow-list naming one user (and English texts)."""

import pytest

from harness import Env
from harness.scenarios import wait_help


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("env"), permissions={"@alice:localhost": "user"}, language="en")
    yield e
    e.close()


def test_invite_from_unlisted_user_is_rejected_with_a_reason(env):
    bob = env.user("bob")
    room = bob.create_room(name="Bob's room")
    bob.invite(room, env.bot)
    member = bob.wait_membership(room, env.bot, "leave")
    assert member.get("reason", "").strip(), f"the bot left without a reason: {member}"


def test_invite_from_listed_user_is_accepted(env):
    alice, room = env.room_with_bot("alice", name="Alice's room")
    alice.send_text(room, "!visio help")
    wait_help(alice, room, env.bot, language="en")
