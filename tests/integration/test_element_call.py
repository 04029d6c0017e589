"""Element Call's LiveKit focus: tchap-visio answers what lk-jwt-service answers
(`/get_token`, the legacy `/sfu/get`, `/delegate_delayed_leave`) and MSC4195 tokens asked
of the homeserver (proxied by Synapse's MSC4512), for members of the Matrix room only
(checked with MSC4502, the bot need not be in the room), and hands its own SFU's URL.

A real Synapse with MatrixRTC's experimental features, matrix-nio clients as the members,
LiveKit's Python SDK as their call clients; delayed events (MSC4140) as Element Call
sends them: the call membership is emptied when a participant vanishes from the SFU, and
not while they stay.
"""

from __future__ import annotations

import re
import time

import pytest
import requests

from harness.util import require_livekit_sdk

require_livekit_sdk()

import jwt  # PyJWT, a dependency of livekit-api

from harness import Env, wait_for
from harness import element_call as ec
from harness.lkpeer import Peer
from harness.meetings import NOTICE_S, body, in_thread, wait_event
from harness.service import Service
from harness.synapse import Synapse

# Grace period of a call once everyone left, before the bot posts its summary.
GRACE_S = 2
# The delayed leave event's timeout (ms) asked by the tests that keep it alive.
DELAY_MS = 6000
MSC4195 = "/_matrix/client/v1/rtc/livekit/get_token"
MSC4195_UNSTABLE = "/_matrix/client/unstable/io.element.msc4195/rtc/livekit/get_token"
IS_JOINED_SCOPE = "urn:matrix:client:io.element.msc4502:rooms:is_joined"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(
        tmp_path_factory.mktemp("element-call"),
        # Tens of token requests come from one address here; the per-address limit is
        # covered by the Rust tests (focus_token_requests_are_limited_per_address...).
        overrides={
            "element_call": {"enabled": True, "membership_check_secs": 2},
            "meetings": {"grace_period_secs": GRACE_S},
            "rate_limits": {"enabled": False},
        },
        synapse_config=ec.synapse_config,
    )
    yield e
    e.close()


@pytest.fixture
def peers():
    """Every Peer a test appends here is closed at its end, passed or not."""
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


def focus(env, path: str) -> str:
    return f"{env.service.url}{path}"


def call_room(env, owner: str = "alice", members: tuple[str, ...] = (), with_bot: bool = False) -> str:
    """`owner` creates a room where every member may send call memberships (as rooms
    made by Element Call are), `members` join; the bot is invited only `with_bot`."""
    user = env.user(owner)
    room = user.create_room(name="Appel Element")
    levels = user._run(user.client.room_get_state_event(room, "m.room.power_levels", ""))
    content = dict(levels.content)
    content.setdefault("events", {})[ec.CALL_MEMBER] = 0
    ec.put_state(env.synapse.url, user, room, "m.room.power_levels", "", content)
    for name in members:
        member = env.user(name)
        user.invite(room, member.user_id)
        member.join(room)
    if with_bot:
        user.invite(room, env.bot)
        user.wait_membership(room, env.bot, "join")
    return room


def get_token(env, user, room: str, member_id: str, **extra) -> requests.Response:
    return ec.post(focus(env, "/get_token"), ec.get_token_body(env.synapse.url, user, room, member_id=member_id, **extra))


def grant(env, user, room: str, member_id: str, **extra) -> dict:
    """A /get_token that must succeed: {url, jwt}."""
    r = get_token(env, user, room, member_id, **extra)
    assert r.status_code == 200, f"/get_token for {user.user_id}: {r.status_code} {r.text}"
    return r.json()


def msc4195(env, user, path: str = MSC4195, **body) -> requests.Response:
    """An MSC4195 token request at the homeserver, with the user's own access token."""
    return ec.post(f"{env.synapse.url}{path}", body, headers=ec.auth(user))


