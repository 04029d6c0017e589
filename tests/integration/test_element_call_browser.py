"""Two members of a Matrix room in one Element Call call, in Chromium, seeing each other's
video through tchap-visio's SFU (its Element Call focus enabled, a real Synapse with
MatrixRTC's features: MSC4143 transports, MSC4140 delayed events, MSC4354, MSC4502/4512).

- Element Call itself: `@element-hq/element-call-embedded` (its static embedded build) in
  an iframe of a minimal widget host page per member (tests/browser/element-call-host/:
  matrix-widget-api's ClientWidgetApi with a WidgetDriver doing what the widget asks on
  Synapse with the member's own access token, and a /sync loop feeding it). Element Call
  finds the focus through the homeserver's transports, gets an OpenID token through the
  widget API, asks our `/get_token`, sends its call membership (and delayed leave) and
  connects to our SFU; each page shows the other member's tile with a video that decodes.
- The same flow with livekit-client alone: each member's JWT from `POST /get_token` with
  a real OpenID token, the URL it answers, fake camera and microphone published, each
  page decoding the other's camera (a size, frames advancing).

Both run tests/browser/element-call-page.mjs (--mode element-call | livekit).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from harness import Env, wait_for
from harness import element_call as ec
from harness.util import ROOT

# Each wait of the page script (Chromium on 2 loaded cores).
PAGE_S = 45


def _browser_available() -> bool:
    return bool(shutil.which("node") and os.path.exists("/usr/bin/chromium") and (ROOT / "tests/browser/node_modules/livekit-client").is_dir())


if not _browser_available():
    if os.environ.get("CI"):
        pytest.fail("Chromium, node or tests/browser/node_modules missing (scripts/test.sh prepares them)", pytrace=False)
    pytest.skip("Chromium, node or tests/browser/node_modules missing: run scripts/test-browser.sh once", allow_module_level=True)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = Env(
        tmp_path_factory.mktemp("element-call-browser"),
        overrides={"element_call": {"enabled": True}, "rate_limits": {"enabled": False}},
        synapse_config=ec.synapse_config,
    )
    yield e
    e.close()


class PageScript:
    """tests/browser/element-call-page.mjs running in the background; its JSON progress lines."""

    def __init__(self, env, spec_path, mode: str = "livekit"):
        self.proc = subprocess.Popen(
            ["node", str(ROOT / "tests/browser/element-call-page.mjs"), "--spec", str(spec_path), "--timeout", str(PAGE_S), "--mode", mode],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TCHAP_VISIO_BIN": str(env.service.bin)},
        )
        pidfile = os.environ.get("TCHAP_VISIO_TEST_PIDFILE")
        if pidfile:
            with open(pidfile, "a") as f:
                f.write(f"{self.proc.pid}\n")
        self.progress: list[dict] = []
        self.stderr = ""
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.progress.append(json.loads(line))

    def _read_stderr(self) -> None:
        self.stderr = self.proc.stderr.read()

    def finish(self, timeout: float) -> list[dict]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.close()
            raise AssertionError(f"the page script did not finish within {timeout} s: {self.progress}") from None
        if code != 0:
            wait_for(lambda: self.stderr, 5, "the page script's error output")
            raise AssertionError(f"the page script failed ({code}) after {self.progress}:\n{self.stderr}")
        return self.progress

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def call_room(env, owner, member, name: str) -> str:
    """A room where every member may send call memberships (as rooms made by Element Call
    are: the state events' default level is 50), with `member` joined."""
    room = owner.create_room(name=name)
    levels = owner._run(owner.client.room_get_state_event(room, "m.room.power_levels", ""))
    content = dict(levels.content)
    content.setdefault("events", {})[ec.CALL_MEMBER] = 0
    ec.put_state(env.synapse.url, owner, room, "m.room.power_levels", "", content)
    owner.invite(room, member.user_id)
    member.join(room)
    return room


def test_two_members_see_each_other_through_the_focus_and_the_sfu(env, tmp_path):
    alice, bob = env.user("alice"), env.user("bob")
    room = alice.create_room(name="Appel Element (navigateur)")
    alice.invite(room, bob.user_id)
    bob.join(room)

    members, expected = [], {}
    for user, member_id in ((alice, "alice-call"), (bob, "bob-call")):
        r = ec.post(f"{env.service.url}/get_token", ec.get_token_body(env.synapse.url, user, room, member_id=member_id))
        assert r.status_code == 200, f"/get_token for {user.user_id}: {r.status_code} {r.text}"
        grant = r.json()
        assert grant["url"] == env.service.livekit_url, f"the focus hands our own SFU: {grant}"
        identity = ec.alias(user.user_id, user.device_id, member_id)
        assert ec.claims(grant["jwt"])["sub"] == identity
        members.append({"name": user.user_id, "url": grant["url"], "jwt": grant["jwt"]})
        expected[user.user_id] = identity

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"members": members}))
    started = time.monotonic()
    script = PageScript(env, spec)
    try:
        progress = script.finish(timeout=3 * PAGE_S)
    finally:
        script.close()

    connected = {p["name"]: p for p in progress if p["event"] == "connected"}
    assert set(connected) == set(expected), progress
    room_alias = ec.alias(room, ec.ROOM_SLOT)
    for name, p in connected.items():
        assert p["identity"] == expected[name], p
        assert p["room"] == room_alias, f"the LiveKit room named by the focus: {p}"
    decoding = {(p["name"], p["from"]): p for p in progress if p["event"] == "decoding"}
    alice_id, bob_id = expected[alice.user_id], expected[bob.user_id]
    assert set(decoding) == {(alice.user_id, bob_id), (bob.user_id, alice_id)}, progress
    for seen in decoding.values():
        assert seen["width"] > 0 and seen["height"] > 0, seen
        assert seen["since"] >= 10, f"frames advancing: {seen}"
    print(f"both pages decoding the other's camera {time.monotonic() - started:.1f} s after the script started")


def _element_call_dist() -> str | None:
    d = os.environ.get("ELEMENT_CALL_DIST") or str(ROOT / "tests/browser/node_modules/@element-hq/element-call-embedded/dist")
    return d if os.path.isdir(d) else None


@pytest.mark.skipif(_element_call_dist() is None, reason="@element-hq/element-call-embedded not installed in tests/browser")
def test_element_call_embedded_in_a_widget_host(env, tmp_path):
    alice, bob = env.user("alice"), env.user("bob")
    room = call_room(env, alice, bob, "Appel Element Call (widget)")
    members = [
        {"name": u.user_id, "homeserver": env.synapse.url, "user_id": u.user_id, "device_id": u.device_id, "access_token": u.client.access_token, "room_id": room}
        for u in (alice, bob)
    ]
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"members": members}))
    script = PageScript(env, spec, mode="element-call")
    try:
        progress = script.finish(timeout=3 * PAGE_S)
    finally:
        script.close()
    decoding = {(p["name"], p["from"]): p for p in progress if p["event"] == "decoding"}
    assert set(decoding) == {(alice.user_id, "bob"), (bob.user_id, "alice")}, progress
    for seen in decoding.values():
        assert seen["width"] > 0 and seen["height"] > 0, seen
        assert seen["since"] >= 10, f"frames advancing: {seen}"
