"""Two nodes on one PostgreSQL and one Synapse: any node takes the homeserver's
transactions, the one leader handles them, each once; when the leader is killed the
other node takes over within 10 s and carries on from the database. Three nodes: new
meetings' rooms are placed on the least-loaded node, every node's join endpoint sends
clients there, and the others refuse them."""

from __future__ import annotations

import os
import signal
import time
import uuid

import psycopg
import pytest
import requests
import yaml

from harness import Env, scenarios
from harness.lkpeer import Peer
from harness.meetings import start_meeting
from harness.postgres import fresh_database
from harness.service import Service
from harness.util import free_port, free_udp_ports, wait_for

# Clear rooms here; encrypted rooms on several nodes: test_cluster_e2ee.py.
OVERRIDES = {"encryption": {"enabled": False}}


def cluster_section(node_id: str, port: int) -> dict:
    # `localhost`, not the harness's 127.0.0.1: node_url must differ from the
    # public address, which in production is the load balancer's.
    return {"node_id": node_id, "node_url": f"http://localhost:{port}"}


def second_node(env: Env, workdir, node_id: str = "n2") -> Service:
    """Another node of the same deployment: node 1's config (tokens, keys, database)
    with its own ports and node id. The homeserver's registration stays node 1's."""
    node = Service(workdir, env.synapse, database_uri=env.service.config["database"]["uri"], overrides=OVERRIDES, appservice=False)
    cfg = yaml.safe_load(env.service.config_path.read_text())
    cfg["appservice"]["port"] = node.port
    cfg["metrics"]["port"] = node.metrics_port
    cfg["sfu"]["udp_port"] = free_udp_ports(cfg["sfu"].get("shards") or 1)
    cfg["sfu"]["tcp_port"] = free_port()
    cfg["cluster"] = cluster_section(node_id, node.port)
    node.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    node.config = cfg
    node.hs_token = env.service.hs_token
    node.as_token = env.service.as_token
    node.bot_user_id = env.service.bot_user_id
    return node


@pytest.fixture
def cluster_db(postgres_url):
    """A database of this test's own: each test starts a Synapse of its own too."""
    with fresh_database(postgres_url) as url:
        yield url


def leads(node: Service) -> bool:
    return node.metric("tchap_visio_cluster_leader") == 1


def help_count(alice, room: str, bot: str) -> int:
    """Help notices in the room once every earlier command has its answer (once per
    room: the marker opens a meeting)."""
    return sum(scenarios.is_help(n) for n in scenarios.marker(alice, room, bot))


def test_the_leader_handles_what_any_node_takes_once_and_a_killed_leader_is_replaced(tmp_path_factory, cluster_db):
    workdir = tmp_path_factory.mktemp("cluster")
    # Node 1, which the homeserver's registration points at, starts alone and leads.
    # Its node_url is read by nothing yet (placement is later work).
    env = Env(
        workdir / "env",
        database_uri=cluster_db,
        overrides={**OVERRIDES, "cluster": {"node_id": "n1", "node_url": "http://localhost"}},
    )
    n2 = None
    try:
        n1 = env.service
        wait_for(lambda: leads(n1), 10, "node 1 leads")
        n2 = second_node(env, workdir / "n2")
        n2.start()
        alice, room = env.room_with_bot("alice", name="Cluster")
        alice.send_text(room, "!visio aide")
        scenarios.wait_help(alice, room, env.bot, 1)
        assert not leads(n2), "one leader at a time"
        assert n2.metric("tchap_visio_events_processed_total") == 0, "node 2 handles nothing while node 1 leads"

        # SIGKILL of the leader: node 2 takes over within 10 s.
        n1.kill()
        killed = time.monotonic()
        wait_for(lambda: leads(n2), 10, "node 2 takes over")
        assert time.monotonic() - killed < 10

        # Node 1 comes back as a follower; the homeserver's transactions reach it, and
        # node 2 handles them.
        n1.start()
        assert not leads(n1), "node 1 comes back as a follower"
        alice.send_text(room, "!visio help")
        scenarios.wait_help(alice, room, env.bot, 2)
        # Transactions put straight to each node: each event handled once.
        for i, node in enumerate((n1, n2, n1)):
            body = {"events": [scenarios.fake_message(room, alice.user_id, "!visio aide", f"$cluster-{i}-{uuid.uuid4().hex}")]}
            assert node.put_transaction(f"cluster-{i}-{uuid.uuid4().hex}", body).status_code == 200
        scenarios.wait_help(alice, room, env.bot, 5)
        assert help_count(alice, room, env.bot) == 5, "each command answered once"
        assert n1.metric("tchap_visio_events_processed_total") == 0, "the follower handles nothing"
        assert n2.metric("tchap_visio_events_processed_total") >= 4
        assert leads(n2) and not leads(n1)
    finally:
        if n2 is not None:
            n2.close()
        env.close()


