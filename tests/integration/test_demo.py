"""scripts/demo.sh as a newcomer runs it: twice in a row on the same state, `!visio`
answered both times (the second run restarts Synapse on SQLite, which numbers its
appservice transactions from 1 again). Uses the already-built binary, builds nothing."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from harness.service import binary
from harness.util import ROOT, free_port, free_udp_ports

LINK = re.compile(r"^  (http://127\.0\.0\.1:\d+/m/[A-Za-z0-9]+)$", re.MULTILINE)


def run_demo(env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=180,
    )
    return r, time.monotonic() - started


def test_demo_twice_on_kept_state_answers_both_times(tmp_path):
    state = tmp_path / "demo"
    as_port = free_port()
    env = {
        **os.environ,
        "TCHAP_VISIO_BIN": str(binary()),
        "DEMO_EXIT_AFTER_LINK": "1",
        "DEMO_DIR": str(state),
        "DEMO_HS_PORT": str(free_port()),
        "DEMO_AS_PORT": str(as_port),
        # One UDP port per shard, and the demo runs one shard per core.
        "DEMO_UDP_PORT": str(free_udp_ports(min(os.cpu_count() or 1, 64))),
        "DEMO_TCP_PORT": str(free_port()),
    }
    links = []
    for attempt in (1, 2):
        r, took = run_demo(env)
        assert r.returncode == 0, f"demo run {attempt} failed ({r.returncode}):\n{r.stdout}"
        found = LINK.findall(r.stdout)
        assert len(found) == 1, f"demo run {attempt} printed no link:\n{r.stdout}"
        assert found[0].startswith(f"http://127.0.0.1:{as_port}/m/"), found
        links.append(found[0])
        # What it listens on is said, and generate-registration's advice is not repeated.
        assert "Meeting media: UDP" in r.stdout and "on 127.0.0.1 only" in r.stdout, r.stdout
        assert "app_service_config_files" not in r.stdout, r.stdout
        print(f"demo run {attempt}: {took:.1f} s")
    # The meeting of the first run is still open: the second `!visio` gets its link again.
    assert links[0] == links[1], links
    assert (state / "tchap-visio.db").is_file()
    log = (state / "tchap-visio.log").read_text()
    assert "\x1b[" not in log, "colour codes in the log file"
    assert "stopped" in log, "the demo stopped tchap-visio cleanly"
    # Media on loopback only, also with the config kept from the first run.
    listening = [line for line in log.splitlines() if "media server listening" in line]
    assert len(listening) == 2 and all("bind=127.0.0.1:" in line for line in listening), listening


def test_media_on_loopback_only_reaches_livekit_sdk_peers(tmp_path):
    """The demo's media listen on 127.0.0.1 only (`sfu.bind_ip`), and native WebRTC does
    not gather loopback candidates: its packets from the host's other addresses reach
    127.0.0.1 all the same, both ways (Linux)."""
    try:
        import livekit.rtc  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means the SDK is unusable here
        if os.environ.get("CI"):
            pytest.fail(f"LiveKit's Python SDK cannot be imported in CI: {e!r}", pytrace=False)
        pytest.skip(f"LiveKit's Python SDK cannot be imported: {e!r}")
    from harness import Env
    from harness.lkpeer import Peer, token

    env = Env(tmp_path / "env", overrides={"sfu": {"bind_ip": "127.0.0.1"}})
    peers = []
    try:
        svc = env.service
        for name in ("agathe", "bruno"):
            tok = token(svc.sfu_key, svc.sfu_secret, name, "loopback", name=name.title())
            peers.append(Peer(tmp_path, name, svc.livekit_url, tok, publish=True))
        peers[0].wait_media_from("bruno", video=5, timeout=45)
        peers[1].wait_media_from("agathe", video=5, timeout=45)
        listening = [line for line in svc.log_path.read_text().splitlines() if "media server listening" in line]
        assert listening and "candidates=[127.0.0.1:" in listening[-1] and "bind=127.0.0.1:" in listening[-1], listening
    finally:
        for p in peers:
            p.close()
        env.close()