def refused(r: requests.Response, status: int, errcode: str | None = None) -> dict:
    assert r.status_code == status, f"expected {status} {errcode or ''}, got {r.status_code}: {r.text}"
    answer = r.json()
    if errcode:
        assert answer.get("errcode") == errcode, answer
    return answer


def verified_claims(env, token: str) -> dict:
    """The claims of a token the SFU signed (HS256 with its key's secret)."""
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "HS256", header
    c = jwt.decode(token, env.service.sfu_secret, algorithms=["HS256"], options={"verify_aud": False})
    assert c.get("iss") == env.service.sfu_key, f"issued under the SFU's API key: {c}"
    return c


# -- set-up -------------------------------------------------------------------------------


def test_aliases_match_lk_jwt_service_vectors():
    assert ec.alias("!roomid:example.com", "slot1234") == "O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc"
    assert ec.alias("@alice:example.com", "DEVICE123", "memberABC") == "J+T45tGruxc+HrUOqJJlyQSV33m728Cme4+vt8/SWrU"


def test_registration_asks_for_the_proxy_and_the_membership_scope(env, tmp_path):
    reg = env.service.generated_registration
    assert reg.get("io.element.msc4512.proxy_prefix") == "rtc/livekit", reg
    assert reg.get("io.element.msc4512.proxy_url") == env.service.config["appservice"]["address"], reg
    assert reg.get("io.element.msc4502.scopes") == [IS_JOINED_SCOPE], reg
    # Without element_call, the homeserver is asked for none of it (generate-registration only).
    plain = Service(tmp_path / "plain", Synapse(tmp_path / "synapse")).generated_registration
    leftovers = [k for k in plain if k.startswith(("io.element.msc4512", "io.element.msc4502"))]
    assert not leftovers, f"element_call is off by default, yet the registration has {leftovers}"


def test_health_and_cors_preflight(env):
    assert requests.get(focus(env, "/healthz"), timeout=10).status_code == 200
    for path in ("/get_token", "/sfu/get", "/delegate_delayed_leave"):
        r = requests.options(
            focus(env, path),
            headers={"Origin": "https://call.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"},
            timeout=10,
        )
        assert r.status_code == 200, f"OPTIONS {path}: {r.status_code} {r.text}"
        assert r.headers.get("Access-Control-Allow-Origin") == "*", f"OPTIONS {path}: {dict(r.headers)}"


def test_the_homeserver_advertises_the_focus(env):
    alice = env.user("alice")
    r = requests.get(f"{env.synapse.url}/_matrix/client/unstable/org.matrix.msc4143/rtc/transports", headers=ec.auth(alice), timeout=10)
    assert r.status_code == 200, r.text
    assert {"type": "livekit", "livekit_service_url": env.service.url} in r.json()["rtc_transports"], r.json()


# -- tokens -------------------------------------------------------------------------------


def test_get_token_for_a_member_without_the_bot_in_the_room(env):
    room = call_room(env, "alice")
    alice = env.user("alice")
    assert (alice.member(room, env.bot) or {}).get("membership") != "join", "the bot is not in this room"
    r = get_token(env, alice, room, "alice-m1")
    assert r.status_code == 200, r.text
    assert r.headers.get("Access-Control-Allow-Origin") == "*", dict(r.headers)
    answer = r.json()
    assert answer["url"] == env.service.livekit_url, "our own SFU"
    c = verified_claims(env, answer["jwt"])
    assert c["sub"] == ec.alias(alice.user_id, alice.device_id, "alice-m1")
    # Element Call, on another origin, reads why a WebSocket was refused at validate.
    for path in ("/rtc/validate", "/rtc/v1/validate"):
        v = requests.get(
            f"{env.service.url}{path}", params={"access_token": answer["jwt"]}, headers={"Origin": "https://call.example"}, timeout=10
        )
        assert v.headers.get("Access-Control-Allow-Origin") == "*", f"{path}: {v.status_code} {dict(v.headers)}"
    video = c["video"]
    assert video["room"] == ec.alias(room, ec.ROOM_SLOT)
    assert video.get("roomJoin") is True
    assert video.get("canPublish") is True, f"localhost users publish by default: {video}"
    assert video.get("canSubscribe", True) is True, video
    assert "nbf" in c and c["exp"] - c["nbf"] == 600, f"token_ttl_secs defaults to 600: {c}"
    assert c.get("attributes", {}).get("tchap.matrix_id") == alice.user_id, c
    # Another slot of the same room is another LiveKit room.
    other = grant(env, alice, room, "alice-m1", slot_id="m.call#other")
    assert ec.claims(other["jwt"])["video"]["room"] == ec.alias(room, "m.call#other")


