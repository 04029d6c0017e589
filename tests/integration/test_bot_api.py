"""The bot API and webhooks against the real service and a real
Synapse: tokens made with the command line, 401s, meetings by room and by id, a hostile
Markdown summary arriving sanitised in the meeting's thread (read back by a matrix-nio
client), and signed webhook deliveries, retried with the same delivery id and accepted
once per receiver. Tokens' scopes: a token for room A gets 403 on
room B, a read-only token cannot post, authors are shown as bots, one ghost per token.
"""

from __future__ import annotations

import re
import sqlite3
import urllib.parse

import pytest
import requests

from harness import Env, wait_for
from harness.webhooks import WebhookReceiver

# Generous deadlines for a loaded 2-core machine; they bound waits, they are not speed claims.
DEADLINE_S = 30
LINK = re.compile(r"https?://\S+/m/([A-Za-z0-9]+)")
HOSTILE_MARKDOWN = """# Compte-rendu du comité

<script>alert("script")</script>

<iframe src="https://evil.example/"></iframe>

<p onclick="alert('click')">Décision : <b>validé</b></p>

- [Le document](https://example.org/doc)
- [Piège](javascript:alert('href'))
"""


@pytest.fixture(scope="module")
def receivers():
    """Two receivers: `flaky` answers 500 to the first attempt of every delivery,
    `steady` never fails."""
    with WebhookReceiver(fail_first=1) as flaky, WebhookReceiver() as steady:
        yield flaky, steady


@pytest.fixture(scope="module")
def env(tmp_path_factory, receivers):
    flaky, steady = receivers
    e = Env(tmp_path_factory.mktemp("botapi"), overrides={"webhooks": [flaky.config(), steady.config()]})
    yield e
    e.close()


def cli(env, *args: str) -> str:
    svc = env.service
    r = svc.cli(*args, "-c", str(svc.config_path))
    assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}"
    return r.stdout


def create_token(env, name: str) -> str:
    out = cli(env, "api-token", "create", "--name", name, "--all-rooms")
    token = out.strip().splitlines()[-1]
    assert token.startswith("tvb_") and len(token) == 68, out
    return token


@pytest.fixture(scope="module")
def token(env):
    return create_token(env, "integration-bot")


