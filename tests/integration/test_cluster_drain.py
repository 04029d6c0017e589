"""Draining a node for a rolling upgrade, with two nodes on one PostgreSQL: `node drain`
sends new meetings to the other node while the drained node's meeting keeps its media,
and the drained node hands the leadership over; SIGTERM on the leader does the same,
waits for its participants to leave (or for cluster.drain_timeout_secs), then stops,
and the other node leads within 10 s."""

from __future__ import annotations

import os
import signal
import time

import psycopg
import requests
import yaml

from harness import Env
from harness.lkpeer import Peer
from harness.meetings import LINK
from harness.service import Service
from harness.util import wait_for
from test_cluster import OVERRIDES, cluster_db, cluster_section, leads, live_nodes, second_node  # noqa: F401


def participants(database_url: str) -> dict[str, int]:
    """Each node's participants as of its last heartbeat."""
    with psycopg.connect(database_url) as conn:
        return dict(conn.execute("SELECT node_id, participants FROM nodes").fetchall())


def create_meeting(node: Service, title: str) -> str:
    r = node.cli("meeting", "create", "-c", str(node.config_path), "--title", title)
    assert r.returncode == 0, r.stdout
    return LINK.search(r.stdout).group(1)


def join(entry: Service, slug: str, who: str) -> dict:
    r = requests.post(f"{entry.url}/api/v1/meetings/{slug}/join", json={"name": who}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def pair(tmp_path, entry: Service, slug: str, names: tuple[str, str]) -> tuple[list[Peer], list[dict]]:
    """Two publishing participants of `slug`, joined through `entry`, once media flows
    both ways."""
    grants = [join(entry, slug, who) for who in names]
    peers = [Peer(tmp_path, who, g["url"], g["token"], publish=True) for who, g in zip(names, grants)]
    (a, b), (ga, gb) = peers, grants
    a.wait_media_from(gb["identity"], video=10, audio_loud=10, timeout=30)
    b.wait_media_from(ga["identity"], video=10, audio_loud=10, timeout=30)
    return peers, grants


def test_a_drained_node_takes_no_new_meeting_keeps_its_own_and_sigterm_hands_over(tmp_path_factory, cluster_db, tmp_path):
    workdir = tmp_path_factory.mktemp("drain")
    env = Env(
        workdir / "env",
        database_uri=cluster_db,
        overrides={**OVERRIDES, "cluster": {"node_id": "n1", "node_url": "http://localhost"}},
    )
    n2 = None
    peers: list[Peer] = []
    try:
        n1 = env.service
        # Node 1's own URL names its port; a short drain bound, checked at the end.
        n1.stop()
        cfg = yaml.safe_load(n1.config_path.read_text())
        cfg["cluster"] = {**cluster_section("n1", n1.port), "drain_timeout_secs": 3}
        n1.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
        n1.config = cfg
        n1.start()
        wait_for(lambda: leads(n1), 10, "node 1 leads")
        n2 = second_node(env, workdir / "n2", "n2")
        cfg2 = yaml.safe_load(n2.config_path.read_text())
        cfg2["cluster"]["drain_timeout_secs"] = 60
        n2.config_path.write_text(yaml.safe_dump(cfg2, sort_keys=False, allow_unicode=True))
        n2.start()
        wait_for(lambda: live_nodes(cluster_db) == {"n1", "n2"}, 15, "two live nodes")
        url = {n1: f"ws://localhost:{n1.port}", n2: f"ws://localhost:{n2.port}"}

        # One meeting on each node, two participants each: the nodes' loads are equal. With
        # equal loads, placement may pick either node: each meeting is placed beforehand.
        before = create_meeting(n1, "Avant la mise à jour")
        other = create_meeting(n1, "Sur le second nœud")
        with psycopg.connect(cluster_db) as conn:
            for slug, node in ((before, "n1"), (other, "n2")):
                conn.execute("INSERT INTO room_placements (meeting_id, node_id, placed_at) SELECT id, %s, 0 FROM meetings WHERE slug = %s", (node, slug))
        pair1, grants1 = pair(tmp_path, n2, before, ("agathe", "bruno"))
        assert {g["url"] for g in grants1} == {url[n1]}, grants1
        pair2, grants2 = pair(tmp_path, n1, other, ("chloe", "denis"))
        assert {g["url"] for g in grants2} == {url[n2]}, grants2
        peers += pair1 + pair2
        wait_for(lambda: participants(cluster_db) == {"n1": 2, "n2": 2}, 10, "both loads in the heartbeats")

        # `node drain` on node 1: the running node learns it at its next heartbeat.
        r = n1.cli("node", "drain", "-c", str(n1.config_path))
        assert r.returncode == 0 and "n1" in r.stdout and "1 meeting" in r.stdout, r.stdout
        drained = time.monotonic()
        wait_for(lambda: leads(n2), 10, "node 2 leads once node 1 drains")
        assert time.monotonic() - drained < 10
        assert not leads(n1)
        assert "gives up the leadership" in n1.log_path.read_text()
        # New meetings go to node 2; the second would go to node 1 without the drain
        # (equal participants, node 2 hosting more rooms).
        for i in range(2):
            slug = create_meeting(n1, f"Nouvelle {i}")
            for entry in (n1, n2):
                assert join(entry, slug, f"eve{i}")["url"] == url[n2]
        # Node 1's meeting keeps its node and its media.
        assert join(n2, before, "fanny")["url"] == url[n1]
        (a, b), (ga, gb) = pair1, grants1
        seen = a.remote(gb["identity"])["video_frames"], b.remote(ga["identity"])["video_frames"]
        a.wait_media_from(gb["identity"], video=seen[0] + 20, timeout=20)
        b.wait_media_from(ga["identity"], video=seen[1] + 20, timeout=20)

        # Node 1 is back in service without a restart.
        r = n1.cli("node", "undrain", "-c", str(n1.config_path))
        assert r.returncode == 0, r.stdout

        # SIGTERM on the leader, node 2: it hands over at once, and waits for its
        # participants.
        os.kill(n2.proc.pid, signal.SIGTERM)
        terminated = time.monotonic()
        wait_for(lambda: leads(n1), 10, "node 1 leads after node 2's SIGTERM")
        assert time.monotonic() - terminated < 10
        assert n2.proc.poll() is None, "node 2 waits for its meeting"
        slug = create_meeting(n1, "Pendant l'arrêt")
        assert join(n2, slug, "gilles")["url"] == url[n1], "a draining node gets no new meeting"
        c, d = pair2
        seen = c.remote(grants2[1]["identity"])["video_frames"]
        c.wait_media_from(grants2[1]["identity"], video=seen + 20, timeout=20)
        # Its participants leave: it stops cleanly, and counts as dead at once, so that
        # a rejoin lands on node 1 without waiting for missed heartbeats.
        for peer in pair2:
            peer.close()
        assert n2.proc.wait(15) == 0, n2.logs()
        n2.proc = None
        assert "drained: no participant left" in n2.log_path.read_text()
        assert live_nodes(cluster_db) == {"n1"}
        assert join(n1, other, "chloe")["url"] == url[n1]

        # SIGTERM with participants who stay: node 1 stops after its 3 s bound.
        os.kill(n1.proc.pid, signal.SIGTERM)
        terminated = time.monotonic()
        assert n1.proc.wait(15) == 0, n1.logs()
        assert 3 <= time.monotonic() - terminated < 15
        n1.proc = None
        assert "drain_timeout_secs passed" in n1.log_path.read_text()
    finally:
        for peer in peers:
            peer.close()
        if n2 is not None:
            n2.close()
        env.close()
