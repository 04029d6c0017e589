"""The room–meeting bridge end to end: a real Synapse, matrix-nio users, and
LiveKit's Python SDK peers joining through the link the bot posts.

`!visio <titre>` → link notice (thread root) → peers join with the link's slug → meeting
chat into the thread from guest ghosts, thread replies into the meeting → peers leave →
after the (shortened) grace period, one summary in the thread and one line in the room.
"""

from __future__ import annotations

import os
import re

import pytest
import requests

from harness.util import require_livekit_sdk

require_livekit_sdk()

from harness import Env, wait_for
from harness.lkpeer import Peer
from harness.meetings import (
    LINK,
    NOTICE_S,
    body,
    events,
    in_thread,
    join,
    peer_chats,
    send_in_thread,
    start_meeting,
    wait_event,
)
from harness.webhooks import WebhookReceiver

GRACE_S = 3


@pytest.fixture(scope="module")
def hooks():
    """A webhook receiver that refuses each delivery's first attempt (so every event is
    retried) and checks every signature."""
    with WebhookReceiver(fail_first=1) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def env(tmp_path_factory, hooks):
    e = Env(
        tmp_path_factory.mktemp("bridge"),
        overrides={"meetings": {"grace_period_secs": GRACE_S}, "webhooks": [hooks.config()]},
    )
    yield e
    e.close()


