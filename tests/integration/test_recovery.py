"""Nothing lost, nothing doubled: a crash after the ack, a homeserver outage."""

import sqlite3
import time
import uuid

from harness import wait_for
from harness.matrix import quoted
from harness.scenarios import fake_message, is_help, marker, wait_help

PENDING = "tchap_visio_inbox_pending"


def test_crash_after_ack_replies_exactly_once(fresh_env):
    env, svc = fresh_env, fresh_env.service
    alice, room = env.room_with_bot("alice", name="Crash")
    # Invite and the bot's own join have reached the service and been handled: from
    # here on the only event on its way is the command below.
    wait_for(
        lambda: svc.metric("tchap_visio_events_received_total") >= 2 and svc.metric(PENDING) == 0,
        20,
        "the invite and the join handled",
    )

    svc.stop()
    svc.start(["--hold-inbox"])
    alice.send_text(room, "!visio aide")
    wait_for(lambda: svc.metric(PENDING) == 1, 20, "the command stored in the inbox, unprocessed")
    alice.sync(0)
    assert not any(is_help(n) for n in alice.notices(room, env.bot)), "--hold-inbox still answered"

    svc.kill()
    svc.start()
    wait_help(alice, room, env.bot, timeout=30)
    notices = marker(alice, room, env.bot)
    helps = [n for n in notices if is_help(n)]
    assert len(helps) == 1, f"{len(helps)} answers to one command across a crash: {notices}"
    wait_for(lambda: svc.metric(PENDING) == 0, 10, "an empty inbox")


def test_commands_after_a_homeserver_restart_are_answered(fresh_env):
    """Synapse on SQLite numbers its transactions from 1 again after a restart: the
    reused ids carry new events, which must be handled, not taken for replays."""
    env, svc = fresh_env, fresh_env.service
    alice, room = env.room_with_bot("alice", name="Restart")
    alice.send_text(room, "!visio aide")
    wait_help(alice, room, env.bot)
    # Synapse deletes a transaction once we acknowledged it: with its table empty, the
    # first id after a restart is 1 again, an id we have seen.
    def synapse_txns_left() -> int:
        with sqlite3.connect(env.synapse.dir / "homeserver.db") as db:
            return db.execute("SELECT COUNT(*) FROM application_services_txns").fetchone()[0]

    wait_for(lambda: synapse_txns_left() == 0, 20, "Synapse's transactions all acknowledged")
    assert svc.metric("tchap_visio_transactions_reused_id_total") == 0

    env.synapse.stop()
    env.synapse.start()
    alice.send_text(room, "!visio statut")
    alice.wait_notice_matching(room, env.bot, "Aucune visio en cours", timeout=30)
    # The scenario really happened: an id came again with other events.
    assert svc.metric("tchap_visio_transactions_reused_id_total") >= 1
    assert "reused a transaction id" in svc.log_path.read_text()
    helps = [n for n in alice.notices(room, env.bot) if is_help(n)]
    assert len(helps) == 1, helps
    # Log files carry no terminal colour codes.
    assert "\x1b[" not in svc.log_path.read_text()


def test_homeserver_outage_delivers_every_reply_once_in_order(fresh_env):
    env, svc = fresh_env, fresh_env.service
    alice, room = env.room_with_bot("alice", name="Outage")
    # Mistyped commands: each gets a hint (any other word after !visio is a title).
    words = ["staut", "aied", "lein", "fni", "lnik"]

    env.synapse.stop()
    stopped = time.monotonic()
    # Acting as the homeserver: the transaction arrives, the replies cannot leave.
    body = {"events": [fake_message(room, alice.user_id, f"!visio {w}") for w in words]}
    r = svc.put_transaction(f"outage-{uuid.uuid4().hex}", body)
    assert r.status_code == 200, r.text
    wait_for(lambda: svc.metric("tchap_visio_outbound_send_failures_total") >= 3, 60, "three failed sends")
    assert svc.metric("tchap_visio_outbound_queue_depth") >= 1, "nothing queued while the homeserver is down"
    # Our own crash during the outage loses nothing either: the queue is in the database.
    svc.kill()
    svc.start()
    wait_for(lambda: svc.metric("tchap_visio_outbound_queue_depth") >= len(words), 20, "the queue reloaded")
    wait_for(lambda: time.monotonic() - stopped >= 30, 40, "a 30 s outage", interval=0.5)

    env.synapse.start()
    alice.wait_notices(
        room, env.bot, lambda ns: all(any(quoted(w).search(n) for n in ns) for w in words), 120, "the five hints"
    )
    notices = marker(alice, room, env.bot, timeout=60)
    order = [w for n in notices for w in words if quoted(w).search(n)]
    assert order == words, f"hints lost, doubled or out of order after the outage: {notices}"
    wait_for(lambda: svc.metric("tchap_visio_outbound_queue_depth") == 0, 20, "an empty outbound queue")
