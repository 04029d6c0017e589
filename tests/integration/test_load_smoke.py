"""A short run of the load generator (tchap-visio-load, built with the service) against the
service's SFU, and against Janus where it is installed (scripts/test.sh installs it): the
`large` scenario with three participants, each publishing VP8 simulcast and Opus and
subscribing to the other two at layer h. Media must flow with little loss and the JSON
line must carry every figure the bench (scripts/bench-load.sh) reads. About 35 seconds
of load; the real comparison is the bench's, with release builds."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from harness.janus import Janus, janus_binary
from harness.service import binary

N = 3
FIELDS = {
    "target",
    "scenario",
    "n",
    "participants",
    "publishers",
    "subscribers",
    "layer",
    "ready",
    "seconds",
    "packets",
    "video_packets",
    "audio_packets",
    "packets_per_s",
    "frames_by_layer",
    "loss_pct",
    "rtp_loss_pct",
    "delay_samples",
    "delay_ms_p50",
    "delay_ms_p99",
    "sent_packets",
    "server_cpu_s",
    "packets_per_cpu_s",
    "server_rss_idle_kb",
    "server_rss_kb",
    "rss_per_participant_kb",
    "loadgen_cpu_s",
    "load_average",
}


def load_binary() -> Path:
    path = binary().parent / "tchap-visio-load"
    if not path.is_file():
        pytest.fail(f"{path} is missing: `cargo build` builds it with the service", pytrace=False)
    return path


def run_load(target: str, url: str, pid: int, seconds: int, key: str = "", secret: str = "") -> dict:
    args = [
        str(load_binary()),
        "--target", target,
        "--url", url,
        "--scenario", "large",
        "-n", str(N),
        "--seconds", str(seconds),
        "--layer", "h",
        "--warmup", "20",
        "--server-pid", str(pid),
    ]  # fmt: skip
    env = {**os.environ, "TCHAP_VISIO_LOAD_KEY": key, "TCHAP_VISIO_LOAD_SECRET": secret}
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=seconds + 90)
    assert r.returncode == 0, f"tchap-visio-load failed ({r.returncode}):\n{r.stderr[-3000:]}"
    result = json.loads(r.stdout.strip().splitlines()[-1])
    print(r.stderr.strip().splitlines()[-1])
    return result


def check(result: dict, target: str, seconds: int) -> None:
    assert FIELDS <= result.keys(), f"missing fields: {FIELDS - result.keys()}"
    assert result["target"] == target and result["participants"] == N
    assert result["publishers"] == N and result["subscribers"] == N
    assert result["ready"], f"not every subscriber received every publisher at layer h: {result}"
    # Each subscriber gets 2 publishers x (h: ~60 packets/s + Opus 50/s); allow for a
    # loaded machine and a lower layer, but media must flow on both kinds.
    floor = N * (N - 1) * 80 * seconds * 0.5
    assert result["packets"] >= floor, f"{result['packets']} packets forwarded, expected at least {floor:.0f}: {result}"
    assert result["video_packets"] > 0 and result["audio_packets"] > 0, result
    assert result["loss_pct"] < 5, f"loss {result['loss_pct']}%: {result}"
    assert result["delay_samples"] > 0 and result["delay_ms_p50"] is not None, result
    assert result["server_cpu_s"] > 0 and result["packets_per_cpu_s"] > 0, result
    assert result["server_rss_kb"] > 0 and result["rss_per_participant_kb"] is not None, result


def test_load_smoke_on_our_sfu(env):
    svc = env.service
    seconds = 20
    result = run_load("tchap", svc.livekit_url, svc.proc.pid, seconds, svc.sfu_key, svc.sfu_secret)
    check(result, "tchap", seconds)


def test_load_smoke_on_janus(tmp_path):
    if janus_binary() is None:
        if os.environ.get("CI"):
            pytest.fail("janus is not installed in CI (scripts/test.sh installs it)", pytrace=False)
        pytest.skip("janus is not installed (apt-get install --no-install-recommends janus)")
    janus = Janus(tmp_path / "janus")
    try:
        janus.start()
        seconds = 10
        result = run_load("janus", janus.url, janus.proc.pid, seconds)
        check(result, "janus", seconds)
    finally:
        janus.close()