def test_call_request_to_summary_with_chat_both_ways(env, hooks, tmp_path):
    # A display name set before the room exists: the bot never sees her member event
    # and looks the name up before handling the command. (A user of this test only:
    # the bot caches names, and other tests expect alice's default one.)
    alice = env.user("amartin")
    alice._run(alice.client.set_displayname("Alice Martin"))
    alice, room = env.room_with_bot("amartin", name="Bridge")
    notice, slug = start_meeting(env, alice, room, "!visio Point hebdo", "Point hebdo")
    root = notice["event_id"]
    assert "lancée par Alice Martin" in body(notice), body(notice)
    html = notice["content"].get("formatted_body", "")
    assert f"/m/{slug}" in html and "<strong>" in html, html
    assert f'<a href="https://matrix.to/#/{alice.user_id}">Alice Martin</a>' in html, html
    assert notice["content"]["msgtype"] == "m.notice"

    agathe, grant_a = join(env, tmp_path, slug, "Agathe")
    bruno, grant_b = join(env, tmp_path, slug, "Bruno")
    agathe.wait(lambda s: grant_b["identity"] in s["remotes"], 20, "agathe to see bruno")
    first = wait_event(alice, room, lambda e: in_thread(e, root) and e.get("sender") == env.bot, "the first-join notice")
    assert "a rejoint la visio" in body(first), body(first)

    # Meeting → room: a chat message arrives in the thread from the guest's ghost.
    agathe.chat("Bonjour depuis la visio")
    mirrored = wait_event(
        alice, room, lambda e: in_thread(e, root) and body(e) == "Bonjour depuis la visio", "agathe's chat in the thread"
    )
    ghost = mirrored["sender"]
    assert ghost.startswith("@visio_g") and ghost != env.bot, ghost
    assert mirrored["content"]["msgtype"] == "m.text"
    member = alice.member(room, ghost)
    assert member and member.get("displayname") == "Agathe (invité·e)", member

    # Room → meeting: a thread reply reaches both peers, from the server participant,
    # with the Matrix author's name for the page to show.
    send_in_thread(alice, room, root, "Réponse depuis Tchap")
    for p in (agathe, bruno):
        got = p.wait(lambda s: peer_chats_any(s, "tchap", "Réponse depuis Tchap"), 20, f"{p.name} to get the thread reply")
        assert got[0]["attributes"].get("tchap.author_name") == "Alice Martin", got

    # A message in the main timeline (not the thread) is not mirrored by default.
    alice.send_text(room, "hors fil")
    bruno.chat("fin de réunion")
    wait_event(alice, room, lambda e: in_thread(e, root) and body(e) == "fin de réunion", "bruno's chat in the thread")
    assert not peer_chats(agathe, "tchap", "hors fil"), "main timeline messages are not mirrored by default"

    agathe.close()
    bruno.close()
    summary = wait_event(
        alice,
        room,
        lambda e: in_thread(e, root) and e.get("sender") == env.bot and "Compte rendu" in body(e),
        "the summary in the thread",
        timeout=GRACE_S + NOTICE_S,
    )
    text = body(summary)
    for expected in ("« Point hebdo »", "Agathe (invité·e) — ", "Bruno (invité·e) — ", "Participant·e·s : 2", "Messages dans la discussion : 3"):
        assert expected in text, f"{expected!r} not in the summary:\n{text}"
    # Durations: each peer was in for a few seconds, well under an hour.
    for name in ("Agathe", "Bruno"):
        line = next(line for line in text.splitlines() if line.startswith(f"• {name}"))
        assert re.search(r"— (\d+ s|\d+ min)$", line), line
    line = wait_event(alice, room, lambda e: e.get("sender") == env.bot and "terminée" in body(e) and not in_thread(e, root), "the one-line summary")
    assert "2 participant·e·s, 3 messages" in body(line), body(line)
    # The meeting is over: the link no longer lets anyone in.
    r = requests.post(f"{env.service.url}/api/v1/meetings/{slug}/join", json={"name": "Late"}, timeout=10)
    assert r.status_code in (404, 410), r.text
    summaries = [e for e in events(alice, room) if in_thread(e, root) and "Compte rendu" in body(e)]
    assert len(summaries) == 1, summaries

    # Webhooks: every event of this meeting, each signed and accepted once (after one
    # refused attempt each), in order.
    meeting_id = grant_a["meeting"]["id"]

    def of_meeting():
        return [b for b in hooks.events_once() if b.get("meeting", {}).get("id") == meeting_id]

    wait_for(lambda: any(b["type"] == "meeting.ended" for b in of_meeting()), 30, "the meeting.ended webhook")
    got = of_meeting()
    kinds = [b["type"] for b in got]
    assert kinds[0] == "participant.joined" or kinds[0] == "meeting.started", kinds
    assert kinds.count("meeting.started") == 1 and kinds.count("meeting.ended") == 1, kinds
    assert kinds.count("participant.joined") == 2 and kinds.count("participant.left") == 2, kinds
    assert kinds.count("chat.message") == 3, kinds
    assert kinds[-1] == "meeting.ended", kinds
    ended = got[-1]
    assert ended["data"]["chat_messages"] == 3 and len(ended["data"]["attendance"]) == 2, ended
    assert {a["name"] for a in ended["data"]["attendance"]} == {"Agathe (invité·e)", "Bruno (invité·e)"}
    chats = [b["data"] for b in got if b["type"] == "chat.message"]
    assert [c["origin"] for c in chats] == ["meeting", "matrix", "meeting"], chats
    assert all(slug not in str(b) for b in got), "webhooks never carry the join secret"

    # Duration: first join to last leave; the grace period after it is not meeting time.
    first_join = min(b["data"]["joined_at"] for b in got if b["type"] == "participant.joined")
    last_leave = max(b["data"]["left_at"] for b in got if b["type"] == "participant.left")
    duration_ms = ended["data"]["duration_ms"]
    assert abs(duration_ms - (last_leave - first_join)) <= 1000, (duration_ms, first_join, last_leave)
    assert ended["meeting"]["ended_at"] - last_leave >= (GRACE_S - 1) * 1000, ended
    said = re.search(r"Durée\u202f: (\d+) (s|min)$", text, re.MULTILINE)
    assert said, text
    unit_ms = 1000 if said.group(2) == "s" else 60_000
    assert abs(int(said.group(1)) * unit_ms - duration_ms) <= unit_ms, (said.group(0), duration_ms)


def peer_chats_any(state: dict, sender: str, text: str) -> list[dict]:
    return [c for c in state.get("chat", []) if c["from"] == sender and c["text"] == text]


