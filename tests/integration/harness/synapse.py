"""A throwaway Synapse homeserver (server_name `localhost`) from the venv."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import subprocess
import sys
from pathlib import Path

import requests
import yaml

from .util import ACTIVE, free_port, log_tail, spawn, terminate, wait_for

SERVER_NAME = "localhost"

_RELAXED = {"per_second": 1000, "burst_count": 1000}


def homeserver_config(
    data_dir: Path,
    port: int,
    shared_secret: str,
    app_service_config_files: list[Path],
    server_name: str = SERVER_NAME,
) -> dict:
    """homeserver.yaml for a local test/demo Synapse on SQLite, rate limits relaxed."""
    data_dir = Path(data_dir).resolve()
    return {
        "server_name": server_name,
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": str(data_dir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client", "openid"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(data_dir / "homeserver.db")}},
        "log_config": str(data_dir / "log.config"),
        "media_store_path": str(data_dir / "media_store"),
        "signing_key_path": str(data_dir / "signing.key"),
        "registration_shared_secret": shared_secret,
        "enable_registration_without_verification": True,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "report_stats": False,
        "enable_metrics": False,
        "url_preview_enabled": False,
        # Presence adds ephemeral traffic to the appservice that no test wants yet.
        "presence": {"enabled": False},
        "app_service_config_files": [str(Path(p).resolve()) for p in app_service_config_files],
        # As Tchap: invites show the room's access rule (a direct room holds two people).
        "room_prejoin_state": {"additional_event_types": ["im.vector.room.access_rules"]},
        # Appservice devices are kept (element-hq/synapse#18161).
        "track_appservice_user_ips": True,
        "experimental_features": {
            "msc2409_to_device_messages_enabled": True,
            "msc3202_transaction_extensions": True,
        },
        "rc_message": _RELAXED,
        "rc_registration": _RELAXED,
        "rc_login": {"address": _RELAXED, "account": _RELAXED, "failed_attempts": _RELAXED},
        "rc_joins": {"local": _RELAXED, "remote": _RELAXED},
        "rc_joins_per_room": _RELAXED,
        "rc_invites": {"per_room": _RELAXED, "per_user": _RELAXED, "per_issuer": _RELAXED},
        "rc_room_creation": _RELAXED,
        "rc_presence": {"per_user": _RELAXED},
        "rc_profile": _RELAXED,
    }


def merge_config(base: dict, extra: dict) -> dict:
    """`base` with `extra` merged in: nested dicts merged key by key, anything else replaced."""
    out = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config(out[key], value)
        else:
            out[key] = value
    return out


def log_config(log_file: Path) -> dict:
    return {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s %(name)s %(levelname)s %(request)s %(message)s"}},
        "filters": {"context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(Path(log_file).resolve()),
                "formatter": "precise",
                "filters": ["context"],
            }
        },
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def write_config(
    data_dir: Path, port: int, shared_secret: str, app_service_config_files: list[Path], extra_config: dict | None = None
) -> Path:
    """Write homeserver.yaml and log.config into data_dir; return homeserver.yaml's path.

    extra_config is merged into homeserver_config()'s (see merge_config)."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "log.config").write_text(yaml.safe_dump(log_config(data_dir / "homeserver.log")))
    path = data_dir / "homeserver.yaml"
    cfg = merge_config(homeserver_config(data_dir, port, shared_secret, app_service_config_files), extra_config or {})
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def generate_keys(config_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "synapse.app.homeserver", "-c", str(config_path), "--generate-keys"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=120,
    )


def register_user(url: str, shared_secret: str, name: str, password: str, admin: bool = False) -> str:
    """Register `name` through the shared-secret admin API; an existing user is fine.

    Returns the full user ID.
    """
    endpoint = f"{url}/_synapse/admin/v1/register"
    nonce = requests.get(endpoint, timeout=30).json()["nonce"]
    mac = hmac.new(shared_secret.encode(), digestmod=hashlib.sha1)
    mac.update(b"\x00".join([nonce.encode(), name.encode(), password.encode(), b"admin" if admin else b"notadmin"]))
    r = requests.post(
        endpoint,
        json={"nonce": nonce, "username": name, "password": password, "admin": admin, "mac": mac.hexdigest()},
        timeout=30,
    )
    if r.status_code == 400 and r.json().get("errcode") == "M_USER_IN_USE":
        return f"@{name}:{SERVER_NAME}"
    r.raise_for_status()
    return r.json()["user_id"]


class Synapse:
    """One Synapse process with its data in `workdir`; start() and stop() may repeat."""

    name = "synapse"

    def __init__(self, workdir: Path, port: int | None = None, extra_config: dict | None = None):
        """extra_config: merged into the generated homeserver.yaml at each start() (nested
        dicts key by key, see merge_config); also settable later through `extra_config`."""
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server_name = SERVER_NAME
        self.shared_secret = secrets.token_hex(16)
        self.app_service_files: list[Path] = []
        self.config_path = self.dir / "homeserver.yaml"
        self.log_path = self.dir / "homeserver.log"
        self.proc: subprocess.Popen | None = None
        self.extra_config: dict = dict(extra_config or {})

    def add_appservice(self, registration: Path) -> None:
        """Load this registration at the next start()."""
        self.app_service_files.append(Path(registration))

    def start(self, timeout: float = 60) -> None:
        write_config(self.dir, self.port, self.shared_secret, self.app_service_files, self.extra_config)
        if not (self.dir / "signing.key").exists():
            generate_keys(self.config_path)
        self.proc = spawn(
            [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config_path)],
            self.dir / "stdout.log",
            cwd=self.dir,
        )
        if self not in ACTIVE:
            ACTIVE.append(self)

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Synapse exited with {self.proc.returncode}:\n{log_tail(self.dir / 'stdout.log')}\n"
                    f"{log_tail(self.log_path)}"
                )
            try:
                return requests.get(f"{self.url}/health", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        try:
            wait_for(healthy, timeout, f"Synapse /health on {self.url}", interval=0.1)
        except RuntimeError as e:
            raise AssertionError(str(e)) from None

    def stop(self, timeout: float = 30) -> None:
        if self.proc is not None:
            terminate(self.proc, timeout=timeout)
            self.proc = None

    def close(self) -> None:
        self.stop()
        if self in ACTIVE:
            ACTIVE.remove(self)

    def register_user(self, name: str, password: str, admin: bool = False) -> str:
        return register_user(self.url, self.shared_secret, name, password, admin)

    def logs(self) -> str:
        return log_tail(self.log_path, 60)
