"""Effects across nodes: meetings of three rooms on two nodes of one PostgreSQL. What the
leader's bridge decides for a meeting (chat from the thread, a removal, the end) is
applied by the node hosting its room, once; what each node's SFU reports (chat) reaches
the thread once. A node killed under a meeting: its participants join again through the
shared address, land on the live node, the attendance shows the gap, and nothing is
mirrored twice; the meeting page in Chromium does so by itself, under its « reconnexion »
banner (tests/browser/rejoin-page.mjs)."""

from __future__ import annotations

import time

import psycopg
import pytest
import requests
import yaml

from harness import Env
from harness.lkpeer import Peer, token
from harness.page import PageScript, require_browser
from harness.meetings import body, events, in_thread, send_in_thread, start_meeting, wait_event
from harness.postgres import fresh_database
from harness.service import Service
from harness.util import free_port, free_udp_ports, wait_for

GRACE_S = 30
# Each wait of the page script (Chromium on 2 loaded cores).
PAGE_S = 60
OVERRIDES = {"encryption": {"enabled": False}, "meetings": {"grace_period_secs": GRACE_S}}


def cluster_section(node_id: str, port: int) -> dict:
    return {"node_id": node_id, "node_url": f"http://localhost:{port}"}


@pytest.fixture
def cluster_db(postgres_url):
    with fresh_database(postgres_url) as url:
        yield url


def live_nodes(database_url: str) -> set[str]:
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT node_id FROM nodes WHERE heartbeat_at > "
            "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT - 3 * heartbeat_ms"
        ).fetchall()
    return {r[0] for r in rows}


def query(database_url: str, sql: str, *args) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, args or None).fetchall()


def two_nodes(workdir, cluster_db) -> tuple[Env, Service]:
    """Node 1 (the homeserver's registration points at it; it leads) and node 2."""
    env = Env(workdir / "env", database_uri=cluster_db, overrides={**OVERRIDES, "cluster": {"node_id": "n1", "node_url": "http://localhost"}})
    n1 = env.service
    # Node 1's own URL names its port, which the harness picks when it builds it.
    n1.stop()
    cfg = yaml.safe_load(n1.config_path.read_text())
    cfg["cluster"] = cluster_section("n1", n1.port)
    n1.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    n1.config = cfg
    n1.start()
    n2 = Service(workdir / "n2", env.synapse, database_uri=cluster_db, overrides=OVERRIDES, appservice=False)
    cfg2 = yaml.safe_load(n1.config_path.read_text())
    cfg2["appservice"]["port"] = n2.port
    cfg2["metrics"]["port"] = n2.metrics_port
    cfg2["sfu"]["udp_port"] = free_udp_ports(cfg2["sfu"].get("shards") or 1)
    cfg2["sfu"]["tcp_port"] = free_port()
    cfg2["cluster"] = cluster_section("n2", n2.port)
    n2.config_path.write_text(yaml.safe_dump(cfg2, sort_keys=False, allow_unicode=True))
    n2.config = cfg2
    n2.hs_token, n2.as_token, n2.bot_user_id = n1.hs_token, n1.as_token, n1.bot_user_id
    n2.start()
    wait_for(lambda: live_nodes(cluster_db) == {"n1", "n2"}, 15, "two live nodes")
    return env, n2


def chats(peer: Peer, sender: str, text: str) -> list[dict]:
    return [c for c in peer.state().get("chat", []) if c["from"] == sender and c["text"] == text]


def thread_bodies(user, room: str, root: str) -> list[str]:
    return [body(e) for e in events(user, room) if in_thread(e, root)]


