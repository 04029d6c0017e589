"""The bot against a real Synapse: invites, commands, replayed transactions (SQLite)."""

from contextlib import closing

import requests

from harness import Env, scenarios
from harness.matrix import quoted
from harness import wait_for
from harness.scenarios import is_help, marker, wait_help


def test_invite_and_help(env):
    scenarios.invite_and_help(env)


def test_replayed_transaction_is_handled_once(env):
    scenarios.replay(env)


def test_unknown_commands_get_hints_in_order(env):
    alice, room = env.room_with_bot("alice", name="Order")
    # Mistyped commands: each gets a hint (any other word after !visio is a title).
    words = ["staut", "aied", "lein", "fni", "lnik"]
    for w in words:
        alice.send_text(room, f"!visio {w}")
    notices = alice.wait_notices(
        room, env.bot, lambda ns: all(any(quoted(w).search(n) for n in ns) for w in words), 30, "five hints"
    )
    order = [w for n in notices for w in words if quoted(w).search(n)]
    assert order == words, f"hints out of order or repeated: {notices}"


def test_with_encryption_off_an_encrypted_room_gets_one_plain_notice(tmp_path_factory):
    """`encryption.enabled: false`: the bot stays out of encrypted rooms' content and says
    so once (with it on, the bot reads them: test_encryption.py)."""
    with closing(Env(tmp_path_factory.mktemp("clear-only"), overrides={"encryption": {"enabled": False}})) as env:
        check_one_plain_notice(env)


def check_one_plain_notice(env):
    alice, room = env.room_with_bot("alice", name="Chiffré", encrypted=True)
    body = alice.wait_notice_matching(room, env.bot, "chiffr")
    event = next(e for e in alice.timelines[room] if e.get("content", {}).get("body") == body)
    assert event["type"] == "m.room.message", event

    # A round trip through another room: by then the join was long handled.
    _, plain_room = env.room_with_bot("alice", name="Après chiffré")
    marker(alice, plain_room, env.bot)
    alice.sync(0)
    notices = alice.notices(room, env.bot)
    assert len([n for n in notices if "chiffr" in n]) == 1, notices
    assert not any(is_help(n) for n in notices), notices


def test_metrics_are_exported(env):
    # Real traffic through the inbox and out: a help round trip.
    alice, room = env.room_with_bot("alice", name="Metrics")
    alice.send_text(room, "!visio aide")
    wait_help(alice, room, env.bot)

    metrics = env.service.metrics()
    # On their own listener only: the public port (behind the reverse proxy) has none.
    assert requests.get(f"{env.service.url}/metrics", timeout=10).status_code == 404
    names = {key.partition("{")[0] for key in metrics}
    expected = {
        "tchap_visio_transactions_received_total",
        "tchap_visio_events_received_total",
        "tchap_visio_events_processed_total",
        "tchap_visio_inbox_pending",
        "tchap_visio_outbound_queue_depth",
        "tchap_visio_outbound_send_seconds_count",
    }
    assert expected <= names, f"missing: {sorted(expected - names)}"
    assert env.service.metric("tchap_visio_transactions_received_total") > 0
    assert env.service.metric("tchap_visio_events_processed_total") > 0
    assert env.service.metric("tchap_visio_outbound_send_seconds_count") > 0
    wait_for(lambda: env.service.metric("tchap_visio_inbox_pending") == 0, 10, "an empty inbox")
    wait_for(lambda: env.service.metric("tchap_visio_outbound_queue_depth") == 0, 10, "an empty outbound queue")