def test_legacy_sfu_get(env):
    room = call_room(env, "alice")
    alice = env.user("alice")
    body_ = {"room": room, "openid_token": ec.openid_token(env.synapse.url, alice), "device_id": alice.device_id}
    r = ec.post(focus(env, "/sfu/get"), body_)
    assert r.status_code == 200, r.text
    assert r.headers.get("Access-Control-Allow-Origin") == "*", dict(r.headers)
    assert r.json()["url"] == env.service.livekit_url
    c = verified_claims(env, r.json()["jwt"])
    assert c["sub"] == f"{alice.user_id}:{alice.device_id}"
    assert c["video"]["room"] == ec.alias(room, ec.ROOM_SLOT)
    assert c["video"].get("roomJoin") is True
    carol = env.user("carol")
    outsider = {"room": room, "openid_token": ec.openid_token(env.synapse.url, carol), "device_id": carol.device_id}
    refused(ec.post(focus(env, "/sfu/get"), outsider), 403, "M_FORBIDDEN")
    refused(ec.post(focus(env, "/sfu/get"), {"room": room}), 400, "M_BAD_JSON")


def test_refusals(env):
    room = call_room(env, "alice", ("bob",))
    alice, bob, carol = env.user("alice"), env.user("bob"), env.user("carol")
    url = focus(env, "/get_token")

    outsider = refused(get_token(env, carol, room, "carol-m"), 403, "M_FORBIDDEN")
    assert outsider.get("error"), outsider
    r = get_token(env, carol, room, "carol-m")
    assert r.headers.get("Access-Control-Allow-Origin") == "*", f"a refusal is readable by the page too: {dict(r.headers)}"

    forged = ec.get_token_body(env.synapse.url, alice, room)
    forged["openid_token"]["access_token"] = "not-a-real-token"
    refused(ec.post(url, forged), 401, "M_UNAUTHORIZED")
    garbage = ec.get_token_body(env.synapse.url, alice, room)
    garbage["openid_token"]["access_token"] = "../../../../?&#%00"
    refused(ec.post(url, garbage), 401, "M_UNAUTHORIZED")

    # Alice's genuine token, claiming to be Bob (a member): the claim must match the token.
    impostor = ec.get_token_body(env.synapse.url, alice, room)
    impostor["member"]["claimed_user_id"] = bob.user_id
    refused(ec.post(url, impostor), 401, "M_UNAUTHORIZED")

    refused(get_token(env, alice, "!nosuchroom:localhost", "alice-m"), 403)
    # Invited is not joined.
    dave = env.user("dave")
    alice.invite(room, dave.user_id)
    refused(get_token(env, dave, room, "dave-m"), 403, "M_FORBIDDEN")
    # A member who left is out, though the bot is not in the room to see him go.
    assert get_token(env, bob, room, "bob-m").status_code == 200
    bob.leave(room)
    refused(get_token(env, bob, room, "bob-m"), 403, "M_FORBIDDEN")

    complete = ec.get_token_body(env.synapse.url, alice, room)
    for missing in ("room_id", "slot_id", "openid_token", "member"):
        partial = {k: v for k, v in complete.items() if k != missing}
        refused(ec.post(url, partial), 400, "M_BAD_JSON")
    no_member_id = dict(complete, member={k: v for k, v in complete["member"].items() if k != "id"})
    refused(ec.post(url, no_member_id), 400, "M_BAD_JSON")
    refused(ec.post(url, b'{"room_id": "!x:localhost", '), 400, "M_NOT_JSON")
    refused(ec.post(url, b"not json at all"), 400)

    # Delegating one's leave: the same checks, and the delay is required.
    delegate = focus(env, "/delegate_delayed_leave")
    refused(ec.post(delegate, complete), 400, "M_BAD_JSON")
    carol_body = ec.get_token_body(env.synapse.url, carol, room, delay_id="syd_x", delay_timeout=DELAY_MS)
    refused(ec.post(delegate, carol_body), 403, "M_FORBIDDEN")


