"""Small shared helpers: ports, deadlines, child processes, log tails."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, TypeVar

ROOT = Path(__file__).resolve().parents[3]

T = TypeVar("T")


def require_livekit_sdk() -> None:
    """Call at a test module's top: skips the module where LiveKit's Python SDK cannot be
    imported, and fails it in CI, where it must be."""
    import pytest

    try:
        import livekit.rtc  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means the SDK is unusable here
        if os.environ.get("CI"):
            pytest.fail(f"LiveKit's Python SDK cannot be imported in CI: {e!r}", pytrace=False)
        pytest.skip(f"LiveKit's Python SDK cannot be imported: {e!r}", allow_module_level=True)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that is free on 127.0.0.1 right now (TCP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_ports(count: int) -> int:
    """The first of `count` consecutive UDP ports free on 127.0.0.1 right now (the SFU's
    shards listen on one each)."""
    for _ in range(50):
        first = free_port(socket.SOCK_DGRAM)
        if first + count - 1 > 65535:
            continue
        held = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError(f"no {count} consecutive free UDP ports")


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll `condition` until it returns something truthy, and return that.

    Raises AssertionError naming `what` when `timeout` seconds pass first. An
    exception raised by `condition` counts as "not yet" and is reported at the end.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - reported below
            last_error = e
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 80) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    return "\n".join(text.splitlines()[-lines:])


# Every process the harness starts, so that none outlives the test run. The PIDs
# also go to $TCHAP_VISIO_TEST_PIDFILE (set by scripts/test.sh), whose EXIT trap
# kills what pytest could not (pytest itself killed, for instance).
_CHILDREN: list[subprocess.Popen] = []


def spawn(args: list[str], log_path: Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    _CHILDREN.append(proc)
    pidfile = os.environ.get("TCHAP_VISIO_TEST_PIDFILE")
    if pidfile:
        with open(pidfile, "a") as f:
            f.write(f"{proc.pid}\n")
    return proc


def terminate(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Send `sig` and wait for the exit; SIGKILL if it does not come in time."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


@atexit.register
def _kill_children() -> None:
    for proc in _CHILDREN:
        if proc.poll() is None:
            proc.kill()


# Components (Synapse, Service) alive right now; conftest prints their log tails
# when a test fails.
ACTIVE: list = []
