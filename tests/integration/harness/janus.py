"""Janus (Debian `janus`) with its VideoRoom plugin and HTTP transport only, for the load
test's side-by-side leg. scripts/bench-load.sh writes the same configuration."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import requests

from .util import ACTIVE, free_port, log_tail, spawn, terminate, wait_for

DISABLED_PLUGINS = ",".join(
    f"libjanus_{name}.so"
    for name in (
        "audiobridge",
        "duktape",
        "echotest",
        "lua",
        "nosip",
        "recordplay",
        "sip",
        "streaming",
        "textroom",
        "videocall",
        "voicemail",
    )
)
DISABLED_TRANSPORTS = ",".join(f"libjanus_{name}.so" for name in ("mqtt", "nanomsg", "pfunix", "rabbitmq", "websockets"))


def janus_binary() -> str | None:
    return shutil.which("janus")


def janus_lib() -> Path:
    """The folder holding Janus's plugins/ and transports/ (from the package's files)."""
    files = subprocess.run(["dpkg", "-L", "janus"], capture_output=True, text=True, check=True).stdout.split()
    plugin = next(f for f in files if f.endswith("/janus/plugins/libjanus_videoroom.so"))
    return Path(plugin).parent.parent


class Janus:
    name = "janus"

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/janus"
        self.log_path = self.dir / "janus.log"
        self.proc: subprocess.Popen | None = None
        lib = janus_lib()
        (self.dir / "janus.jcfg").write_text(
            f"""general: {{
\tconfigs_folder = "{self.dir}"
\tplugins_folder = "{lib}/plugins"
\ttransports_folder = "{lib}/transports"
\tevents_folder = "{lib}/events"
\tloggers_folder = "{lib}/loggers"
\tdebug_level = 3
}}
media: {{
\trtp_port_range = "20000-30000"
}}
plugins: {{
\tdisable = "{DISABLED_PLUGINS}"
}}
transports: {{
\tdisable = "{DISABLED_TRANSPORTS}"
}}
loggers: {{
\tdisable = "libjanus_jsonlog.so"
}}
events: {{
\tbroadcast = false
}}
"""
        )
        (self.dir / "janus.transport.http.jcfg").write_text(
            f"""general: {{
\tjson = "plain"
\tbase_path = "/janus"
\thttp = true
\tport = {self.port}
\tip = "127.0.0.1"
\thttps = false
}}
admin: {{
\tadmin_http = false
}}
"""
        )
        (self.dir / "janus.plugin.videoroom.jcfg").write_text("general: {}\n")

    def start(self, timeout: float = 30) -> None:
        self.proc = spawn(
            [janus_binary() or "janus", "-o", "-F", str(self.dir), "-C", str(self.dir / "janus.jcfg")],
            self.log_path,
            cwd=self.dir,
        )
        ACTIVE.append(self)

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"janus exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                return requests.get(f"{self.url}/info", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(up, timeout, f"janus at {self.url}", interval=0.05)

    def close(self) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout=10)
            self.proc = None
        if self in ACTIVE:
            ACTIVE.remove(self)

    def logs(self) -> str:
        return log_tail(self.log_path, 60)