def test_msc4195_tokens_through_the_homeserver(env):
    room = call_room(env, "alice", ("bob",))
    alice, carol = env.user("alice"), env.user("carol")
    ask = {"url": env.service.livekit_url, "room_id": room, "slot_id": ec.ROOM_SLOT, "member_id": "alice-m2"}
    for path in (MSC4195, MSC4195_UNSTABLE):
        r = msc4195(env, alice, path, **ask)
        assert r.status_code == 200, f"POST {path}: {r.status_code} {r.text}"
        c = verified_claims(env, r.json()["jwt"])
        assert c["sub"] == ec.alias(alice.user_id, "alice-m2")
        assert c["video"]["room"] == ec.alias(room, ec.ROOM_SLOT)
        assert c["video"].get("roomJoin") is True and c["video"].get("canPublish") is True, c
        assert c.get("attributes", {}).get("tchap.matrix_id") == alice.user_id, c
    same_server = msc4195(env, alice, **ask, server_name="localhost")
    assert same_server.status_code == 200, f"server_name of our own homeserver: {same_server.status_code} {same_server.text}"

    refused(msc4195(env, alice, **dict(ask, url="wss://sfu.elsewhere.example")), 400, "M_INVALID_PARAM")
    refused(msc4195(env, alice, **ask, server_name="other.example"), 502, "M_UNKNOWN")
    refused(msc4195(env, carol, **dict(ask, member_id="carol-m")), 403, "M_FORBIDDEN")
    missing = {k: v for k, v in ask.items() if k != "member_id"}
    refused(msc4195(env, alice, **missing), 400)

    # Straight to the service, not through the homeserver: a forged identity header is
    # worth nothing without the hs_token.
    forged_headers = {"X-Matrix-User-Identifier": alice.user_id}
    refused(ec.post(focus(env, MSC4195), ask, headers=forged_headers), 401)
    refused(ec.post(focus(env, MSC4195), ask, headers={**forged_headers, "Authorization": f"Bearer {env.service.as_token}"}), 401)
    refused(ec.post(focus(env, MSC4195), ask, headers={**forged_headers, "Authorization": "Bearer nope"}), 401)


def test_other_servers_subscribe_only(tmp_path):
    """`publish_servers` names the servers whose users publish; the others only watch.
    Here it names another server, so the users of this one watch, and tokens live
    `token_ttl_secs`."""
    e = Env(
        tmp_path / "subscribe-only",
        overrides={"element_call": {"enabled": True, "publish_servers": ["other.example"], "token_ttl_secs": 300}},
        synapse_config=ec.synapse_config,
    )
    try:
        room = call_room(e, "dora")
        dora = e.user("dora")
        answer = grant(e, dora, room, "dora-m")
        c = verified_claims(e, answer["jwt"])
        assert c["video"].get("canPublish") is False, f"not a publishing server: {c['video']}"
        assert c["video"].get("canSubscribe") is True, c["video"]
        assert c["video"].get("roomJoin") is True, c["video"]
        assert c["exp"] - c["nbf"] == 300, c
        r = msc4195(e, dora, url=e.service.livekit_url, room_id=room, slot_id=ec.ROOM_SLOT, member_id="dora-m2")
        assert r.status_code == 200, r.text
        assert ec.claims(r.json()["jwt"])["video"].get("canPublish") is False
        # The SFU lets the watcher in.
        once = Peer(tmp_path, "dora", answer["url"], answer["jwt"], once=True, wait_connected=False)
        code, st = once.wait_exit(40)
        assert code == 0, f"a subscribe-only token joins: {st.get('error')}"
        assert st["identity"] == c["sub"]
    finally:
        e.close()