def test_one_meeting_per_room_and_end_needs_power(env):
    alice, room = env.room_with_bot("alice", name="Un seul")
    bob = env.user("bob")
    alice.invite(room, bob.user_id)
    bob._run(bob.client.join(room))
    alice.wait_membership(room, bob.user_id, "join")

    notice, slug = start_meeting(env, alice, room, "!visio", "Visio")
    bob.send_text(room, "!visio Autre titre")
    again = wait_event(alice, room, lambda e: e.get("sender") == env.bot and "déjà ouverte" in body(e), "the already-open answer")
    assert f"/m/{slug}" in body(again), body(again)
    links = {LINK.search(body(e)).group(1) for e in events(alice, room) if e.get("sender") == env.bot and LINK.search(body(e))}
    assert links == {slug}, f"one meeting per room, got links {links}"

    # bob has power level 0: he may not end alice's meeting.
    bob.send_text(room, "!visio fin")
    refusal = wait_event(alice, room, lambda e: e.get("sender") == env.bot and "seule la personne" in body(e), "a polite refusal")
    assert "La visio continue" in body(refusal)
    r = requests.get(f"{env.service.url}/api/v1/meetings/{slug}", timeout=10)
    assert r.status_code == 200, r.text

    bob.send_text(room, "!visio statut")
    wait_event(alice, room, lambda e: e.get("sender") == env.bot and "personne ne l’a encore rejointe" in body(e), "the status")

    # A mistyped command gets a hint, not a meeting.
    bob.send_text(room, "!visio staut")
    wait_event(alice, room, lambda e: e.get("sender") == env.bot and "Vouliez-vous dire !visio statut" in body(e), "a hint")

    # The creator may end it; the summary says nobody came; a new !visio starts a new one.
    alice.send_text(room, "!visio fin")
    wait_event(alice, room, lambda e: e.get("sender") == env.bot and "personne ne l’a rejointe" in body(e), "the empty summary")
    _, new_slug = start_meeting(env, alice, room, "!visio Deuxième", "Deuxième")
    assert new_slug != slug

    # A mention of the bot with a call word is a call request too (here: the same meeting).
    content = {"msgtype": "m.text", "body": "Visio: on fait un appel ?", "m.mentions": {"user_ids": [env.bot]}}
    alice._run(alice.client.room_send(room, "m.room.message", content))
    mention_answer = wait_event(
        alice, room, lambda e: e.get("sender") == env.bot and "déjà ouverte" in body(e) and new_slug in body(e), "the answer to the mention"
    )
    assert "Deuxième" in body(mention_answer)


def test_where_the_bot_may_not_invite_the_bot_posts_guest_chat_in_their_name(env, tmp_path):
    """A room where inviting takes power level 50 and the bot has 0: the guest's ghost
    cannot be invited, so the homeserver refuses its message; the bot posts it instead,
    with the guest's name in front, rather than losing it."""
    alice = env.user("alice")
    resp = alice._run(alice.client.room_create(name="Restreint", power_level_override={"invite": 50}))
    room = resp.room_id
    alice.invite(room, env.bot)
    alice.wait_membership(room, env.bot, "join")
    notice, slug = start_meeting(env, alice, room, "!visio Restreinte", "Restreinte")
    root = notice["event_id"]

    agathe, _ = join(env, tmp_path, slug, "Agathe")
    agathe.chat("Bonjour *malgré tout*")
    mirrored = wait_event(
        alice,
        room,
        lambda e: in_thread(e, root) and e.get("sender") == env.bot and "malgré tout" in body(e),
        "agathe's chat in the thread, from the bot",
    )
    # The whole message is quoted under the name: none of it reads as the bot's own words.
    assert body(mirrored) == "Agathe (invité·e)\u202f:\n> Bonjour malgré tout", body(mirrored)
    html = mirrored["content"]["formatted_body"]
    assert html.startswith("<p><strong>Agathe (invité·e)</strong>\u202f:</p>\n<blockquote><p>Bonjour <em>malgré tout</em>"), html
    assert mirrored["content"]["msgtype"] == "m.text"
    ghosts = [e["sender"] for e in events(alice, room) if e.get("sender", "").startswith("@visio_g")]
    assert not ghosts, f"no ghost may speak here: {ghosts}"
    assert env.service.metric("tchap_visio_outbound_sent_as_bot_total") >= 1

    agathe.close()
    alice.send_text(room, "!visio fin")
    wait_event(alice, room, lambda e: in_thread(e, root) and "Compte rendu" in body(e), "the summary", timeout=GRACE_S + NOTICE_S)


