"""docs/openapi.json says what the server enforces: schemathesis
generates requests from the document and sends them to the running service (a real
Synapse behind it, a meeting started with `!visio` in a real room), with a bot token
and without one, through every operation, the join endpoint included with the
meeting's real slug. Any server error, any status the document does not list, any
answer that does not fit its schema, any request valid by the document that is
refused or invalid that is accepted, fails the test.

Bounded and repeatable: a fixed seed, deterministic generation, no example database
kept between runs, a few examples per operation, one worker.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests

from harness import Env, wait_for
from harness.util import ROOT

DEADLINE_S = 30
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
OPENAPI = ROOT / "docs" / "openapi.json"
# Per operation and per phase; the whole run stays well under a minute on 2 cores.
MAX_EXAMPLES = 15
SEED = 20261202


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # Hundreds of calls from one address: the rate limits (tested in test_access.py and
    # src/http/limits.rs) would answer most of them 429 instead of checking what they say.
    e = Env(tmp_path_factory.mktemp("openapi"), overrides={"rate_limits": {"enabled": False}})
    yield e
    e.close()


def cli(env, *args: str) -> str:
    svc = env.service
    r = svc.cli(*args, "-c", str(svc.config_path))
    assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}"
    return r.stdout


@pytest.fixture(scope="module")
def meeting(env):
    return start_meeting(env)


def start_meeting(env) -> dict:
    """A meeting started from a real room: its id, its slug and its room."""
    token = cli(env, "api-token", "create", "--name", "openapi-setup", "--all-rooms").strip().splitlines()[-1]
    alice, room = env.room_with_bot("alice", name="OpenAPI")
    alice.send_text(room, "!visio Conformité")
    quoted = urllib.parse.quote(room, safe="")

    def listed():
        r = requests.get(
            f"{env.service.url}/api/v1/rooms/{quoted}/meetings",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        return next((m for m in r.json()["meetings"] if m["thread_root_event_id"]), None)

    found = wait_for(listed, DEADLINE_S, "the meeting and its thread")
    with sqlite3.connect(env.service.dir / "tchap-visio.db", timeout=10) as conn:
        (slug,) = conn.execute("SELECT slug FROM meetings WHERE id = ?", (found["id"],)).fetchone()
    return {"id": found["id"], "slug": slug, "room": room}


def config(path: Path, meeting: dict, authenticated: bool) -> Path:
    """A schemathesis config that sends the real meeting's id or slug (and its room) half
    of the time, so that generated requests reach the handlers' bodies and not only 404s."""
    key = meeting["id"] if authenticated else meeting["slug"]
    lines = [
        # Any client error is a rejection of invalid data: too long a summary is refused
        # by the body limit (413) before its content is looked at.
        "[checks.negative_data_rejection]",
        'expected-statuses = ["4xx"]',
        "",
        "[dictionaries]",
        f"key = {{ values = [{json.dumps(key)}] }}",
        f"slug = {{ values = [{json.dumps(meeting['slug'])}] }}",
        f"meeting = {{ values = [{json.dumps(meeting['id'])}] }}",
        f"room = {{ values = [{json.dumps(meeting['room'])}] }}",
        "",
        "[[operations]]",
        'include-operation-id = "getMeeting"',
        'parameters = { "path.key" = { dictionary = "key", probability = 0.5 } }',
        "",
        "[[operations]]",
        'include-operation-id = "joinMeeting"',
        'parameters = { "path.key" = { dictionary = "slug", probability = 0.5 } }',
        "",
        "[[operations]]",
        'include-operation-id = "postSummary"',
        'parameters = { "path.key" = { dictionary = "meeting", probability = 0.5 } }',
        # The one limit JSON Schema cannot say: the summary's size once rendered to HTML
        # (documented in the operation; 413 M_TOO_LARGE).
        "[operations.checks.positive_data_acceptance]",
        'expected-statuses = ["2xx", "401", "403", "404", "409", "413"]',
        "",
        "[[operations]]",
        'include-operation-id = "listRoomMeetings"',
        'parameters = { "path.room_id" = { dictionary = "room", probability = 0.5 } }',
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_schemathesis(env, tmp_path: Path, meeting: dict, token: str | None) -> subprocess.CompletedProcess:
    cfg = config(tmp_path / f"schemathesis-{'auth' if token else 'anon'}.toml", meeting, token is not None)
    args = [
        str(SCHEMATHESIS),
        "--config-file",
        str(cfg),
        "run",
        str(OPENAPI),
        "--url",
        env.service.url,
        "--checks",
        "all",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-deterministic",
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(tmp_path / "junit.xml"),
    ]
    if token is not None:
        args += ["--header", f"Authorization: Bearer {token}"]
    return subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def outcomes_by_operation(junit: Path) -> dict[str, str]:
    """Operation -> outcome (passed, failure, error, skipped) from schemathesis's JUnit report."""
    outcomes = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        outcomes[case.get("name")] = outcome
    return outcomes


@pytest.mark.parametrize("authenticated", [True, False], ids=["bot-token", "anonymous"])
def test_the_running_service_conforms_to_its_openapi_document(env, meeting, tmp_path, authenticated):
    token = None
    if authenticated:
        token = cli(env, "api-token", "create", "--name", "schemathesis", "--all-rooms").strip().splitlines()[-1]
    logs_before = len(env.service.logs())
    result = run_schemathesis(env, tmp_path, meeting, token)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Every operation of the document was exercised, and passed.
    operations = {
        f"{method.upper()} {path}" for path, ops in json.loads(OPENAPI.read_text())["paths"].items() for method in ops
    }
    outcomes = outcomes_by_operation(tmp_path / "junit.xml")
    assert {op: outcomes.get(op) for op in operations} == {op: "passed" for op in operations}, output
    # The generated requests reached the handlers' bodies, not only their refusals.
    logs = re.sub(r"\x1b\[[0-9;]*m", "", env.service.logs()[logs_before:])
    assert "join token issued" in logs, "no generated join succeeded"
    if authenticated:
        for reached in ("bot API read: a room's meetings listed", "bot API read: a meeting", "bot API: summary queued"):
            assert reached in logs, f"no generated request reached: {reached}"
    assert " ERROR " not in logs, "the service logged an error"


def ecma_search(pattern: str, value: str) -> bool:
    """JSON Schema's reading of `pattern` (ECMA-262): `$` is the end of the string, not
    also the place before a final newline as in Python."""
    return re.search(pattern.replace("$", r"\Z"), value) is not None


HOSTILE_NAMES = [
    "Zoé",
    "  Zoé  ",
    "a" * 64,
    "a" * 65,
    " " * 70 + "a" + "\t" * 70,
    "",
    "   ",
    "\u3000",
    "a\nb",
    "a\u0085b",
    "a\u009fb",
    "\u0000",
    "a\u2028b",
    "ab\n",
    "\u200bZoé",
    "\u202eZoé",
    "\u3164",
    "\u2800",
    "Zoé\ufeff",
    "x\ue000",
    "é" * 64,
    "🙂" * 64,
    "🙂" * 65,
]


def test_the_documented_patterns_are_what_the_server_checks(env, meeting):
    """Edge cases the random generation may miss: for each, the server accepts exactly
    when docs/openapi.json's pattern says the value is valid (display names at join and
    as summary authors, summaries, room ids). Fails when a validator changes without
    the document."""
    doc = json.loads(OPENAPI.read_text())
    name_pattern = doc["components"]["schemas"]["DisplayName"]["pattern"]
    token = cli(env, "api-token", "create", "--name", "patterns", "--all-rooms").strip().splitlines()[-1]
    auth = {"Authorization": f"Bearer {token}"}
    base = env.service.url
    mismatches = []
    for name in HOSTILE_NAMES:
        valid = ecma_search(name_pattern, name)
        joined = requests.post(f"{base}/api/v1/meetings/{meeting['slug']}/join", json={"name": name}, timeout=10)
        if (joined.status_code == 200) != valid:
            mismatches.append(("join name", name, valid, joined.status_code, joined.text))
        posted = requests.post(
            f"{base}/api/v1/meetings/{meeting['id']}/summary",
            json={"markdown": "ok", "author": name},
            headers=auth,
            timeout=10,
        )
        if (posted.status_code == 202) != valid:
            mismatches.append(("summary author", name, valid, posted.status_code, posted.text))

    summary = doc["paths"]["/api/v1/meetings/{key}/summary"]["post"]
    markdown = summary["requestBody"]["content"]["application/json"]["schema"]["properties"]["markdown"]
    for text in ["ok", " \t\n", "\u3000\u00a0", "\u200b", "**gras**", "", "\ufeff"]:
        valid = markdown["minLength"] <= len(text) <= markdown["maxLength"] and ecma_search(markdown["pattern"], text)
        posted = requests.post(
            f"{base}/api/v1/meetings/{meeting['id']}/summary", json={"markdown": text}, headers=auth, timeout=10
        )
        if (posted.status_code == 202) != valid:
            mismatches.append(("markdown", text, valid, posted.status_code, posted.text))

    listing = doc["paths"]["/api/v1/rooms/{room_id}/meetings"]["get"]
    room_pattern = next(p for p in listing["parameters"] if p["name"] == "room_id")["schema"]["pattern"]
    for room in ["!a", "!a:b", meeting["room"], "!", "a", "!a b", "!a\n", "!é", "!" + "x" * 254, "!" + "x" * 255]:
        valid = ecma_search(room_pattern, room)
        quoted = urllib.parse.quote(room, safe="")
        listed = requests.get(f"{base}/api/v1/rooms/{quoted}/meetings", headers=auth, timeout=10)
        if (listed.status_code == 200) != valid:
            mismatches.append(("room id", room, valid, listed.status_code, listed.text))
    assert mismatches == []