# -- calls --------------------------------------------------------------------------------


def test_two_members_see_and_hear_each_other(env, tmp_path, peers):
    room = call_room(env, "alice", ("bob",))
    alice, bob = env.user("alice"), env.user("bob")
    a = grant(env, alice, room, "alice-m3")
    r = msc4195(env, bob, url=env.service.livekit_url, room_id=room, slot_id=ec.ROOM_SLOT, member_id="bob-m3")
    assert r.status_code == 200, r.text
    b_jwt = r.json()["jwt"]
    a_id, b_id = ec.alias(alice.user_id, alice.device_id, "alice-m3"), ec.alias(bob.user_id, "bob-m3")
    peers.append(Peer(tmp_path, "alice", a["url"], a["jwt"], publish=True, wait_connected=False))
    peers.append(Peer(tmp_path, "bob", env.service.livekit_url, b_jwt, publish=True, wait_connected=False))
    pa, pb = peers
    for p, identity in ((pa, a_id), (pb, b_id)):
        st = p.wait_connected(40)
        assert st["identity"] == identity
        assert st["room"] == ec.alias(room, ec.ROOM_SLOT)
    pa.wait_media_from(b_id, video=3, audio_loud=3, timeout=45)
    pb.wait_media_from(a_id, video=3, audio_loud=3, timeout=45)


def test_delayed_leave_kept_while_connected_and_sent_when_the_peer_vanishes(env, tmp_path, peers):
    """Alice hands her delayed leave with /get_token, Bob with /delegate_delayed_leave."""
    room = call_room(env, "alice", ("bob",))
    alice, bob = env.user("alice"), env.user("bob")
    hs = env.synapse.url
    kept: dict[str, dict] = {}
    for user in (alice, bob):
        kept[user.user_id] = ec.membership_content(user, env.service.url)
        ec.put_state(hs, user, room, ec.CALL_MEMBER, ec.call_state_key(user), kept[user.user_id])
    scheduled: dict[str, float] = {}
    for user, member_id, how in ((alice, "alice-m4", "get_token"), (bob, "bob-m4", "delegate")):
        delay_id = ec.put_state(hs, user, room, ec.CALL_MEMBER, ec.call_state_key(user), {}, delay_ms=DELAY_MS)["delay_id"]
        scheduled[user.user_id] = time.monotonic()
        if how == "get_token":
            answer = grant(env, user, room, member_id, delay_id=delay_id, delay_timeout=DELAY_MS, delay_cs_api_url=hs)
        else:
            body_ = ec.get_token_body(hs, user, room, member_id=member_id, delay_id=delay_id, delay_timeout=DELAY_MS)
            r = ec.post(focus(env, "/delegate_delayed_leave"), body_)
            assert r.status_code == 200 and r.json() == {}, f"/delegate_delayed_leave: {r.status_code} {r.text}"
            answer = grant(env, user, room, member_id)
        peers.append(Peer(tmp_path, user.user_id[1:].split(":")[0], answer["url"], answer["jwt"], wait_connected=False))
    # The focus restarts the delay once the participant is in the SFU; a client slower
    # than the delay to connect loses its membership whatever the focus does.
    lag = {}
    for user, p in zip((alice, bob), peers):
        lag[user.user_id] = p.wait_connected(40)["t_connected"] - scheduled[user.user_id]
    print("connected after scheduling the delayed leave: " + ", ".join(f"{u} {t:.2f} s" for u, t in lag.items()))

    # Connected for 2.5 delays: the memberships stay as their owners set them.
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < 2.5 * DELAY_MS / 1000:
        for user in (alice, bob):
            now = ec.get_state(hs, user, room, ec.CALL_MEMBER, ec.call_state_key(user))
            assert now == kept[user.user_id], (
                f"{user.user_id}'s membership changed {elapsed:.1f} s into the call: {now} "
                f"(connected {lag[user.user_id]:.2f} s after scheduling a {DELAY_MS} ms delay)"
            )
        assert all(p.alive() for p in peers), [p.logs() for p in peers if not p.alive()]
        time.sleep(0.5)  # the polling period of a check that lasts the whole wait

    # Gone without a word: the delayed leave goes out.
    killed = time.monotonic()
    for p in peers:
        p.kill()
    for user, how in ((alice, "get_token"), (bob, "delegate_delayed_leave")):
        wait_for(
            lambda: ec.get_state(hs, user, room, ec.CALL_MEMBER, ec.call_state_key(user)) == {},
            max(0.5, 15 - (time.monotonic() - killed)),
            f"{user.user_id}'s membership to be emptied by the delayed leave ({how})",
            interval=0.1,
        )
        print(f"delayed leave ({how}) sent {time.monotonic() - killed:.2f} s after the peer was killed")


