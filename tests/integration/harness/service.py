"""The tchap-visio binary under test, configured against a test Synapse."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests
import yaml

from .synapse import Synapse
from .util import ACTIVE, ROOT, free_port, free_udp_ports, log_tail, spawn, terminate, wait_for

EXAMPLE_CONFIG = ROOT / "config" / "example-config.yaml"
# The SFU's shards in the services the tests start (`sfu.shards`).
SFU_SHARDS = 2


def binary() -> Path:
    """The already-built binary: $TCHAP_VISIO_BIN, else target/debug/tchap-visio.

    The tests never build it: scripts/test.sh runs `cargo build` first.
    """
    path = Path(os.environ.get("TCHAP_VISIO_BIN") or ROOT / "target" / "debug" / "tchap-visio")
    if not path.is_file():
        pytest.fail(f"tchap-visio binary not found at {path}: run `cargo build` (scripts/test.sh does)", pytrace=False)
    return path


def ensure_registration_extras(registration: Path) -> None:
    """Make sure the registration asks for MSC4190 devices and ephemeral events."""
    reg = yaml.safe_load(registration.read_text())
    missing = {k: True for k in ("io.element.msc4190", "receive_ephemeral") if k not in reg}
    if missing:
        with registration.open("a") as f:
            f.write(yaml.safe_dump(missing))


_METRIC_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (labels as written)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _METRIC_LINE.match(line)
        if m and not line.startswith("#"):
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


class Service:
    """tchap-visio with its config, registration, database and log in `workdir`.

    Create it before Synapse starts: it registers its registration.yaml with `synapse`.
    """

    name = "tchap-visio"

    def __init__(
        self,
        workdir: Path,
        synapse: Synapse,
        *,
        database_uri: str | None = None,
        permissions: dict[str, str] | None = None,
        language: str = "fr",
        overrides: dict | None = None,
        appservice: bool = True,
    ):
        """appservice=False: the homeserver does not load the registration (`mode: bot`)."""
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bin = binary()
        self.synapse = synapse
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.dir / "config.yaml"
        self.registration_path = self.dir / "registration.yaml"
        self.log_path = self.dir / "tchap-visio.log"
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}

        cfg = yaml.safe_load(EXAMPLE_CONFIG.read_text())
        cfg["homeserver"]["address"] = synapse.url
        cfg["homeserver"]["domain"] = synapse.server_name
        asv = cfg["appservice"]
        asv["address"] = self.url
        asv["hostname"] = "127.0.0.1"
        asv["port"] = self.port
        asv["public_address"] = self.url
        cfg["database"]["uri"] = database_uri or f"sqlite://{self.dir.resolve() / 'tchap-visio.db'}"
        if permissions is not None:
            cfg["permissions"] = permissions
        cfg["language"] = language
        # Most tests join as guests with the link; the access tests set their levels.
        cfg["meetings"]["default_access"] = "public"
        if "sfu" in cfg:
            # Two shards (two engines, two UDP ports) whatever this machine's cores, so
            # that rooms on different engines are always exercised.
            cfg["sfu"]["shards"] = SFU_SHARDS
            cfg["sfu"]["udp_port"] = free_udp_ports(SFU_SHARDS)
            cfg["sfu"]["tcp_port"] = free_port()
            # No advertised IP: the SFU offers this host's primary address and loopback
            # (traffic never leaves the host), as a production set-up without NAT does;
            # test_demo.py covers media on loopback only (the demo's). One known
            # LiveKit API key whose secret the tests use to mint access tokens.
            cfg["sfu"]["advertised_ip"] = ""
            cfg["sfu"]["keys"] = {"devkey": secrets.token_urlsafe(36)}  # 48 characters
        cfg["logging"]["level"] = "info,tchap_visio=debug"
        self.metrics_port = free_port()
        cfg["metrics"] = {"enabled": True, "hostname": "127.0.0.1", "port": self.metrics_port}
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        for section, values in (overrides or {}).items():
            if isinstance(values, dict):
                cfg.setdefault(section, {}).update(values)
            else:
                cfg[section] = values
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))

        r = self.cli("generate-registration", "-c", str(self.config_path), "-r", str(self.registration_path))
        assert r.returncode == 0, f"generate-registration failed ({r.returncode}):\n{r.stdout}"
        # As the binary wrote it, before the harness adds anything (test_cli checks it).
        self.generated_registration = yaml.safe_load(self.registration_path.read_text())
        ensure_registration_extras(self.registration_path)
        if appservice:
            synapse.add_appservice(self.registration_path)

        self.config = yaml.safe_load(self.config_path.read_text())
        self.registration = yaml.safe_load(self.registration_path.read_text())
        self.hs_token = self.registration["hs_token"]
        self.as_token = self.registration["as_token"]
        assert self.config["appservice"]["hs_token"] == self.hs_token, "config and registration disagree on hs_token"
        # The bot is a user of the namespace; the registration's sender is another one.
        if self.config.get("mode") == "bot":
            self.bot_user_id = self.config["bot_account"]["user_id"]
        else:
            self.bot_user_id = f"@{self.config['appservice']['bot']['username']}:{synapse.server_name}"

        # The embedded SFU: LiveKit's SDKs take this base URL and append /rtc themselves.
        sfu = self.config.get("sfu") or {}
        self.livekit_url = f"ws://127.0.0.1:{self.port}"
        self.sfu_udp_port = sfu.get("udp_port")
        self.sfu_tcp_port = sfu.get("tcp_port")
        keys = sfu.get("keys") or {}
        # The first configured key (the harness writes exactly one, "devkey").
        self.sfu_key, self.sfu_secret = next(iter(keys.items())) if keys else (None, None)

    # -- processes ---------------------------------------------------------

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run the binary with `args` to completion; stdout and stderr together in .stdout."""
        return subprocess.run(
            [str(self.bin), *args],
            cwd=self.dir,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )

    def start(self, extra_args: list[str] = (), env: dict[str, str] | None = None, timeout: float = 30) -> None:
        """`run -c config.yaml [extra_args]`, then wait for GET /health = 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.env = dict(env or {})
        with self.log_path.open("a") as f:
            f.write(f"===== start {' '.join(extra_args)} env={self.env}\n")
        self.proc = spawn(
            [str(self.bin), "run", "-c", str(self.config_path), *extra_args],
            self.log_path,
            cwd=self.dir,
            env={**os.environ, "RUST_BACKTRACE": "1", **self.env},
        )
        if self not in ACTIVE:
            ACTIVE.append(self)

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"tchap-visio exited with {self.proc.returncode}:\n{log_tail(self.log_path)}")
            try:
                return requests.get(f"{self.url}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for(healthy, timeout, f"tchap-visio /health on {self.url}", interval=0.05)
        synapse_up = self.synapse.proc is not None and self.synapse.proc.poll() is None
        if (self.config.get("encryption") or {}).get("enabled", True) and synapse_up:
            # The bot's device is set up in the background (it needs the homeserver):
            # until its keys are published, nobody can encrypt for it.
            wait_for(lambda: self.bot_devices(), timeout, "the bot's device keys on the homeserver", interval=0.1)

    def observer_token(self) -> str:
        """A token to read public key material with: the appservice's, or (`mode: bot`)
        a throwaway user's."""
        if self.config.get("mode") != "bot":
            return self.as_token
        if not getattr(self, "_observer", None):
            from .synapse import register_user

            register_user(self.synapse.url, self.synapse.shared_secret, "keyobserver", "keyobserver-password")
            r = requests.post(
                f"{self.synapse.url}/_matrix/client/v3/login",
                json={"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "keyobserver"}, "password": "keyobserver-password"},
                timeout=30,
            )
            r.raise_for_status()
            self._observer = r.json()["access_token"]
        return self._observer

    def bot_keys(self) -> dict:
        """The homeserver's keys/query answer for the bot (devices, cross-signing keys)."""
        r = requests.post(
            f"{self.synapse.url}/_matrix/client/v3/keys/query",
            json={"device_keys": {self.bot_user_id: []}},
            headers={"Authorization": f"Bearer {self.observer_token()}"},
            timeout=10,
        )
        r.raise_for_status()
        return r.json()

    def bot_devices(self) -> dict:
        """The bot's devices with their keys, as the homeserver publishes them."""
        return self.bot_keys().get("device_keys", {}).get(self.bot_user_id, {})

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        code = terminate(self.proc, signal.SIGTERM, timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to clean up."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        if self in ACTIVE:
            ACTIVE.remove(self)

    def logs(self) -> str:
        return log_tail(self.log_path, 120)

    # -- HTTP ----------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        r = requests.get(self.metrics_url, timeout=10)
        r.raise_for_status()
        return parse_metrics(r.text)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of `name` over the series whose labels include `labels`; 0 when absent."""
        total = 0.0
        for key, value in self.metrics().items():
            series, _, rest = key.partition("{")
            if series == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += value
        return total

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict | list | None = None,
        *,
        token: str | None = "",
        via: str = "header",
        query_token: str | None = None,
    ) -> requests.Response:
        """Call the service as the homeserver would.

        token: "" (default) = the real hs_token, None = no token at all.
        via: "header" (Authorization: Bearer), "query" (?access_token=), or "both";
        with "both", query_token (default: token) goes in the query string.
        """
        if token == "":
            token = self.hs_token
        headers = {"Content-Type": "application/json"}
        params = {}
        if token is not None and via in ("header", "both"):
            headers["Authorization"] = f"Bearer {token}"
        if token is not None and via in ("query", "both"):
            params["access_token"] = query_token if (via == "both" and query_token is not None) else token
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        return requests.request(method, f"{self.url}{path}", data=data, headers=headers, params=params, timeout=30)

    def put_transaction(self, txn_id: str, body: bytes | dict, **kwargs) -> requests.Response:
        """PUT /_matrix/app/v1/transactions/{txn_id}; a dict body is sent as JSON."""
        return self.request("PUT", f"/_matrix/app/v1/transactions/{txn_id}", body, **kwargs)