def test_a_guest_banned_by_the_room_is_not_posted_by_the_bot_either(env, tmp_path):
    """The bot speaks for a ghost only when the ghost could never get in: a ghost the
    room's moderators banned stays silent in the room."""
    alice, room = env.room_with_bot("alice", name="Modération")
    notice, slug = start_meeting(env, alice, room, "!visio Modérée", "Modérée")
    root = notice["event_id"]
    agathe, grant_a = join(env, tmp_path, slug, "Agathe")
    bruno, _ = join(env, tmp_path, slug, "Bruno")
    agathe.chat("avant")
    before = wait_event(alice, room, lambda e: in_thread(e, root) and body(e) == "avant", "agathe's first chat")
    ghost = before["sender"]
    assert ghost.startswith("@visio_g"), ghost
    resp = alice._run(alice.client.room_ban(room, ghost, reason="test"))
    assert type(resp).__name__ == "RoomBanResponse", resp

    agathe.chat("après le bannissement")
    # Bruno speaks once his page has Agathe's message: the bridge handles chat in the
    # order the meeting saw it, and the room's queue keeps that order.
    bruno.wait(lambda s: peer_chats_any(s, grant_a["identity"], "après le bannissement"), 20, "bruno to see agathe's message")
    bruno.chat("témoin")
    wait_event(alice, room, lambda e: in_thread(e, root) and body(e) == "témoin", "bruno's chat in the thread")
    leaked = [e for e in events(alice, room) if "après le bannissement" in body(e)]
    assert not leaked, f"a banned guest's message reached the room: {leaked}"

    agathe.close()
    bruno.close()
    alice.send_text(room, "!visio fin")
    wait_event(alice, room, lambda e: in_thread(e, root) and "Compte rendu" in body(e), "the summary", timeout=GRACE_S + NOTICE_S)


def test_restart_mid_meeting_keeps_attendance_chat_and_posts_once(tmp_path_factory, tmp_path):
    env = Env(tmp_path_factory.mktemp("restart"), overrides={"meetings": {"grace_period_secs": GRACE_S}})
    try:
        alice, room = env.room_with_bot("alice", name="Reprise")
        notice, slug = start_meeting(env, alice, room, "!visio Reprise", "Reprise")
        root = notice["event_id"]
        agathe, _ = join(env, tmp_path, slug, "Agathe")
        agathe.chat("avant le redémarrage")
        wait_event(alice, room, lambda e: in_thread(e, root) and body(e) == "avant le redémarrage", "the chat before the restart")

        env.service.kill()  # a crash: no clean shutdown
        agathe.close()
        env.service.start()

        bruno, _ = join(env, tmp_path, slug, "Bruno")
        bruno.chat("après le redémarrage")
        wait_event(alice, room, lambda e: in_thread(e, root) and body(e) == "après le redémarrage", "the chat after the restart")
        bruno.close()
        summary = wait_event(
            alice, room, lambda e: in_thread(e, root) and "Compte rendu" in body(e), "the summary", timeout=GRACE_S + NOTICE_S
        )
        text = body(summary)
        assert "Agathe (invité·e)" in text and "Bruno (invité·e)" in text, text
        assert "Messages dans la discussion : 2" in text, text
        # Let anything that would be posted twice arrive, then count.
        alice.send_text(room, "!visio statut")
        wait_event(alice, room, lambda e: e.get("sender") == env.bot and "Aucune visio en cours" in body(e), "the status after the end")
        bot_events = [e for e in events(alice, room) if e.get("sender") == env.bot]
        assert sum(1 for e in bot_events if f"/m/{slug}" in body(e)) == 1, "the link was posted more than once"
        assert sum(1 for e in bot_events if "Compte rendu de la visio" in body(e)) == 1, "more than one summary"
        assert sum(1 for e in bot_events if "terminée" in body(e) and not in_thread(e, root)) == 1, "more than one end line"
    finally:
        env.close()