def test_effects_reach_the_hosting_node_once_and_a_removal_asked_elsewhere_takes_effect(tmp_path_factory, cluster_db, tmp_path):
    workdir = tmp_path_factory.mktemp("effects")
    env, n2 = two_nodes(workdir, cluster_db)
    n1 = env.service
    nodes = {f"ws://localhost:{n.port}": n for n in (n1, n2)}
    peers: list[Peer] = []
    try:
        meetings = []
        for i in range(3):
            alice, room = env.room_with_bot("alice", name=f"Salon {i}")
            notice, slug = start_meeting(env, alice, room, f"!visio Réunion {i}", f"Réunion {i}")
            # Joins asked alternately of both nodes, as a load balancer would.
            grants = []
            for who, entry in ((f"agathe{i}", (n1, n2)[i % 2]), (f"bruno{i}", (n2, n1)[i % 2])):
                r = requests.post(f"{entry.url}/api/v1/meetings/{slug}/join", json={"name": who}, timeout=10)
                assert r.status_code == 200, r.text
                grants.append(r.json())
            assert grants[0]["url"] == grants[1]["url"], "one node per meeting"
            pair = [Peer(tmp_path, f"p{i}{j}", g["url"], g["token"]) for j, g in enumerate(grants)]
            peers += pair
            meetings.append({"room": room, "root": notice["event_id"], "slug": slug, "grants": grants, "peers": pair, "host": nodes[grants[0]["url"]]})
        hosts = {m["host"].port for m in meetings}
        assert len(hosts) == 2, f"meetings on both nodes: {[m['host'].port for m in meetings]}"

        # Meeting → thread (each node's SFU events): once each.
        for i, m in enumerate(meetings):
            m["peers"][0].chat(f"Bonjour de la visio {i}")
        alice = env.user("alice")
        for i, m in enumerate(meetings):
            wait_event(alice, m["room"], lambda e, i=i, m=m: in_thread(e, m["root"]) and body(e) == f"Bonjour de la visio {i}", f"meeting {i}'s chat in its thread")
        # Thread → meeting (the leader's effects, applied by the hosting node): once each.
        for i, m in enumerate(meetings):
            send_in_thread(alice, m["room"], m["root"], f"Réponse {i}")
        for i, m in enumerate(meetings):
            for p in m["peers"]:
                p.wait(lambda s, i=i: any(c["text"] == f"Réponse {i}" for c in s.get("chat", [])), 20, f"{p.name} gets reply {i}")
        # The marker: a last reply to each, after which nothing more may come.
        for i, m in enumerate(meetings):
            send_in_thread(alice, m["room"], m["root"], f"Marqueur {i}")
            m["peers"][1].wait(lambda s, i=i: any(c["text"] == f"Marqueur {i}" for c in s.get("chat", [])), 20, f"marker {i}")
        for i, m in enumerate(meetings):
            for p in m["peers"]:
                assert len(chats(p, "tchap", f"Réponse {i}")) == 1, f"{p.name}: reply {i} once"
                assert not any(c["text"].startswith("Réponse") and c["text"] != f"Réponse {i}" for c in p.state().get("chat", [])), "no other meeting's chat"
            assert thread_bodies(alice, m["room"], m["root"]).count(f"Bonjour de la visio {i}") == 1, f"meeting {i}'s chat mirrored once"
        applied = query(cluster_db, "SELECT node_id, count(*) FROM sfu_effects WHERE done_at IS NOT NULL GROUP BY node_id ORDER BY node_id")
        assert {n for n, _ in applied} >= {"n1", "n2"}, f"each node applied its own: {applied}"
        wait_for(lambda: query(cluster_db, "SELECT count(*) FROM sfu_effects WHERE done_at IS NULL") == [(0,)], 10, "every effect done")

        # A removal asked of the node that does not host the meeting: the hosting node
        # takes the participant out.
        m = meetings[0]
        elsewhere = n2 if m["host"] is n1 else n1
        victim = m["grants"][1]
        meeting_id = victim["meeting"]["id"]
        admin = token(env.service.sfu_key, env.service.sfu_secret, "admin", meeting_id, room_join=False, room_admin=True)
        r = requests.post(
            f"{elsewhere.url}/twirp/livekit.RoomService/RemoveParticipant",
            json={"room": meeting_id, "identity": victim["identity"]},
            headers={"Authorization": f"Bearer {admin}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        wait_for(lambda: not m["peers"][1].alive(), 15, "the removed peer is disconnected by its node")
        assert query(cluster_db, "SELECT node_id FROM sfu_effects WHERE effect_json LIKE '%remove_participant%'") == [(m["host"].config["cluster"]["node_id"],)]
    finally:
        for peer in peers:
            peer.close()
        n2.close()
        env.close()


def test_a_killed_node_s_participants_rejoin_on_the_live_node_and_attendance_shows_the_gap(tmp_path_factory, cluster_db, tmp_path):
    workdir = tmp_path_factory.mktemp("rejoin")
    env, n2 = two_nodes(workdir, cluster_db)
    n1 = env.service
    peers: list[Peer] = []
    try:
        alice, room = env.room_with_bot("alice", name="Panne")
        notice, slug = start_meeting(env, alice, room, "!visio Panne", "Panne")
        root = notice["event_id"]
        # Node 1 leads; the meeting goes to node 2, the one killed (more load on node 1).
        with psycopg.connect(cluster_db) as conn:
            conn.execute("INSERT INTO room_placements (meeting_id, node_id, placed_at) SELECT id, 'n2', 0 FROM meetings WHERE state != 'ended'")
        # A session per person: the browser's cookie makes its rejoin the same attendee.
        browsers = {who: requests.Session() for who in ("Agathe", "Bruno")}
        grants = []
        for who, browser in browsers.items():
            r = browser.post(f"{env.service.url}/api/v1/meetings/{slug}/join", json={"name": who}, timeout=10)
            assert r.status_code == 200, r.text
            assert r.json()["url"] == f"ws://localhost:{n2.port}"
            grants.append(r.json())
        pair = [Peer(tmp_path, f"{who}-1", g["url"], g["token"], publish=True) for who, g in zip(("agathe", "bruno"), grants)]
        peers += pair
        pair[0].wait_media_from(grants[1]["identity"], video=10, audio_loud=10, timeout=30)
        pair[0].chat("avant la panne")
        wait_event(alice, room, lambda e: in_thread(e, root) and body(e) == "avant la panne", "chat before the failure")

        n2.kill()
        killed = time.monotonic()
        # What the page does (web/src/meeting.ts, `rejoin`): on losing the connection it
        # asks the shared address to join again until it is placed on a live node.
        rejoined = []
        for who, browser in browsers.items():
            def placed(who=who, browser=browser):
                r = browser.post(f"{env.service.url}/api/v1/meetings/{slug}/join", json={"name": who, "rejoin": True}, timeout=10)
                return r.json() if r.status_code == 200 and r.json()["url"] == f"ws://localhost:{n1.port}" else None
            # At the page's pace (REJOIN_TIMING.everyMs), within the joins' rate limit.
            rejoined.append(wait_for(placed, 15, f"{who} placed on the live node", interval=1.5))
        new = [Peer(tmp_path, f"{who}-2", g["url"], g["token"], publish=True) for who, g in zip(("agathe", "bruno"), rejoined)]
        peers += new
        placed_s = time.monotonic() - killed
        new[0].wait_media_from(rejoined[1]["identity"], video=10, audio_loud=10, timeout=30)
        media_s = time.monotonic() - killed
        print(f"rejoin after SIGKILL: placed on the live node at {placed_s:.1f} s, media again at {media_s:.1f} s")
        assert placed_s < 15, f"placed on the live node within 15 s: {placed_s:.1f} s"

        # The dead node's sessions close (at its last heartbeat); the new ones are open.
        wait_for(lambda: query(cluster_db, "SELECT count(*) FROM participant_sessions WHERE node_id = 'n2' AND left_at IS NULL") == [(0,)], 15, "the dead node's sessions closed")
        sessions = query(cluster_db, "SELECT node_id, left_at IS NULL FROM participant_sessions ORDER BY joined_at")
        assert sessions == [("n2", False), ("n2", False), ("n1", True), ("n1", True)], sessions

        # Nothing mirrored again; the summary counts everyone once.
        new[1].chat("après la panne")
        wait_event(alice, room, lambda e: in_thread(e, root) and body(e) == "après la panne", "chat after the rejoin")
        alice.send_text(room, "!visio fin")
        wait_event(alice, room, lambda e: e.get("sender") == env.bot and "Compte rendu" in body(e), "the summary line")
        bodies = thread_bodies(alice, room, root)
        assert bodies.count("avant la panne") == 1, bodies
        assert bodies.count("après la panne") == 1, bodies
        summary = next(b for b in reversed(bodies) if "Compte rendu de la visio" in b)
        # Two attendees (each browser's rejoin is the same person), with the gap.
        assert "Participant·e·s : 2 (" in summary, summary
        assert "Messages dans la discussion : 2" in summary, summary
    finally:
        for peer in peers:
            peer.close()
        n2.close()
        env.close()


def test_a_page_on_a_killed_node_rejoins_the_live_node_by_itself(tmp_path_factory, cluster_db, tmp_path):
    require_browser()
    workdir = tmp_path_factory.mktemp("page-rejoin")
    env, n2 = two_nodes(workdir, cluster_db)
    n1 = env.service
    peers: list[Peer] = []
    page = None
    try:
        alice, room = env.room_with_bot("alice", name="Panne vue")
        notice, slug = start_meeting(env, alice, room, "!visio Panne vue", "Panne vue")
        root = notice["event_id"]
        # Node 1 is the shared address (the page's origin, the homeserver's); the meeting
        # goes to node 2, the one killed.
        with psycopg.connect(cluster_db) as conn:
            conn.execute("INSERT INTO room_placements (meeting_id, node_id, placed_at) SELECT id, 'n2', 0 FROM meetings WHERE state != 'ended'")
        agathe = requests.Session()
        r = agathe.post(f"{n1.url}/api/v1/meetings/{slug}/join", json={"name": "Agathe"}, timeout=10)
        assert r.status_code == 200, r.text
        grant = r.json()
        assert grant["url"] == f"ws://localhost:{n2.port}"
        peers.append(Peer(tmp_path, "agathe-1", grant["url"], grant["token"], publish=True))
        page = PageScript(n1.bin, "rejoin-page.mjs", "--link", f"{n1.url}/m/{slug}", "--name", "Chloé", "--source", grant["identity"], timeout=PAGE_S)
        page.reached("decoding")
        peers[0].chat("avant la panne")
        wait_event(alice, room, lambda e: in_thread(e, root) and body(e) == "avant la panne", "chat before the failure")

        n2.kill()
        page.tell("killed")
        killed = time.monotonic()

        # Agathe's SDK client does what the page does by itself.
        def placed():
            r = agathe.post(f"{n1.url}/api/v1/meetings/{slug}/join", json={"name": "Agathe", "rejoin": True}, timeout=10)
            return r.json() if r.status_code == 200 and r.json()["url"] == f"ws://localhost:{n1.port}" else None

        again = wait_for(placed, 15, "Agathe placed on the live node", interval=1.5)
        peers.append(Peer(tmp_path, "agathe-2", again["url"], again["token"], publish=True))
        page.tell(f"source {again['identity']}")
        banner = page.reached("banner")
        rejoined = page.reached("rejoined")
        took_s = time.monotonic() - killed
        print(f"page rejoin after SIGKILL: banner at {banner['ms']} ms, media again at {rejoined['ms']} ms ({took_s:.1f} s here)")
        assert banner["text"] == "Connexion perdue. Reconnexion en cours…", banner
        assert rejoined["ms"] < 15_000, f"the page back on the live node with media within 15 s: {rejoined}"
        page.finish()

        # The page's and Agathe's sessions on the dead node closed, their new ones on node 1.
        wait_for(lambda: query(cluster_db, "SELECT count(*) FROM participant_sessions WHERE node_id = 'n2' AND left_at IS NULL") == [(0,)], 15, "the dead node's sessions closed")
        nodes = sorted(r[0] for r in query(cluster_db, "SELECT node_id FROM participant_sessions"))
        assert nodes == ["n1", "n1", "n2", "n2"], nodes

        alice.send_text(room, "!visio fin")
        wait_event(alice, room, lambda e: e.get("sender") == env.bot and "Compte rendu" in body(e), "the summary line")
        bodies = thread_bodies(alice, room, root)
        assert bodies.count("avant la panne") == 1, bodies
        summary = next(b for b in reversed(bodies) if "Compte rendu de la visio" in b)
        assert "Participant·e·s : 2 (" in summary, summary
    finally:
        if page is not None:
            page.close()
        for peer in peers:
            peer.close()
        n2.close()
        env.close()
