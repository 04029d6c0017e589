"""Who may join: access levels, Matrix identity codes with a private ✅, the lobby run
from the room, removals, and LiveKit's RoomService. A real Synapse, matrix-nio as the
members' client, LiveKit's Python SDK (and livekit-api) as participants and server SDK.
"""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
import requests

from harness.util import require_livekit_sdk

require_livekit_sdk()

from harness import Env, wait_for
from harness.meetings import NOTICE_S, body, events, in_thread, start_meeting, wait_event
from harness.lkpeer import Peer, PeerError

CODE = re.compile(r"^[0-9A-HJKMNP-TV-Z]{8}$")
# Join tokens of this module's service: short, so that a token can expire during a test.
TOKEN_TTL_S = 30


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # Every user of this Synapse counts as an extern, so that restricted rooms can be
    # tested; the other rooms of these tests are not restricted, where it changes nothing.
    e = Env(
        tmp_path_factory.mktemp("access"),
        overrides={"meetings": {"external_servers": ["localhost"], "grace_period_secs": 2, "join_token_ttl_secs": TOKEN_TTL_S}},
    )
    yield e
    e.close()


def api(env, slug: str, path: str = "") -> str:
    return f"{env.service.url}/api/v1/meetings/{slug}{path}"


def claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class Page:
    """One browser: a requests session keeps its tv_browser cookie, as a page does."""

    def __init__(self, env, slug: str):
        self.env, self.slug = env, slug
        self.http = requests.Session()

    def code(self) -> dict:
        r = self.http.post(api(self.env, self.slug, "/verification"), timeout=10)
        assert r.status_code == 201, r.text
        answer = r.json()
        assert CODE.match(answer["code"]), answer
        assert answer["expires_in"] == 300
        assert answer["command"] == f"!visio entrer {answer['code']}"
        return answer

    def verification(self, vid: str, wait: int = 0) -> dict:
        r = self.http.get(api(self.env, self.slug, f"/verification/{vid}"), params={"wait": wait}, timeout=40)
        assert r.status_code == 200, r.text
        return r.json()

    def join(self, name: str, verification: str | None = None) -> requests.Response:
        payload = {"name": name}
        if verification:
            payload["verification"] = verification
        return self.http.post(api(self.env, self.slug, "/join"), json=payload, timeout=20)

    def lobby(self, lid: str, wait: int = 0) -> dict:
        r = self.http.get(api(self.env, self.slug, f"/lobby/{lid}"), params={"wait": wait}, timeout=40)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_lobby(self, lid: str, state: str, timeout: float = NOTICE_S) -> dict:
        return wait_for(lambda: (s := self.lobby(lid, wait=5))["state"] == state and s, timeout, f"lobby {state}", interval=0)


def room_with(env, owner: str, members: list[str], name: str):
    """`owner` makes a room with `members` (joined) and the bot."""
    alice = env.e2ee_user(owner)
    room = alice.create_room(name=name)
    alice.invite(room, env.bot)
    for m in members:
        u = env.e2ee_user(m)
        alice.invite(room, u.user_id)
        u.join(room)
        u.sync(0)
    alice.wait_membership(room, env.bot, "join")
    alice.sync(0)
    return alice, room


def bot_reply(env, user, room: str, pattern: str) -> dict:
    return wait_event(
        user, room, lambda e: e.get("sender") == env.bot and re.search(pattern, body(e)), f"the bot's {pattern!r}"
    )


def prompts(env, user) -> list[tuple[str, dict]]:
    """The bot's private confirmation prompts this user received, oldest first."""
    return [
        (rid, e)
        for rid, timeline in user.timelines.items()
        for e in timeline
        if e.get("sender") == env.bot and "sous votre nom" in body(e)
    ]


def send_code(env, page: Page, user, room: str) -> tuple[dict, str, dict]:
    """The member sends a fresh code of `page` in `room`; returns (the code, the room of
    the private prompt the bot sends them, the prompt), the one-to-one room joined."""
    seen = len(prompts(env, user))
    code = page.code()
    user.send_text(room, code["command"])

    def prompt():
        user.sync(500)
        for invited in sorted(user.invited - set(user.timelines)):
            user.join(invited)
        found = prompts(env, user)
        return found[seen] if len(found) > seen else None

    direct_room, ask = wait_for(prompt, NOTICE_S, "the private confirmation prompt", interval=0)
    assert "« " in body(ask) and "✅ pour confirmer" in body(ask), body(ask)
    return code, direct_room, ask