def test_meeting_page_in_chromium_chats_with_the_thread_and_shows_the_end(env, tmp_path):
    """The meeting page itself (livekit-client in Debian's Chromium): its chat reaches the
    thread, a thread reply reaches the page with the Matrix author's name, and ending the
    meeting from the room shows the page's "meeting ended" screen."""
    import json
    import shutil
    import subprocess
    import threading

    from harness.util import ROOT

    if not (shutil.which("node") and os.path.exists("/usr/bin/chromium") and (ROOT / "tests/browser/node_modules").is_dir()):
        if os.environ.get("CI"):
            pytest.fail("Chromium, node or tests/browser/node_modules missing (scripts/test.sh prepares them)")
        pytest.skip("Chromium, node or tests/browser/node_modules missing: run scripts/test-browser.sh once")
    alice, room = env.room_with_bot("alice", name="Navigateur")
    notice, slug = start_meeting(env, alice, room, "!visio Navigateur", "Navigateur")
    root = notice["event_id"]
    link = LINK.search(body(notice)).group(0)

    proc = subprocess.Popen(
        ["node", str(ROOT / "tests/browser/bridge-page.mjs"), "--link", link, "--name", "Chloé",
         "--say", "Bonjour depuis Chromium", "--expect", "Bienvenue Chloé"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TCHAP_VISIO_BIN": str(env.service.bin)},
    )
    pidfile = os.environ.get("TCHAP_VISIO_TEST_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as f:
            f.write(f"{proc.pid}\n")
    progress: list[dict] = []
    reader = threading.Thread(target=lambda: progress.extend(json.loads(line) for line in proc.stdout), daemon=True)
    reader.start()

    def reached(event: str):
        if proc.poll() not in (None, 0):
            raise AssertionError(f"the page script failed:\n{proc.stderr.read()}")
        return next((p for p in progress if p["event"] == event), None)

    try:
        wait_for(lambda: reached("joined"), 60, "Chromium to join the meeting")
        mirrored = wait_event(alice, room, lambda e: in_thread(e, root) and body(e) == "Bonjour depuis Chromium", "the page's chat in the thread")
        assert alice.member(room, mirrored["sender"]).get("displayname") == "Chloé (invité·e)"
        send_in_thread(alice, room, root, "Bienvenue Chloé")
        got = wait_for(lambda: reached("received"), 30, "the thread reply on the page")
        assert got["author"] == "alice", got
        alice.send_text(room, "!visio fin")
        wait_for(lambda: reached("ended"), 30, "the page's 'meeting ended' screen")
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    summary = wait_event(alice, room, lambda e: in_thread(e, root) and "Compte rendu de la visio" in body(e), "the summary")
    assert "Chloé (invité·e)" in body(summary) and "Messages dans la discussion : 2" in body(summary), body(summary)


def test_a_late_joiner_sees_the_earlier_chat_including_the_thread_before_anyone_joined(env, tmp_path):
    """A thread message sent while nobody is in the meeting, then meeting chat from a first
    participant: a page that joins afterwards shows both, in order, with their authors,
    the thread message marked as coming from Tchap and its Markdown rendered."""
    import json
    import shutil
    import subprocess

    from harness.util import ROOT

    if not (shutil.which("node") and os.path.exists("/usr/bin/chromium") and (ROOT / "tests/browser/node_modules").is_dir()):
        if os.environ.get("CI"):
            pytest.fail("Chromium, node or tests/browser/node_modules missing (scripts/test.sh prepares them)")
        pytest.skip("Chromium, node or tests/browser/node_modules missing: run scripts/test-browser.sh once")
    alice, room = env.room_with_bot("alice", name="Retard")
    notice, slug = start_meeting(env, alice, room, "!visio Rattrapage", "Rattrapage")
    root = notice["event_id"]
    link = LINK.search(body(notice)).group(0)

    # Nobody is in the meeting yet: the SFU has no room for it.
    early = send_in_thread(alice, room, root, "Je serai en retard, **commencez** sans moi")
    # The history endpoint is the page's only way to it: wait until the bridge stored it.
    paul, grant = join(env, tmp_path, slug, "Paul")
    try:
        paul.wait_connected()

        def stored() -> bool:
            r = requests.get(
                f"{env.service.url}/api/v1/meetings/{slug}/chat",
                headers={"Authorization": f"Bearer {grant['token']}"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            return any(m["id"] == early for m in r.json()["messages"])

        wait_for(stored, 20, "the early thread message in the stored chat")
        paul.chat("Bonjour, je commence")
        wait_event(alice, room, lambda e: in_thread(e, root) and body(e) == "Bonjour, je commence", "Paul's chat in the thread")

        proc = subprocess.run(
            ["node", str(ROOT / "tests/browser/late-joiner-page.mjs"), "--link", link, "--name", "Zoé",
             "--expect", "Je serai en retard", "--expect", "Bonjour, je commence"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "TCHAP_VISIO_BIN": str(env.service.bin)},
        )
        assert proc.returncode == 0, proc.stderr
        shown = json.loads(proc.stdout.strip().splitlines()[-1])["messages"]
    finally:
        paul.close()
    texts = [m["text"] for m in shown]
    first = next(i for i, t in enumerate(texts) if "Je serai en retard" in t)
    second = next(i for i, t in enumerate(texts) if "Bonjour, je commence" in t)
    assert first < second, shown
    assert shown[first]["id"] == early and shown[first]["author"] == "alice", shown[first]
    assert (shown[first]["origin"], shown[first]["mark"]) == ("matrix", "depuis Tchap"), shown[first]
    assert shown[first]["strong"] == ["commencez"] and "**" not in shown[first]["text"], shown[first]
    assert (shown[second]["author"], shown[second]["origin"], shown[second]["mark"]) == ("Paul", "meeting", None), shown[second]
    assert len(texts) == len(set(m["id"] for m in shown)), "a message shown twice"