@pytest.mark.parametrize("with_bot", [True, False], ids=["bot-in-room", "bot-not-in-room"])
def test_leaving_the_room_ends_ones_call(env, tmp_path, peers, with_bot):
    """In the bot's rooms the departure acts at once; elsewhere the periodic MSC4502
    check (membership_check_secs, 2 s here) finds it."""
    room = call_room(env, "alice", ("bob",), with_bot=with_bot)
    alice, bob = env.user("alice"), env.user("bob")
    a, b = grant(env, alice, room, "alice-m5"), grant(env, bob, room, "bob-m5")
    b_id = ec.alias(bob.user_id, bob.device_id, "bob-m5")
    peers.append(Peer(tmp_path, "alice", a["url"], a["jwt"], wait_connected=False))
    peers.append(Peer(tmp_path, "bob", b["url"], b["jwt"], wait_connected=False))
    pa, pb = peers
    pa.wait_connected(40)
    pb.wait_connected(40)
    pa.wait(lambda st: b_id in st.get("remotes", {}), 20, "bob in alice's call")
    left = time.monotonic()
    bob.leave(room)
    code, _ = pb.wait_exit(15)
    print(f"bob out of the call {time.monotonic() - left:.2f} s after leaving the room")
    assert code == 3, "disconnected by the server"
    assert time.monotonic() - left < 12, "out within about 10 s"
    pa.wait(lambda st: any(d["identity"] == b_id for d in st.get("participant_disconnected", [])), 10, "bob gone for alice")
    assert pa.alive(), "alice, still a member, stays"
    refused(get_token(env, bob, room, "bob-m5"), 403, "M_FORBIDDEN")


def test_the_bot_posts_a_call_notice_and_its_summary_in_the_thread(env, tmp_path, peers):
    room = call_room(env, "alice", with_bot=True)
    alice = env.user("alice")
    alice.sync(0)
    a = grant(env, alice, room, "alice-m6")
    peers.append(Peer(tmp_path, "alice", a["url"], a["jwt"], publish=True))
    notice = wait_event(
        alice, room, lambda e: e.get("sender") == env.bot and "appel en cours" in body(e).lower(), "the bot's call notice", NOTICE_S
    )
    root = notice["event_id"]
    before = {e["event_id"] for e in alice.timelines.get(room, [])}
    peers[0].close()
    left = time.monotonic()
    # Once the grace period is over: a new message in the notice's thread that sums the
    # call up and names its participant.
    summary = wait_event(
        alice,
        room,
        lambda e: e.get("sender") == env.bot
        and e["event_id"] not in before
        and in_thread(e, root)
        and re.search(r"compte rendu|résumé|termin", body(e), re.IGNORECASE)
        and "alice" in body(e).lower(),
        "the call's summary in the notice's thread",
        GRACE_S + NOTICE_S,
    )
    print(f"summary {time.monotonic() - left:.2f} s after the last one left: {body(summary)!r}")
