"""Encrypted rooms, Tchap's default: the bot reads and writes them with a device of its
own. A real Synapse, matrix-nio with encryption as the humans' client, LiveKit's
Python SDK as meeting guests.
"""

from __future__ import annotations

import shutil
from contextlib import closing

import pytest

from harness.util import require_livekit_sdk

require_livekit_sdk()

import nio

from harness import Env, wait_for
from harness.meetings import (
    NOTICE_S,
    encrypted_room_with_bot,
    server_copy,
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


def cross_signing(env: Env) -> dict:
    """The bot's published identity: master and self-signing keys, devices."""
    answer = env.service.bot_keys()
    return {
        "master": next(iter(answer.get("master_keys", {}).get(env.bot, {}).get("keys", {}).values()), None),
        "self_signing": next(iter(answer.get("self_signing_keys", {}).get(env.bot, {}).get("keys", {}).items()), None),
        "devices": answer["device_keys"].get(env.bot, {}),
    }


def signed_by_self_signing_key(identity: dict, device_id: str) -> bool:
    """Whether the device carries a signature by the bot's self-signing key."""
    if not identity["self_signing"] or device_id not in identity["devices"]:
        return False
    key_id, _ = identity["self_signing"]
    signatures = identity["devices"][device_id].get("signatures", {})
    return any(key_id in by_user for by_user in signatures.values())


def test_the_bot_cross_signs_its_device_and_a_lost_crypto_store_keeps_the_identity(env):
    alice, room = encrypted_room_with_bot(env, "emile", "Magasin perdu")
    identity = wait_for(lambda: (i := cross_signing(env))["self_signing"] and i, 20, "the bot's cross-signing keys")
    (old_device,) = identity["devices"]
    assert signed_by_self_signing_key(identity, old_device), identity["devices"][old_device]

    env.service.stop()
    store = env.service.dir / "data" / "crypto-store"
    assert store.is_dir()
    shutil.rmtree(store)
    env.service.start()

    after = wait_for(
        lambda: (i := cross_signing(env))["devices"].keys() != {old_device} and len(i["devices"]) == 1 and i, 30, "the new device alone"
    )
    (new_device,) = after["devices"]
    assert new_device != old_device, "a device id is never reused with new keys"
    assert after["master"] == identity["master"], "the cross-signing identity stays"
    wait_for(lambda: signed_by_self_signing_key(cross_signing(env), new_device), 20, "the new device signed by the kept keys")

    # The new device is told about by the homeserver; the next command is answered.
    alice.sync(0)

    def answers() -> int:
        return len([e for e in events(alice, room) if e.get("sender") == env.bot and e.get("decrypted") and "!visio aide" in body(e)])

    alice.send_text(room, "!visio aide")
    wait_event(alice, room, lambda e: answers() >= 1, "the help from the new device")


def test_a_command_sent_while_the_service_is_down_is_answered_after_start_to_a_new_device(env):
    alice, room = encrypted_room_with_bot(env, "fanny", "Service arrêté")
    alice.send_text(room, "!visio aide")
    wait_event(alice, room, lambda e: e.get("sender") == env.bot and e.get("decrypted") and "!visio aide" in body(e), "the first help")

    env.service.stop()
    # A second device of hers, logged in while the service is down, sends the command:
    # its room key waits at the homeserver for the bot's device.
    phone = env.e2ee_user("fanny", "phone")
    phone.sync(0)
    phone.send_text(room, "!visio aide")
    env.service.start()

    def answered_on_phone():
        return [e for e in events(phone, room) if e.get("sender") == env.bot and e.get("decrypted") and "!visio aide" in body(e)]

    wait_event(phone, room, lambda e: answered_on_phone(), "the answer, decrypted by the new device")


def test_an_event_that_cannot_be_decrypted_blocks_nothing(env):
    alice, room = encrypted_room_with_bot(env, "gaston", "Indéchiffrable")
    other_user, other_room = encrypted_room_with_bot(env, "helene", "Autre salon")
    parked_before = env.service.metric("tchap_visio_events_parked_total")
    invalid_before = env.service.metric("tchap_visio_events_undecryptable_total", reason="invalid")
    # Two encrypted events as the homeserver would deliver them: one whose room key
    # nobody will ever send (a real ciphertext under a session nobody shared), one that
    # is not even a ciphertext.
    real = server_copy(env, alice, room, alice.send_text(room, "un message"))
    unknown_session = dict(real, event_id="$key-never-sent", content=dict(real["content"], session_id="A" * 43))
    garbage = dict(real, event_id="$garbage", content=dict(real["content"], ciphertext="AwgAEnB"))
    for e in (unknown_session, garbage):
        e.pop("unsigned", None)
    assert env.service.put_transaction("forged-1", {"events": [unknown_session, garbage]}).status_code == 200
    wait_for(lambda: env.service.metric("tchap_visio_events_parked_total") > parked_before, 20, "the first event to wait for its key")
    wait_for(
        lambda: env.service.metric("tchap_visio_events_undecryptable_total", reason="invalid") > invalid_before,
        20,
        "the second to be counted as undecryptable",
    )
    other_user.send_text(other_room, "!visio aide")
    wait_event(other_user, other_room, lambda e: e.get("sender") == env.bot and e.get("decrypted") and "!visio aide" in body(e), "the other room's answer")
    alice.send_text(room, "!visio aide")
    wait_event(alice, room, lambda e: e.get("sender") == env.bot and e.get("decrypted") and "!visio aide" in body(e), "the same room's next answer")
    assert env.service.metric("tchap_visio_events_waiting_for_key") >= 1
    assert env.service.proc.poll() is None, "the service is still running"


def test_with_to_device_from_transactions_encrypted_rooms_work_and_a_stop_costs_at_most_keys(tmp_path_factory):
    """`encryption.to_device: transactions` (MSC2409/MSC3202). Synapse drops to-device
    messages of transactions that failed or were caught up (element-hq/synapse#14710): a
    command sent while the service was down may stay undecryptable, counted, never a
    crash, and the next ones are answered."""
    with closing(Env(tmp_path_factory.mktemp("tx"), overrides={"encryption": {"to_device": "transactions"}})) as env:
        assert env.service.registration.get("org.matrix.msc3202") is True
        alice, room = encrypted_room_with_bot(env, "ines", "Transactions")

        def answers(user) -> list[dict]:
            return [e for e in events(user, room) if e.get("sender") == env.bot and e.get("decrypted") and "!visio aide" in body(e)]

        alice.send_text(room, "!visio aide")
        wait_event(alice, room, lambda e: answers(alice), "the help, through keys from transactions")

        env.service.stop()
        phone = env.e2ee_user("ines", "phone")
        phone.sync(0)
        parked = env.service.metric  # read after the restart: metrics are per process
        phone.send_text(room, "!visio aide")
        env.service.start()
        wait_for(
            lambda: phone.sync(500) or answers(phone) or parked("tchap_visio_events_parked_total") >= 1,
            NOTICE_S,
            "the phone's command answered, or waiting for a key Synapse dropped",
        )
        before = len(answers(alice))
        alice.send_text(room, "!visio aide")
        wait_event(alice, room, lambda e: len(answers(alice)) > before, "the next command answered")
        assert env.service.proc.poll() is None