def api(env, method: str, path: str, token: str | None, body=None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.request(method, f"{env.service.url}{path}", json=body, headers=headers, timeout=30)


def room_path(room_id: str) -> str:
    return f"/api/v1/rooms/{urllib.parse.quote(room_id, safe='')}/meetings"


def db(env) -> sqlite3.Connection:
    return sqlite3.connect(env.service.dir / "tchap-visio.db", timeout=10)


def test_requests_without_a_valid_token_are_refused(env, token):
    cli(env, "api-token", "create", "--name", "retired", "--all-rooms")
    retired = create_token(env, "retired-2")
    cli(env, "api-token", "revoke", "--name", "retired-2")
    routes = [
        ("GET", room_path("!nowhere:localhost"), None),
        ("GET", "/api/v1/meetings/aaaaaaaaaaaa", None),
        ("POST", "/api/v1/meetings/aaaaaaaaaaaa/summary", {"markdown": "x"}),
    ]
    for method, path, body in routes:
        cases = [(None, "M_MISSING_TOKEN"), ("wrong", "M_UNKNOWN_TOKEN"), (retired, "M_UNKNOWN_TOKEN")]
        for presented, errcode in cases:
            if presented is None and method == "GET" and path.startswith("/api/v1/meetings/"):
                continue  # without a token this path is the meeting page's (slug) lookup
            r = api(env, method, path, presented, body)
            assert (r.status_code, r.json().get("errcode")) == (401, errcode), f"{method} {path} {presented!r}: {r.text}"
    # The service logs the token's name at most, never the token.
    assert token not in env.service.logs() and retired not in env.service.logs()


def test_token_lifecycle_through_the_command_line(env):
    tok = create_token(env, "calendar")
    again = env.service.cli("api-token", "create", "--name", "calendar", "--all-rooms", "-c", str(env.service.config_path))
    assert again.returncode != 0 and "already exists" in again.stdout, again.stdout
    assert api(env, "GET", room_path("!r:localhost"), tok).status_code == 200
    listed = cli(env, "api-token", "list")
    line = next(l for l in listed.splitlines() if l.startswith("calendar\t"))
    assert "active" in line and "last used -" not in line, listed
    assert tok not in listed
    # Only the hash is in the database.
    with db(env) as conn:
        assert conn.execute("SELECT COUNT(*) FROM api_tokens WHERE token_sha256 = ?", (tok,)).fetchone()[0] == 0
    cli(env, "api-token", "revoke", "--name", "calendar")
    r = api(env, "GET", room_path("!r:localhost"), tok)
    assert (r.status_code, r.json()["errcode"]) == (401, "M_UNKNOWN_TOKEN"), r.text
    assert "revoked" in next(l for l in cli(env, "api-token", "list").splitlines() if l.startswith("calendar\t"))


def test_meetings_listed_by_room_and_read_by_id(env, token):
    room = "!cli-room:localhost"
    out = cli(env, "meeting", "create", "--title", "Revue de projet", "--room", room)
    meeting_id = re.search(r"^id: (\S+)$", out, re.M).group(1)
    slug = LINK.search(out).group(1)

    r = api(env, "GET", room_path(room), token)
    assert r.status_code == 200, r.text
    meetings = r.json()["meetings"]
    assert [m["id"] for m in meetings] == [meeting_id]
    assert meetings[0]["title"] == "Revue de projet" and meetings[0]["state"] == "scheduled"
    assert slug not in r.text

    r = api(env, "GET", f"/api/v1/meetings/{meeting_id}", token)
    assert r.status_code == 200, r.text
    detail = r.json()
    assert (detail["id"], detail["room_id"], detail["attendance"], detail["chat"]) == (meeting_id, room, [], [])
    assert slug not in r.text
    # A token means the bot API: the slug is no id there.
    assert api(env, "GET", f"/api/v1/meetings/{slug}", token).status_code == 404
    # Without one, the meeting page still finds its meeting by slug, and not by id.
    page = requests.get(f"{env.service.url}/api/v1/meetings/{slug}", timeout=10)
    assert page.status_code == 200 and page.json()["title"] == "Revue de projet", page.text
    assert requests.get(f"{env.service.url}/api/v1/meetings/{meeting_id}", timeout=10).status_code == 404

    bad = api(env, "GET", "/api/v1/rooms/not-a-room/meetings", token)
    assert (bad.status_code, bad.json()["errcode"]) == (400, "M_INVALID_PARAM")
    big = api(env, "POST", f"/api/v1/meetings/{meeting_id}/summary", token, {"markdown": "x" * 70_000})
    assert (big.status_code, big.json()["errcode"]) == (413, "M_TOO_LARGE")


def test_openapi_document_is_served(env):
    r = requests.get(f"{env.service.url}/api/v1/openapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    paths = r.json()["paths"]
    assert "/api/v1/meetings/{key}/summary" in paths and "/api/v1/rooms/{room_id}/meetings" in paths


def test_summary_arrives_sanitised_in_the_thread(env, token):
    alice, room = env.room_with_bot("alice", name="Comité bot API")
    alice.send_text(room, "!visio Comité")
    # The link notice is the thread root; the API tells its event id once it is sent.
    meeting = wait_for(
        lambda: next(
            (m for m in api(env, "GET", room_path(room), token).json()["meetings"] if m["thread_root_event_id"]), None
        ),
        DEADLINE_S,
        "the meeting and its thread root",
    )
    root = meeting["thread_root_event_id"]

    r = api(env, "POST", f"/api/v1/meetings/{meeting['id']}/summary", token, {"markdown": HOSTILE_MARKDOWN})
    assert (r.status_code, r.json()) == (202, {"status": "queued"}), r.text

    def summary_event():
        alice.sync(500)
        return next(
            (
                e
                for e in alice.timelines.get(room, [])
                if e.get("type") == "m.room.message"
                and e["content"].get("format") == "org.matrix.custom.html"
                and "Compte-rendu du comité" in e["content"].get("formatted_body", "")
            ),
            None,
        )

    event = wait_for(summary_event, DEADLINE_S, "the summary in the room", interval=0)
    content = event["content"]
    html, plain = content["formatted_body"], content["body"]
    for bad in ("<script", "<iframe", "onclick", "javascript:", "alert"):
        assert bad not in html.lower(), f"{bad!r} in {html}"
        assert bad not in plain.lower(), f"{bad!r} in {plain}"
    assert "<h1>Compte-rendu du comité</h1>" in html, html
    assert "<b>validé</b>" in html and '<a href="https://example.org/doc" rel="noopener">' in html, html
    assert content["msgtype"] == "m.notice"
    relation = content.get("m.relates_to") or {}
    assert (relation.get("rel_type"), relation.get("event_id")) == ("m.thread", root), content
    # Posted by a ghost named after the default author, not by the bot.
    assert event["sender"] != env.bot and event["sender"].startswith("@visio_"), event["sender"]
    member = alice.member(room, event["sender"])
    assert member and member.get("displayname") == "Compte-rendu (bot)", member


def started_meeting(env, token: str, user, room: str, title: str) -> dict:
    """Starts a meeting with `!visio` in `room`; returns it once its link notice is sent."""
    user.send_text(room, f"!visio {title}")
    return wait_for(
        lambda: next(
            (m for m in api(env, "GET", room_path(room), token).json()["meetings"] if m["thread_root_event_id"]), None
        ),
        DEADLINE_S,
        f"the meeting in {room} and its thread root",
    )


def test_tokens_reach_their_scope_only_and_post_as_bots(env, token):
    alice, room_a = env.room_with_bot("alice", name="Salon A")
    _, room_b = env.room_with_bot("alice", name="Salon B")
    meeting_a = started_meeting(env, token, alice, room_a, "Réunion A")
    meeting_b = started_meeting(env, token, alice, room_b, "Réunion B")

    # A token needs a scope.
    refused = env.service.cli("api-token", "create", "--name", "unscoped", "-c", str(env.service.config_path))
    assert refused.returncode != 0 and "--room" in refused.stdout and "--all-rooms" in refused.stdout, refused.stdout
    scoped = create_token_with(env, "room-a", "--room", room_a)
    reader = create_token_with(env, "room-a-reader", "--room", room_a, "--read-only")
    listed = cli(env, "api-token", "list")
    assert f"rooms {room_a}" in next(l for l in listed.splitlines() if l.startswith("room-a\t")), listed
    assert "read-only" in next(l for l in listed.splitlines() if l.startswith("room-a-reader\t")), listed

    def forbidden(r):
        assert (r.status_code, r.json().get("errcode")) == (403, "M_FORBIDDEN"), r.text
        return True

    for tok in (scoped, reader):
        # Room B is out of reach: listing, reading, posting.
        forbidden(api(env, "GET", room_path(room_b), tok))
        forbidden(api(env, "GET", f"/api/v1/meetings/{meeting_b['id']}", tok))
        forbidden(api(env, "POST", f"/api/v1/meetings/{meeting_b['id']}/summary", tok, {"markdown": "Fuite"}))
        # Room A is readable.
        r = api(env, "GET", room_path(room_a), tok)
        assert r.status_code == 200 and [m["id"] for m in r.json()["meetings"]] == [meeting_a["id"]], r.text
        assert api(env, "GET", f"/api/v1/meetings/{meeting_a['id']}", tok).status_code == 200
    # The read-only token cannot post, even in its room.
    forbidden(api(env, "POST", f"/api/v1/meetings/{meeting_a['id']}/summary", reader, {"markdown": "Lecture seule"}))

    # Two tokens post under the same author: two ghosts, both shown as bots.
    for tok, text in ((scoped, "Relevé du jeton A"), (token, "Relevé du jeton général")):
        r = api(env, "POST", f"/api/v1/meetings/{meeting_a['id']}/summary", tok, {"markdown": text, "author": "Greffe"})
        assert r.status_code == 202, r.text

    def posted(text):
        def find():
            alice.sync(500)
            return next(
                (e for e in alice.timelines.get(room_a, []) if e.get("type") == "m.room.message" and e["content"].get("body") == text),
                None,
            )

        return wait_for(find, DEADLINE_S, f"{text!r} in room A", interval=0)

    first, second = posted("Relevé du jeton A"), posted("Relevé du jeton général")
    assert first["sender"] != second["sender"], "two tokens never share a ghost"
    for event in (first, second):
        assert event["content"]["m.relates_to"]["event_id"] == meeting_a["thread_root_event_id"]
        member = alice.member(room_a, event["sender"])
        assert member and member.get("displayname") == "Greffe (bot)", member
    # Nothing reached room B, nor was anything posted by the read-only token.
    alice.sync(0)
    bodies = [e["content"].get("body") for e in alice.timelines.get(room_b, []) if e.get("type") == "m.room.message"]
    assert "Fuite" not in bodies and "Lecture seule" not in str(alice.timelines.get(room_a, []))
    # Reads are audit-logged with the token's name, never the token.
    logs = re.sub(r"\x1b\[[0-9;]*m", "", env.service.logs())
    assert "bot API read" in logs and "token_name=room-a-reader" in logs
    assert scoped not in logs and reader not in logs


def create_token_with(env, name: str, *scope: str) -> str:
    out = cli(env, "api-token", "create", "--name", name, *scope)
    token = out.strip().splitlines()[-1]
    assert token.startswith("tvb_"), out
    return token


def test_webhooks_are_signed_retried_and_accepted_once(env, receivers):
    flaky, steady = receivers
    out = cli(env, "webhook", "test")
    event_id = re.search(r"ping event (\S+)", out).group(1)

    def accepted(hook):
        return [d for d in hook.accepted("ping") if d.body["id"] == event_id]

    steady.wait_accepted(lambda _: accepted(steady), DEADLINE_S, "the ping at the steady receiver")
    flaky.wait_accepted(lambda _: accepted(flaky), DEADLINE_S, "the ping at the flaky receiver, after a retry")

    # Nothing is sent again once delivered: the queue says so.
    def final_states():
        with db(env) as conn:
            rows = conn.execute(
                "SELECT url, state, attempts, last_status FROM webhook_deliveries WHERE event_id = ?", (event_id,)
            ).fetchall()
        return rows if rows and all(state == "delivered" for _, state, _, _ in rows) else None

    rows = {url: (attempts, status) for url, _, attempts, status in wait_for(final_states, DEADLINE_S, "both delivered")}
    assert rows == {flaky.url: (2, 204), steady.url: (1, 204)}, rows

    # The flaky receiver refused the first attempt (500), then got the same delivery again.
    tries = [d for d in flaky.all() if d.raw and d.body["id"] == event_id]
    assert [d.status for d in tries] == [500, 204], tries
    assert tries[0].delivery_id == tries[1].delivery_id and tries[0].raw == tries[1].raw
    assert len(accepted(flaky)) == 1 and len(accepted(steady)) == 1
    assert accepted(flaky)[0].delivery_id != accepted(steady)[0].delivery_id, "one delivery id per receiver"
    for d in (tries[0], accepted(steady)[0]):
        assert d.event == "ping" and d.body["type"] == "ping" and d.body["meeting"] is None
    # Every request either receiver got was correctly signed, and no event was accepted twice.
    for hook in (flaky, steady):
        assert [b["id"] for b in hook.events_once() if b["type"] == "ping"] == [event_id]
    # The secrets never reach the log.
    logs = env.service.logs()
    assert flaky.secret not in logs and steady.secret not in logs


def test_the_documented_verification_snippet_works(receivers):
    """docs/admin.md's Python snippet accepts a real delivery and refuses a tampered one."""
    from harness.util import ROOT

    doc = (ROOT / "docs" / "admin.md").read_text()
    snippet = next(block for block in re.findall(r"```python\n(.*?)```", doc, re.S) if "def verify" in block)
    namespace: dict = {}
    exec(snippet, namespace)  # noqa: S102 - our own documentation
    _, steady = receivers
    delivery = wait_for(lambda: steady.accepted(), DEADLINE_S, "a delivery to check")[0]
    verify = namespace["verify"]
    assert verify(steady.secret.encode(), delivery.signature, delivery.raw)
    assert not verify(steady.secret.encode(), delivery.signature, delivery.raw + b" ")
    assert not verify(b"another-secret", delivery.signature, delivery.raw)


def test_bot_api_and_webhooks_on_postgres(tmp_path_factory, pg_database):
    """The same paths with the service on PostgreSQL: token from the command line, a
    meeting listed and read, a ping delivered once to each receiver after a retry."""
    with WebhookReceiver(fail_first=1) as flaky, WebhookReceiver() as steady:
        pg = Env(
            tmp_path_factory.mktemp("botapi-pg"),
            database_uri=pg_database,
            overrides={"webhooks": [flaky.config(), steady.config()]},
        )
        try:
            tok = create_token(pg, "pg-bot")
            room = "!pg-room:localhost"
            out = cli(pg, "meeting", "create", "--title", "Sur PostgreSQL", "--room", room)
            meeting_id = re.search(r"^id: (\S+)$", out, re.M).group(1)
            r = api(pg, "GET", room_path(room), tok)
            assert r.status_code == 200 and [m["id"] for m in r.json()["meetings"]] == [meeting_id], r.text
            r = api(pg, "GET", f"/api/v1/meetings/{meeting_id}", tok)
            assert r.status_code == 200 and r.json()["title"] == "Sur PostgreSQL", r.text
            assert api(pg, "GET", room_path(room), "wrong").status_code == 401

            event_id = re.search(r"ping event (\S+)", cli(pg, "webhook", "test")).group(1)
            for hook in (flaky, steady):
                hook.wait_accepted(
                    lambda ds: [d for d in ds if d.body["id"] == event_id], DEADLINE_S, f"the ping at {hook.url}"
                )
            flaky_tries = [d for d in flaky.all() if d.body["id"] == event_id]
            assert [d.status for d in flaky_tries] == [500, 204], flaky_tries
            assert flaky_tries[0].delivery_id == flaky_tries[1].delivery_id
            assert flaky.bad_signatures == [] and steady.bad_signatures == []
        finally:
            pg.close()
