"""Encrypted rooms on three nodes (one PostgreSQL, one Synapse): each node has a bot
device of its own, all signed by the one cross-signing identity kept in the database.
A burst of commands in an encrypted room survives the SIGKILL of the leader: another
node leads within 10 s, decrypts with its own device, and every command gets exactly one
answer that the sender can decrypt; no device is added."""

from __future__ import annotations

import socket
import threading
import time

import nio
import psycopg
import pytest
import yaml
from signedjson.key import decode_verify_key_base64
from signedjson.sign import SignatureVerifyException, verify_signed_json

from harness import Env, wait_for
from harness.meetings import encrypted_room_with_bot, events
from harness.postgres import fresh_database
from test_cluster import leads, second_node

BURST = 200
KILL_AT = 100


class FrontProxy:
    """What a load balancer does for the homeserver's transactions: each connection
    goes to the first node that accepts it, so a dead node is skipped. Its threads end
    with their connections."""

    def __init__(self) -> None:
        self.backends: list[int] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        for port in list(self.backends):
            try:
                upstream = socket.create_connection(("127.0.0.1", port), timeout=2)
                break
            except OSError:
                continue
        else:
            client.close()
            return
        upstream.settimeout(None)
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        _pump(client, upstream)

    def close(self) -> None:
        self.sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        src.close()
        dst.close()


@pytest.fixture
def cluster_db(postgres_url):
    with fresh_database(postgres_url) as url:
        yield url


def identity(node) -> dict:
    """The bot's published keys: master, self-signing, devices (id → device keys)."""
    answer = node.bot_keys()
    bot = node.bot_user_id
    return {
        "master": answer.get("master_keys", {}).get(bot),
        "self_signing": answer.get("self_signing_keys", {}).get(bot),
        "devices": answer.get("device_keys", {}).get(bot, {}),
    }


def verify_key(key_object: dict):
    ((key_id, public),) = key_object["keys"].items()
    algorithm, version = key_id.split(":", 1)
    return key_id, decode_verify_key_base64(algorithm, version, public)


def signed_by(obj: dict, user: str, key) -> bool:
    try:
        verify_signed_json(obj, user, key)
        return True
    except SignatureVerifyException:
        return False


def cross_signed_devices(node) -> dict[str, str] | None:
    """Device id → its ed25519 key, when every device of the bot carries a valid signature
    of the bot's self-signing key, itself signed by the master key; else None."""
    ident = identity(node)
    bot = node.bot_user_id
    if not ident["master"] or not ident["self_signing"] or not ident["devices"]:
        return None
    _, master = verify_key(ident["master"])
    if not signed_by(ident["self_signing"], bot, master):
        return None
    _, self_signing = verify_key(ident["self_signing"])
    devices = {}
    for device_id, keys in ident["devices"].items():
        if not signed_by(keys, bot, self_signing):
            return None
        devices[device_id] = keys["keys"][f"ed25519:{device_id}"]
    return devices