def identify(env, page: Page, user, room: str) -> dict:
    """Code in `room`, ✅ in private; returns the code once verified."""
    code, direct_room, ask = send_code(env, page, user, room)
    assert page.verification(code["id"])["state"] == "confirming"
    user.react(direct_room, ask["event_id"], "✅")
    state = wait_for(
        lambda: (s := page.verification(code["id"], wait=5))["state"] == "verified" and s, NOTICE_S, "verified", interval=0
    )
    assert state["user_id"] == user.user_id
    return code


def identified_join(env, slug: str, user, room: str, tmp_path, name: str) -> tuple[Peer, dict]:
    page = Page(env, slug)
    code = identify(env, page, user, room)
    r = page.join(name, verification=code["id"])
    assert r.status_code == 200, r.text
    grant = r.json()
    return Peer(tmp_path, name.lower(), grant["url"], grant["token"], publish=True), grant


def validate(env, token: str, path: str = "/rtc/validate") -> requests.Response:
    return requests.get(f"{env.service.url}{path}", params={"access_token": token}, timeout=10)


def test_members_only_codes_confirmations_and_refusals(env, tmp_path):
    alice, room = room_with(env, "alice", ["bob", "dave"], "Salon membres")
    bob, dave = env.e2ee_user("bob"), env.e2ee_user("dave")
    _, slug = start_meeting(env, alice, room, "!visio Réunion des membres", "Réunion des membres")
    alice.send_text(room, "!visio accès membres")
    bot_reply(env, alice, room, "Accès à « Réunion des membres » : membres")

    guest = Page(env, slug).join("Zoé")
    assert guest.status_code == 403, guest.text
    assert guest.json()["errcode"] == "M_FORBIDDEN"
    assert guest.json()["reason"] == "members_only"
    assert "membres du salon" in guest.json()["error"]

    # Bob identifies: code in the room, ✅ in private, then joins under his Matrix name.
    page = Page(env, slug)
    code = identify(env, page, bob, room)
    bot_reply(env, bob, room, "Code reçu")
    joined = page.join("peu importe", verification=code["id"])
    assert joined.status_code == 200, joined.text
    grant = joined.json()
    assert grant["user_id"] == bob.user_id
    c = claims(grant["token"])
    assert c["name"] == "bob", "the name is the member's display name in the room"
    assert c["attributes"]["tchap.matrix_id"] == bob.user_id
    assert c["attributes"]["tchap.access"] == "member"
    assert "tchap.moderator" not in c["attributes"], "bob is below the power level"
    assert c["exp"] - c["nbf"] == TOKEN_TTL_S, "join tokens live meetings.join_token_ttl_secs"
    # Single use; and bound to the browser that asked.
    assert page.join("Bob", verification=code["id"]).status_code == 403
    thief = Page(env, slug)
    assert thief.http.get(api(env, slug, f"/verification/{code['id']}"), timeout=10).status_code == 404
    assert thief.join("Bob", verification=code["id"]).status_code == 404

    # The others see him identified; alice, who started the meeting, is a moderator.
    bob_peer = Peer(tmp_path, "bob", grant["url"], grant["token"])
    bob_peer.wait_connected()
    alice_peer, alice_grant = identified_join(env, slug, alice, room, tmp_path, "Alice")
    assert claims(alice_grant["token"])["attributes"]["tchap.moderator"] == "true"
    assert claims(alice_grant["token"])["video"]["roomAdmin"] is True
    alice_peer.wait_connected()
    seen = alice_peer.wait(
        lambda st: (r := st.get("remotes", {}).get(grant["identity"])) and r.get("attributes") and r, 30, "bob's attributes"
    )
    assert seen["attributes"]["tchap.matrix_id"] == bob.user_id
    assert seen["name"] == "bob"

    # Dave sends a code and never confirms: it identifies nobody.
    dave_page = Page(env, slug)
    dave_code, _, _ = send_code(env, dave_page, dave, room)
    assert dave_page.verification(dave_code["id"])["state"] == "confirming"
    refused = dave_page.join("Dave", verification=dave_code["id"])
    assert refused.status_code == 403, refused.text

    # A verification of this meeting opens no other meeting.
    _, other_room = room_with(env, "alice", [], "Autre salon")
    _, other_slug = start_meeting(env, alice, other_room, "!visio Autre", "Autre")
    other = requests.post(api(env, other_slug, "/join"), json={"name": "x", "verification": dave_code["id"]}, cookies=dave_page.http.cookies, timeout=10)
    assert other.status_code == 404, other.text

    # Carol is no member: her code verifies nothing.
    carol = env.e2ee_user("carol")
    carol_room = carol.create_room(name="Carol et le bot")
    carol.invite(carol_room, env.bot)
    carol.wait_membership(carol_room, env.bot, "join")
    carol.sync(0)
    carol_page = Page(env, slug)
    carol_code = carol_page.code()
    carol.send_text(carol_room, carol_code["command"])
    bot_reply(env, carol, carol_room, "pas membre du salon")
    assert carol_page.verification(carol_code["id"])["state"] == "pending"
    alice_peer.close()
    bob_peer.close()


