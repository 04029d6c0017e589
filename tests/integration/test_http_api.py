"""The appservice HTTP API refuses bad requests and stores nothing from them;
check-config talks to the real homeserver.

This module's Synapse has no rooms and no users, so it sends the service nothing
by itself: the counters only move with the requests made here.
"""

import json
import re
import uuid

import pytest

from harness import Env
from harness.scenarios import fake_message

MAX_BODY = 4096
TXN_PATH = "/_matrix/app/v1/transactions/"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(tmp_path_factory.mktemp("env"), service_env={"TCHAP_VISIO_APPSERVICE__MAX_BODY_BYTES": str(MAX_BODY)})
    yield e
    e.close()


def harmless(note: str = "nothing to see") -> dict:
    """A valid transaction body the bot has nothing to do with (not a command)."""
    return {"events": [fake_message("!nowhere:localhost", "@carol:localhost", note)]}


def counters(svc) -> tuple[float, float]:
    return (
        svc.metric("tchap_visio_transactions_received_total"),
        svc.metric("tchap_visio_events_received_total"),
    )


# (case, body, request kwargs, status, errcode); query_token "" = the real hs_token
BAD_TRANSACTIONS = [
    ("missing-token", harmless(), {"token": None}, 401, "M_MISSING_TOKEN"),
    ("wrong-token-header", harmless(), {"token": "wrong", "via": "header"}, 403, "M_FORBIDDEN"),
    ("wrong-token-query", harmless(), {"token": "wrong", "via": "query"}, 403, "M_FORBIDDEN"),
    ("header-right-query-wrong", harmless(), {"via": "both", "query_token": "wrong"}, 403, "M_FORBIDDEN"),
    ("header-wrong-query-right", harmless(), {"token": "wrong", "via": "both", "query_token": ""}, 403, "M_FORBIDDEN"),
    ("malformed-json", b'{"events": [', {}, 400, "M_NOT_JSON"),
    ("not-json", b"hello", {}, 400, "M_NOT_JSON"),
    ("wrong-shape", {"events": 5}, {}, 400, "M_BAD_JSON"),
    ("oversize", harmless("x" * (2 * MAX_BODY)), {}, 413, "M_TOO_LARGE"),
]
BAD_TXN_IDS = {case: f"bad-{case}-{uuid.uuid4().hex[:8]}" for case, *_ in BAD_TRANSACTIONS}


@pytest.mark.parametrize("case,body,kwargs,status,errcode", BAD_TRANSACTIONS, ids=[c[0] for c in BAD_TRANSACTIONS])
def test_bad_transaction_is_refused(env, case, body, kwargs, status, errcode):
    svc = env.service
    if kwargs.get("query_token") == "":
        kwargs = {**kwargs, "query_token": svc.hs_token}
    before = counters(svc)
    r = svc.put_transaction(BAD_TXN_IDS[case], body, **kwargs)
    assert r.status_code == status, f"{case}: {r.status_code} {r.text}"
    assert r.json().get("errcode") == errcode, f"{case}: {r.text}"
    assert counters(svc) == before, f"{case}: counted as received"


@pytest.mark.parametrize(
    "method,path,status",
    [
        ("GET", "/_matrix/app/v1/no-such-thing", 404),
        ("PUT", "/_matrix/app/v1/no-such-thing/x", 404),
        ("GET", TXN_PATH + "some-txn", 405),
        ("POST", TXN_PATH + "some-txn", 405),
    ],
)
def test_unknown_route_or_method(env, method, path, status):
    before = counters(env.service)
    r = env.service.request(method, path, harmless() if method != "GET" else None)
    assert r.status_code == status, f"{r.status_code} {r.text}"
    assert r.json().get("errcode") == "M_UNRECOGNIZED", r.text
    assert counters(env.service) == before


def test_refused_transactions_left_no_trace(env):
    """Had any refused request been stored, its id would now be taken: a replay."""
    svc = env.service
    _, events_before = counters(svc)
    for txn_id in BAD_TXN_IDS.values():
        r = svc.put_transaction(txn_id, harmless())
        assert r.status_code == 200, f"{txn_id}: {r.status_code} {r.text}"
    _, events_after = counters(svc)
    assert events_after - events_before == len(BAD_TXN_IDS), "a refused transaction id was already taken"


@pytest.mark.parametrize("via", ["header", "query", "both"])
def test_token_accepted_in_header_or_query(env, via):
    svc = env.service
    txns_before, events_before = counters(svc)
    r = svc.put_transaction(f"ok-{via}-{uuid.uuid4().hex}", harmless(), via=via)
    assert r.status_code == 200, r.text
    assert r.json() == {}, r.text
    assert counters(svc) == (txns_before + 1, events_before + 1)


def test_just_under_the_size_limit_is_accepted(env):
    body = harmless()
    body["events"][0]["content"]["body"] = "y" * (MAX_BODY - 600)
    assert len(json.dumps(body)) < MAX_BODY
    r = env.service.put_transaction(f"fits-{uuid.uuid4().hex}", body)
    assert r.status_code == 200, r.text


def test_check_config_round_trip(env):
    r = env.service.cli("check-config", "-c", str(env.service.config_path))
    assert r.returncode == 0, r.stdout
    assert re.search(r"ping|round.?trip|aller.?retour", r.stdout, re.I), f"no word of the round trip: {r.stdout}"


def test_check_config_reads_the_registration_for_the_keys_encryption_needs(env, tmp_path):
    svc = env.service
    r = svc.cli("check-config", "-c", str(svc.config_path), "-r", str(svc.registration_path))
    assert r.returncode == 0, r.stdout
    assert "has what this configuration needs" in r.stdout, r.stdout
    # A registration from before encryption: the bot as sender, no MSC4190.
    old = tmp_path / "old-registration.yaml"
    text = svc.registration_path.read_text()
    old.write_text(
        text.replace(f"sender_localpart: {svc.registration['sender_localpart']}", "sender_localpart: visio").replace(
            "io.element.msc4190: true", "io.element.msc4190: false"
        )
    )
    r = svc.cli("check-config", "-c", str(svc.config_path), "-r", str(old))
    assert r.returncode != 0, r.stdout
    assert "sender_localpart" in r.stdout and "io.element.msc4190: true" in r.stdout, r.stdout


def test_check_config_with_wrong_as_token_fails(env):
    r = env.service.cli(
        "check-config", "-c", str(env.service.config_path), env={"TCHAP_VISIO_APPSERVICE__AS_TOKEN": "wrong-token"}
    )
    assert r.returncode != 0, r.stdout
    assert "token" in r.stdout.lower(), f"no explanation: {r.stdout}"


def test_check_config_answers_the_ping_itself_when_the_service_is_stopped(env):
    env.service.stop()
    try:
        r = env.service.cli("check-config", "-c", str(env.service.config_path))
        assert r.returncode == 0, r.stdout
        assert "not running" in r.stdout, r.stdout
        assert "ping received with the right hs_token" in r.stdout, r.stdout
    finally:
        env.service.start()