def test_a_stalled_leader_hands_over_and_posts_nothing_when_it_wakes(tmp_path_factory, cluster_db):
    workdir = tmp_path_factory.mktemp("cluster-stop")
    # This node's part of the config from its environment, as a container would have it.
    env = Env(
        workdir / "env",
        database_uri=cluster_db,
        overrides=OVERRIDES,
        service_env={"TCHAP_VISIO_CLUSTER__NODE_ID": "n1", "TCHAP_VISIO_CLUSTER__NODE_URL": "http://localhost"},
    )
    n2 = None
    stopped = False
    try:
        n1 = env.service
        wait_for(lambda: leads(n1), 10, "node 1 leads")
        n2 = second_node(env, workdir / "n2")
        n2.start()
        alice, room = env.room_with_bot("alice", name="Cluster stop")
        alice.send_text(room, "!visio aide")
        scenarios.wait_help(alice, room, env.bot, 1)

        # The leader stalls: its lock connection falls silent, PostgreSQL ends it after
        # three heartbeats (6 s), and node 2 takes over within 10 s.
        os.kill(n1.proc.pid, signal.SIGSTOP)
        stopped = True
        stalled = time.monotonic()
        wait_for(lambda: leads(n2), 10, "node 2 takes over from the stalled leader")
        assert time.monotonic() - stalled < 10
        # Meanwhile the homeserver's transactions reach node 2 (a load balancer skips
        # a node that does not answer).
        body = {"events": [scenarios.fake_message(room, alice.user_id, "!visio aide", f"$stop-{uuid.uuid4().hex}")]}
        assert n2.put_transaction(f"stop-{uuid.uuid4().hex}", body).status_code == 200
        scenarios.wait_help(alice, room, env.bot, 2)

        # The stalled leader wakes: it finds it no longer leads and stops its workers.
        os.kill(n1.proc.pid, signal.SIGCONT)
        stopped = False
        wait_for(lambda: not leads(n1), 10, "node 1 steps down")
        wait_for(lambda: "no longer leads" in n1.logs(), 10, "node 1 says it stepped down")
        assert leads(n2)
        # (A commit node 1 had sent before it stopped is counted only now that it
        # reads the answer; the server applied it before node 2's term began.)
        handled_by_n1 = n1.metric("tchap_visio_events_processed_total")
        sent_by_n1 = n1.metric("tchap_visio_outbound_send_seconds_count")
        # The homeserver's transactions reach node 1 again; node 2 handles them.
        alice.send_text(room, "!visio aide")
        scenarios.wait_help(alice, room, env.bot, 3)
        # Every command answered once: nothing posted twice by the woken node.
        assert help_count(alice, room, env.bot) == 3
        assert n1.metric("tchap_visio_events_processed_total") == handled_by_n1, "node 1 handles nothing more"
        assert n1.metric("tchap_visio_outbound_send_seconds_count") == sent_by_n1, "node 1 sends nothing more"
    finally:
        if stopped:
            os.kill(n1.proc.pid, signal.SIGCONT)
        if n2 is not None:
            n2.close()
        env.close()


def live_nodes(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT node_id FROM nodes WHERE heartbeat_at > "
            "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT - 3 * heartbeat_ms"
        ).fetchall()
    return {r[0] for r in rows}


def test_meetings_spread_over_three_nodes_and_media_flows_on_each_meeting_s_node(tmp_path_factory, cluster_db, tmp_path):
    workdir = tmp_path_factory.mktemp("placement")
    env = Env(
        workdir / "env",
        database_uri=cluster_db,
        overrides={**OVERRIDES, "cluster": {"node_id": "n1", "node_url": "http://localhost"}},
    )
    others: list[Service] = []
    peers: list[Peer] = []
    try:
        n1 = env.service
        # Node 1's own URL names its port, which the harness picks when it builds it.
        n1.stop()
        cfg = yaml.safe_load(n1.config_path.read_text())
        cfg["cluster"] = cluster_section("n1", n1.port)
        n1.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        n1.config = cfg
        n1.start()
        others = [second_node(env, workdir / name, name) for name in ("n2", "n3")]
        for node in others:
            node.start()
        nodes = [n1, *others]
        wait_for(lambda: live_nodes(cluster_db) == {"n1", "n2", "n3"}, 15, "three live nodes")
        by_url = {f"ws://localhost:{node.port}": node for node in nodes}

        hosts = []
        for i in range(3):
            alice, room = env.room_with_bot("alice", name=f"Salon {i}")
            _, slug = start_meeting(env, alice, room, f"!visio Réunion {i}", f"Réunion {i}")
            grants = []
            # The two participants ask two different nodes, as a load balancer would.
            for who, entry in ((f"agathe{i}", nodes[i]), (f"bruno{i}", nodes[(i + 1) % 3])):
                r = requests.post(f"{entry.url}/api/v1/meetings/{slug}/join", json={"name": who}, timeout=10)
                assert r.status_code == 200, r.text
                grants.append((who, r.json()))
            urls = {g["url"] for _, g in grants}
            assert len(urls) == 1, f"one node per meeting: {urls}"
            url = urls.pop()
            assert url in by_url, f"{url} is no node's URL: {list(by_url)}"
            hosts.append(url)
            pair = [Peer(tmp_path, who, g["url"], g["token"], publish=True) for who, g in grants]
            peers += pair
            (a, ga), (b, gb) = zip(pair, (g for _, g in grants))
            a.wait_media_from(gb["identity"], video=10, audio_loud=10, timeout=30)
            b.wait_media_from(ga["identity"], video=10, audio_loud=10, timeout=30)

            # Another node refuses the meeting's room, even with a valid token.
            elsewhere = next(u for u in by_url if u != url)
            stray = Peer(tmp_path, f"stray{i}", elsewhere, grants[0][1]["token"], once=True, wait_connected=False)
            code, st = stray.wait_exit(30)
            assert code != 0, f"a room never spans nodes: {st}"
            assert by_url[elsewhere].metric("tchap_visio_signal_refused_total", reason="elsewhere") >= 1, st
        assert len(set(hosts)) >= 2, f"meetings on at least two nodes: {hosts}"
    finally:
        for peer in peers:
            peer.close()
        for node in others:
            node.close()
        env.close()