def openid_token(env, user) -> dict:
    r = requests.post(
        f"{env.synapse.url}/_matrix/client/v3/user/{user.user_id}/openid/request_token",
        headers={"Authorization": f"Bearer {user.client.access_token}"},
        json={},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()


def test_an_openid_token_identifies_a_member_without_a_code(env, tmp_path):
    alice, room = room_with(env, "alice", ["bob"], "Salon OpenID")
    bob = env.e2ee_user("bob")
    _, slug = start_meeting(env, alice, room, "!visio Élément", "Élément")
    alice.send_text(room, "!visio accès membres")
    bot_reply(env, alice, room, "Accès à « Élément » : membres")
    token = openid_token(env, bob)
    bob_page = Page(env, slug)
    joined = bob_page.http.post(api(env, slug, "/join"), json={"name": "x", "openid_token": token}, timeout=20)
    assert joined.status_code == 200, joined.text
    assert joined.json()["user_id"] == bob.user_id
    assert claims(joined.json()["token"])["attributes"]["tchap.matrix_id"] == bob.user_id
    # His page loses its node and joins again: the same browser stays bob, as a member.
    again = bob_page.http.post(api(env, slug, "/join"), json={"name": "x", "rejoin": True}, timeout=20)
    assert again.status_code == 200, again.text
    assert claims(again.json()["token"])["attributes"]["tchap.access"] == "member"
    assert again.json()["user_id"] == bob.user_id
    # Once he has left the room his rejoin is refused: the bridge revokes his grant when it
    # sees the leave, and until then the join asks the homeserver about him again.
    bob.leave(room)

    def refused_after_leaving():
        r = bob_page.http.post(api(env, slug, "/join"), json={"name": "x", "rejoin": True}, timeout=20)
        assert r.status_code in (200, 403), r.text
        return r.status_code == 403 and r.json()

    assert wait_for(refused_after_leaving, 10, "the rejoin refused once bob left")["reason"] == "members_only"
    forged = dict(token, access_token="not-a-real-token")
    refused = requests.post(api(env, slug, "/join"), json={"name": "x", "openid_token": forged}, timeout=20)
    assert refused.status_code == 403, refused.text
    # Carol's token is genuine, but she is no member: members only.
    carol = env.e2ee_user("carol")
    outsider = requests.post(api(env, slug, "/join"), json={"name": "x", "openid_token": openid_token(env, carol)}, timeout=20)
    assert outsider.status_code == 403 and outsider.json()["reason"] == "members_only", outsider.text


def test_restricted_rooms_keep_externs_out_and_are_never_public(env, tmp_path):
    alice, room = room_with(env, "alice", [], "Salon restreint")
    alice._run(alice.client.room_put_state(room, "im.vector.room.access_rules", {"rule": "restricted"}))
    _, slug = start_meeting(env, alice, room, "!visio Restreint", "Restreint")
    alice.send_text(room, "!visio accès public")
    bot_reply(env, alice, room, "ne peut pas y être publique")
    # Alice is a member, but of an external server here: never in, identified or not.
    page = Page(env, slug)
    code = identify(env, page, alice, room)
    refused = page.join("Alice", verification=code["id"])
    assert refused.status_code == 403, refused.text
    assert refused.json()["reason"] == "external"
    # A guest waits in the lobby, shown as not identified.
    waiting = Page(env, slug).join("Anonyme")
    assert waiting.status_code == 202, waiting.text
    notice = wait_event(alice, room, lambda e: e.get("sender") == env.bot and "Anonyme (non identifié·e) attend" in body(e), "the lobby notice")
    assert notice["content"].get("m.mentions") == {}


def lobby_notices(env, user, room: str) -> list[str]:
    return [body(e) for e in events(user, room) if e.get("sender") == env.bot and "Salle d’attente" in body(e)]


def test_trusted_lobby_decided_from_the_room(env, tmp_path):
    alice, room = room_with(env, "alice", ["bob"], "Salon confiance")
    bob = env.e2ee_user("bob")
    notice, slug = start_meeting(env, alice, room, "!visio Confiance", "Confiance")
    root = notice["event_id"]
    alice.send_text(room, "!visio accès confiance")
    bot_reply(env, alice, room, "Accès à « Confiance » : confiance")

    host_peer, _ = identified_join(env, slug, alice, room, tmp_path, "Alice")
    host_peer.wait_connected()

    zoe = Page(env, slug)
    r = zoe.join("Zoé")
    assert r.status_code == 202, r.text
    lobby = r.json()["lobby"]
    assert lobby["number"] == 1
    assert zoe.lobby(lobby["id"])["state"] == "waiting"
    lobby_notice = wait_event(
        alice, room, lambda e: e.get("sender") == env.bot and in_thread(e, root) and "1. Zoé (invité·e) attend" in body(e), "the lobby notice"
    )
    assert "!visio admettre 1" in body(lobby_notice)

    # A member below the power level reacts: nothing happens. The status answer, which
    # the bot handles after the reaction (one room, in order), says when it was seen.
    bob.react(room, lobby_notice["event_id"], "✅")
    bob.send_text(room, "!visio statut")
    bot_reply(env, bob, room, "« Confiance » en cours depuis")
    assert zoe.lobby(lobby["id"])["state"] == "waiting"

    # The moderator's ✅ lets her in, and her media reaches the others.
    alice.react(room, lobby_notice["event_id"], "✅")
    admitted = zoe.wait_lobby(lobby["id"], "admitted")
    assert claims(admitted["token"])["attributes"]["tchap.access"] == "admitted"
    zoe_peer = Peer(tmp_path, "zoe", admitted["url"], admitted["token"], publish=True)
    zoe_peer.wait_connected()
    host_peer.wait_media_from(admitted["identity"], video=3, audio_loud=3)
    wait_event(alice, room, lambda e: "admis·e par alice" in e.get("content", {}).get("m.new_content", {}).get("body", ""), "the notice records who admitted")

    # Her page loses its node and joins again: the same browser keeps its admission, with
    # no new wait in the lobby.
    again = zoe.http.post(api(env, slug, "/join"), json={"name": "Zoé", "rejoin": True}, timeout=10)
    assert again.status_code == 200, again.text
    assert claims(again.json()["token"])["attributes"]["tchap.access"] == "admitted"
    assert again.json()["identity"].rsplit("-", 1)[0] == admitted["identity"].rsplit("-", 1)[0], "the same browser"

    # Two guests at once, decided by number.
    marc, lea = Page(env, slug), Page(env, slug)
    m = marc.join("Marc").json()["lobby"]
    l_ = lea.join("Léa").json()["lobby"]
    assert (m["number"], l_["number"]) == (2, 3)
    alice.send_text(room, "!visio admettre 3")
    assert lea.wait_lobby(l_["id"], "admitted")["token"]
    assert marc.lobby(m["id"])["state"] == "waiting"
    alice.send_text(room, "!visio refuser 2")
    assert "token" not in marc.wait_lobby(m["id"], "refused")
    # A ❌ on the notice turns away whoever waits longest.
    noe = Page(env, slug)
    n = noe.join("Noé").json()["lobby"]
    alice.react(room, lobby_notice["event_id"], "❌")
    assert "token" not in noe.wait_lobby(n["id"], "refused")
    # A guest who gives up waiting leaves the notice.
    quentin = Page(env, slug)
    q = quentin.join("Quentin").json()["lobby"]
    assert quentin.http.delete(api(env, slug, f"/lobby/{q['id']}"), timeout=10).status_code == 204
    assert quentin.lobby(q["id"])["state"] == "left"
    wait_event(alice, room, lambda e: "Quentin (invité·e) — 🚪 est parti·e" in e.get("content", {}).get("m.new_content", {}).get("body", ""), "the notice says he left")
    # Another browser saying it rejoins has no admission to keep: it waits in the lobby.
    stranger = Page(env, slug)
    r = stranger.http.post(api(env, slug, "/join"), json={"name": "Zoé", "rejoin": True}, timeout=10)
    assert r.status_code == 202, r.text
    assert stranger.http.delete(api(env, slug, f"/lobby/{r.json()['lobby']['id']}"), timeout=10).status_code == 204
    host_peer.close()
    zoe_peer.close()


def test_a_stricter_level_and_a_ban_take_people_out(env, tmp_path):
    alice, room = room_with(env, "alice", ["bob"], "Salon retraits")
    bob = env.e2ee_user("bob")
    _, slug = start_meeting(env, alice, room, "!visio Retraits", "Retraits")
    alice.send_text(room, "!visio accès public")
    bot_reply(env, alice, room, "Accès à « Retraits » : publique")

    guest = Page(env, slug).join("Invité")
    assert guest.status_code == 200, guest.text
    guest_peer = Peer(tmp_path, "guest", guest.json()["url"], guest.json()["token"])
    guest_peer.wait_connected()
    bob_peer, bob_grant = identified_join(env, slug, bob, room, tmp_path, "Bob")
    bob_peer.wait_connected()

    alice.send_text(room, "!visio accès membres")
    code, final = guest_peer.wait_exit(30)
    assert code == 3, "disconnected by the server"
    refused = validate(env, guest.json()["token"])
    assert refused.status_code == 403 and "access_changed" in refused.text, refused.text
    assert bob_peer.alive(), "a member stays"

    banned_at = time.monotonic()
    alice.ban(room, bob.user_id)
    code, _ = bob_peer.wait_exit(5 + 10)
    assert code == 3
    print(f"banned member out of the meeting after {time.monotonic() - banned_at:.2f} s")
    assert "banned" in validate(env, bob_grant["token"]).text
    assert validate(env, bob_grant["token"], "/rtc/v1/validate").status_code == 403


def test_room_service_with_an_api_key(env, tmp_path):
    import asyncio

    from livekit import api
    from livekit.protocol import room as proto

    alice, room = room_with(env, "alice", [], "Salon service")
    _, slug = start_meeting(env, alice, room, "!visio Service", "Service")
    alice.send_text(room, "!visio accès public")
    bot_reply(env, alice, room, "Accès à « Service » : publique")
    speaker_grant = Page(env, slug).join("Orateur").json()
    listener_page = Page(env, slug)
    listener_grant = listener_page.join("Auditeur").json()
    speaker = Peer(tmp_path, "speaker", speaker_grant["url"], speaker_grant["token"], publish=True)
    listener = Peer(tmp_path, "listener", listener_grant["url"], listener_grant["token"])
    speaker.wait_connected()
    listener.wait_media_from(speaker_grant["identity"], audio_loud=3)
    meeting = speaker_grant["meeting"]["id"]
    key, secret = next(iter(env.service.config["sfu"]["keys"].items()))

    async def calls():
        async with api.LiveKitAPI(env.service.url, key, secret) as lk:
            rooms = await lk.room.list_rooms(proto.ListRoomsRequest(names=[meeting]))
            assert [r.name for r in rooms.rooms] == [meeting]
            people = await lk.room.list_participants(proto.ListParticipantsRequest(room=meeting))
            by_identity = {p.identity: p for p in people.participants}
            mic = next(t for t in by_identity[speaker_grant["identity"]].tracks if t.type == 0)
            muted = await lk.room.mute_published_track(
                proto.MuteRoomTrackRequest(room=meeting, identity=speaker_grant["identity"], track_sid=mic.sid, muted=True)
            )
            assert muted.track.muted
            updated = await lk.room.update_participant(
                proto.UpdateParticipantRequest(room=meeting, identity=listener_grant["identity"], name="Auditeur renommé")
            )
            assert updated.name == "Auditeur renommé"
        async with api.LiveKitAPI(env.service.url, key, "not-the-secret-" * 3) as bad:
            with pytest.raises(api.TwirpError) as refused:
                await bad.room.list_participants(proto.ListParticipantsRequest(room=meeting))
            assert refused.value.status == 401

    asyncio.run(calls())
    # The mute stops the speaker's audio at the listener.
    loud = listener.remote(speaker_grant["identity"])["audio_loud"]

    def stalled():
        before = listener.remote(speaker_grant["identity"])["audio_loud"]
        listener.wait(lambda st: st["remotes"][speaker_grant["identity"]]["audio_frames"] > 0, 5, "audio frames")
        return listener.remote(speaker_grant["identity"])["audio_loud"] == before and before >= loud

    wait_for(stalled, 20, "no more loud audio from the muted speaker", interval=1)

    async def remove():
        async with api.LiveKitAPI(env.service.url, key, secret) as lk:
            await lk.room.remove_participant(proto.RoomParticipantIdentity(room=meeting, identity=listener_grant["identity"]))

    asyncio.run(remove())
    code, _ = listener.wait_exit(15)
    assert code == 3
    again = Peer(tmp_path, "listener-again", listener_grant["url"], listener_grant["token"], once=True, wait_connected=False)
    code, st = again.wait_exit(30)
    assert code == 2, f"a removed participant's token opens nothing: {st.get('error')}"
    # Nor does a new join from the same browser: removed means out of this meeting.
    back = listener_page.join("Auditeur")
    assert back.status_code == 403 and back.json()["reason"] == "removed", back.text
    speaker.close()


def test_a_participant_connected_past_its_token_survives_a_full_reconnect(env, tmp_path):
    alice, room = room_with(env, "alice", [], "Salon longue réunion")
    _, slug = start_meeting(env, alice, room, "!visio Longue", "Longue")
    alice.send_text(room, "!visio accès public")
    bot_reply(env, alice, room, "Accès à « Longue » : publique")
    grant = Page(env, slug).join("Patiente").json()
    peer = Peer(tmp_path, "patiente", grant["url"], grant["token"], publish=True)
    peer.wait_connected()
    expiry = claims(grant["token"])["exp"] + 11  # past the server's 10 s leeway
    wait_for(lambda: time.time() > expiry, TOKEN_TTL_S + 30, "the join token to expire", interval=0.5)
    assert validate(env, grant["token"]).status_code == 401, "the join token itself has expired"
    # A full reconnect (new signalling and media) uses the token the server refreshed.
    peer.simulate("full_reconnect")
    peer.wait(
        lambda st: any(e.get("event") == "reconnected" for e in st.get("room_events", [])), 40, "the full reconnect"
    )
    assert peer.alive()
    refreshed = [l for l in requests.get(env.service.metrics_url, timeout=10).text.splitlines() if l.startswith("tchap_visio_tokens_refreshed_total")]
    assert refreshed and float(refreshed[0].split()[-1]) >= 1, refreshed
    peer.close()


def test_codes_are_throttled_per_user_and_per_address(env, tmp_path):
    alice, room = room_with(env, "alice", ["mallory"], "Salon limites")
    mallory = env.e2ee_user("mallory")
    _, slug = start_meeting(env, alice, room, "!visio Limites", "Limites")
    for i in range(10):
        mallory.send_text(room, f"!visio entrer ZZZZ{i:04d}")
    wait_for(
        lambda: (mallory.sync(500), len([e for e in events(mallory, room) if e.get("sender") == env.bot and "inconnu ou a expiré" in body(e)]))[1] >= 10,
        NOTICE_S,
        "ten refusals",
        interval=0,
    )
    page = Page(env, slug)
    good = page.code()
    mallory.send_text(room, good["command"])
    bot_reply(env, mallory, room, "Trop de codes erronés")
    assert page.verification(good["id"])["state"] == "pending", "the 11th code was not even read"

    # 10 code requests a minute from one address; the 11th is refused with Retry-After.
    answers = [requests.post(api(env, slug, "/verification"), timeout=10) for _ in range(11)]
    statuses = [a.status_code for a in answers]
    assert 429 in statuses, statuses
    limited = answers[statuses.index(429)]
    assert limited.json()["errcode"] == "M_LIMIT_EXCEEDED"
    assert int(limited.headers["Retry-After"]) >= 1
