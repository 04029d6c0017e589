"""A page script of tests/browser/ (Chromium driven by playwright-core) run in the
background by a pytest test: its JSON progress lines on stdout, lines to its stdin.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading

import pytest

from .util import ROOT, wait_for


def require_browser() -> None:
    """Skips the module without Chromium, node or tests/browser/node_modules (fails in CI)."""
    if shutil.which("node") and os.path.exists("/usr/bin/chromium") and (ROOT / "tests/browser/node_modules").is_dir():
        return
    if os.environ.get("CI"):
        pytest.fail("Chromium, node or tests/browser/node_modules missing (scripts/test.sh prepares them)", pytrace=False)
    pytest.skip("Chromium, node or tests/browser/node_modules missing: run scripts/test-browser.sh once", allow_module_level=True)


class PageScript:
    """`tests/browser/<script>` running with `args`; `timeout`: its `--timeout` per wait."""

    def __init__(self, bin_path, script: str, *args: str, timeout: float):
        self.timeout = timeout
        self.proc = subprocess.Popen(
            ["node", str(ROOT / "tests/browser" / script), "--timeout", str(timeout), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TCHAP_VISIO_BIN": str(bin_path)},
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

    def reached(self, event: str, timeout: float | None = None) -> dict:
        """The script's `event` line, once printed; fails at once if the script failed."""

        def found():
            hit = next((p for p in self.progress if p["event"] == event), None)
            if hit is None and self.proc.poll() not in (None, 0):
                wait_for(lambda: self.stderr, 5, "the page script's error output")
                raise RuntimeError(f"the page script failed before {event!r}:\n{self.stderr}")
            return hit

        try:
            return wait_for(found, timeout or self.timeout, f"the page's {event!r}", interval=0.1)
        except RuntimeError as e:
            raise AssertionError(str(e)) from None

    def tell(self, line: str) -> None:
        """One line to the script (it waits for some before going on)."""
        self.proc.stdin.write(f"{line}\n")
        self.proc.stdin.flush()

    def finish(self) -> None:
        assert self.proc.wait(60) == 0, self.stderr

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