def node_devices(database_url: str) -> dict[str, str]:
    """Node id → the device id it keeps in the database."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT name, value FROM crypto_state WHERE name LIKE 'device_id:%'").fetchall()
    return {name.split(":", 1)[1]: value for name, value in rows}


def bot_answers(user, room: str, bot: str) -> tuple[list[str], int]:
    """For each of the bot's messages, the event it replies to (else its body), with
    undecryptable ones tried again with the keys that arrived since; and how many stay
    undecryptable."""
    replied_to, unreadable = [], 0
    for e in events(user, room):
        if e.get("sender") != bot:
            continue
        if e.get("undecryptable"):
            try:
                e = user.client.olm.decrypt_megolm_event(nio.MegolmEvent.from_dict(e), room).source
            except nio.EncryptionError:
                unreadable += 1
                continue
        if e.get("type") == "m.room.message":
            reply = e.get("content", {}).get("m.relates_to", {}).get("m.in_reply_to", {})
            replied_to.append(reply.get("event_id") or e.get("content", {}).get("body", ""))
    return replied_to, unreadable


def test_a_burst_in_an_encrypted_room_survives_the_leader_s_sigkill_with_no_device_added(tmp_path_factory, cluster_db):
    workdir = tmp_path_factory.mktemp("cluster-e2ee")
    proxy = FrontProxy()

    def behind_the_proxy(service) -> dict:
        # The homeserver reaches the nodes through the load balancer, as in production.
        registration = yaml.safe_load(service.registration_path.read_text())
        registration["url"] = proxy.url
        service.registration_path.write_text(yaml.safe_dump(registration, sort_keys=False))
        proxy.backends.append(service.port)
        return {}

    env = Env(
        workdir / "env",
        database_uri=cluster_db,
        overrides={"cluster": {"node_id": "n1", "node_url": "http://localhost"}},
        synapse_config=behind_the_proxy,
    )
    others = []
    try:
        n1 = env.service
        wait_for(lambda: leads(n1), 10, "node 1 leads")
        others = [second_node(env, workdir / name, name) for name in ("n2", "n3")]
        for node in others:
            proxy.backends.append(node.port)
        # Together: their devices take turns signing themselves with the kept identity.
        starts = [threading.Thread(target=node.start) for node in others]
        for t in starts:
            t.start()
        for t in starts:
            t.join(60)
        assert all(node.proc is not None and node.proc.poll() is None for node in others)

        # One device per node, each cross-signed with the one identity.
        devices = wait_for(lambda: (d := cross_signed_devices(n1)) and len(d) == 3 and d, 30, "three cross-signed bot devices")
        per_node = node_devices(cluster_db)
        assert set(per_node) == {"n1", "n2", "n3"}, per_node
        assert set(per_node.values()) == set(devices), f"each node's device is published: {per_node} {list(devices)}"
        master_before = identity(n1)["master"]

        alice, room = encrypted_room_with_bot(env, "alice", "Grappe chiffrée")
        # A meeting opens; each later `!visio <title>` is answered, in reply, that one
        # is open already.
        alice.send_text(room, "!visio Point chiffré")
        alice.wait_notices(room, env.bot, lambda _: any("Point chiffré" in a for a in bot_answers(alice, room, env.bot)[0]), 30, "the link notice")

        # The burst; the leader is killed in its middle, and the commands keep coming.
        commands = []
        took_over: dict[str, float] = {}

        def watch_election(killed_at: float) -> None:
            deadline = killed_at + 15
            while time.monotonic() < deadline and not took_over:
                for node in others:
                    try:
                        if leads(node):
                            took_over[node.config["cluster"]["node_id"]] = time.monotonic() - killed_at
                    except Exception:  # noqa: BLE001 - a node busy answering: ask again
                        pass
                time.sleep(0.05)

        watcher = None
        for i in range(BURST):
            if i == KILL_AT:
                n1.kill()
                watcher = threading.Thread(target=watch_election, args=(time.monotonic(),), daemon=True)
                watcher.start()
            commands.append(alice.send_text(room, f"!visio Point {i}"))
            if i % 20 == 19:
                # As a client does: a sync now and then (no sync spans the whole burst).
                alice.sync(0)
        watcher.join(20)
        assert took_over, "another node leads after the leader's SIGKILL"
        ((new_leader, after_s),) = took_over.items()
        assert after_s < 10, f"{new_leader} led {after_s:.1f} s after the kill"

        # Every command answered exactly once, and every answer decrypted.
        def all_answered(_) -> bool:
            answered = set(bot_answers(alice, room, env.bot)[0])
            return all(c in answered for c in commands)

        try:
            alice.wait_notices(room, env.bot, all_answered, 90, f"an answer to each of the {BURST} commands")
        except AssertionError as e:
            replied_to, unreadable = bot_answers(alice, room, env.bot)
            missing = [c for c in commands if c not in replied_to]
            raise AssertionError(f"{e}: {len(missing)} unanswered, {unreadable} answers unreadable") from None
        # What a late duplicate would add comes before a marker command's answer.
        mark = alice.send_text(room, "!visio Point final")
        alice.wait_notices(room, env.bot, lambda _: mark in bot_answers(alice, room, env.bot)[0], 30, "the marker's answer")
        replied_to, unreadable = bot_answers(alice, room, env.bot)
        counts = {c: replied_to.count(c) for c in commands}
        assert not {c: n for c, n in counts.items() if n != 1}, {c: n for c, n in counts.items() if n != 1}
        assert unreadable == 0, f"{unreadable} answers could not be decrypted"
        survivors = [n for n in others if n.config["cluster"]["node_id"] == new_leader]
        assert survivors[0].metric("tchap_visio_events_decrypted_total") > 0, "the new leader decrypts with its own device"

        # The killed node comes back with its crypto store: it keeps its device.
        n1.start()
        wait_for(lambda: n1.metric("tchap_visio_device_keys_on_server") == 1, 30, "node 1's device checked on the homeserver")
        assert not leads(n1)

        # No device added: the same three, the same keys, the same identity.
        assert cross_signed_devices(others[0]) == devices
        assert identity(others[0])["master"] == master_before
        assert node_devices(cluster_db) == per_node
        parked = survivors[0].metric("tchap_visio_events_parked_total")
        print(f"new leader {new_leader} after {after_s:.2f} s, {parked:g} events waited for a key there; devices {sorted(devices)}")
    finally:
        for node in others:
            node.close()
        env.close()
        proxy.close()
