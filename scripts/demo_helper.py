"""Matrix-side steps of scripts/demo.sh: configs, health waits, the demo user and room.

Run with the venv's Python (scripts/setup-venv.sh); reuses the test harness's
Synapse configuration so the demo and the tests run the same homeserver set-up.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path
from urllib.parse import quote

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from harness import synapse  # noqa: E402
from harness.service import ensure_registration_extras  # noqa: E402


def set_yaml_values(text: str, values: dict[tuple[str, ...], object]) -> str:
    """Replace the scalar at each key path in block-style YAML, keeping comments."""
    lines = text.splitlines(keepends=True)
    stack: list[tuple[int, str]] = []
    found = set()
    for i, line in enumerate(lines):
        stripped = line.lstrip(" ")
        if not stripped.strip() or stripped.startswith("#") or ":" not in stripped:
            continue
        indent = len(line) - len(stripped)
        key = stripped.split(":", 1)[0].strip().strip("\"'")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
        path = tuple(k for _, k in stack)
        if path in values:
            lines[i] = f"{' ' * indent}{key}: {yaml.safe_dump(values[path], default_flow_style=True).strip().removesuffix('...').strip()}\n"
            found.add(path)
    missing = set(values) - found
    if missing:
        raise SystemExit(f"keys not found in the example config: {sorted(missing)}")
    out = "".join(lines)
    loaded = yaml.safe_load(out)
    for path, value in values.items():
        node = loaded
        for k in path:
            node = node[k]
        assert node == value, (path, node, value)
    return out


def cmd_write_config(args) -> None:
    text = Path(args.example).read_text()
    out = set_yaml_values(
        text,
        {
            ("homeserver", "address"): args.homeserver,
            ("homeserver", "domain"): "localhost",
            ("appservice", "address"): f"http://127.0.0.1:{args.port}",
            ("appservice", "hostname"): "127.0.0.1",
            ("appservice", "port"): args.port,
            ("appservice", "public_address"): f"http://127.0.0.1:{args.port}",
            ("database", "uri"): args.database,
            ("sfu", "udp_port"): args.udp_port,
            ("sfu", "tcp_port"): args.tcp_port,
            # The demo's meetings let anyone with the link in (two browser tabs, no
            # moderator at hand); `!visio accès confiance` in the room tries the lobby.
            ("meetings", "default_access"): "public",
        },
    )
    Path(args.out).write_text(out)


def cmd_primary_ip(args) -> None:
    """The address tchap-visio announces for media besides 127.0.0.1 (src/app.rs does the
    same: the source address of the default route; a UDP connect sends nothing)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("198.51.100.1", 9))
            ip = s.getsockname()[0]
        except OSError:
            ip = ""
    print("" if ip in ("", "0.0.0.0") or ip.startswith("127.") else ip)


def cmd_synapse_config(args) -> None:
    data = Path(args.dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    secret_file = data / "registration_shared_secret"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_hex(24))
    registration = Path(args.registration).resolve()
    ensure_registration_extras(registration)
    config = synapse.write_config(data, args.port, secret_file.read_text().strip(), [registration])
    if not (data / "signing.key").exists():
        synapse.generate_keys(config)


def wait_health(url: str, timeout: float, pid_alive) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if not pid_alive():
            raise SystemExit(f"the process behind {url} exited")
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer 200 within {timeout:g} s")


def cmd_wait_health(args) -> None:
    import os

    def alive() -> bool:
        try:
            os.kill(args.pid, 0)
            return True
        except ProcessLookupError:
            return False

    wait_health(args.url, args.timeout, alive)


class Client:
    def __init__(self, homeserver: str, token: str | None = None):
        self.base = homeserver.rstrip("/") + "/_matrix/client/v3"
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, self.base + path, timeout=30, **kwargs)

    def membership(self, room_id: str, user_id: str) -> dict:
        r = self.call("GET", f"/rooms/{quote(room_id)}/state/m.room.member/{quote(user_id)}")
        return r.json() if r.status_code == 200 else {}


def call_and_wait_for_link(client: Client, room_id: str, bot: str, title: str, deadline: float) -> str:
    """Sends `!visio <title>` as the demo user; returns the link in the bot's answer (a new
    meeting, or the one still open from an earlier run)."""
    import re
    import secrets

    txn = secrets.token_hex(8)
    r = client.call(
        "PUT",
        f"/rooms/{quote(room_id)}/send/m.room.message/{txn}",
        json={"msgtype": "m.text", "body": f"!visio {title}".strip()},
    )
    r.raise_for_status()
    sent = r.json()["event_id"]
    link = re.compile(r"https?://\S+/m/[A-Za-z0-9]+")
    while time.monotonic() < deadline:
        # Newest first, down to our own message: an answer from the bot with a link.
        r = client.call("GET", f"/rooms/{quote(room_id)}/messages", params={"dir": "b", "limit": 20})
        r.raise_for_status()
        for event in r.json().get("chunk", []):
            if event.get("event_id") == sent:
                break
            body = event.get("content", {}).get("body", "")
            if event.get("sender") == bot and (m := link.search(body)):
                return m.group(0)
        time.sleep(0.2)
    raise SystemExit(f"the bot did not answer '!visio {title}' with a link in time")


def cmd_setup_room(args) -> None:
    data = Path(args.synapse_dir)
    secret = (data / "registration_shared_secret").read_text().strip()
    user_id = synapse.register_user(args.homeserver, secret, args.user, args.password)
    r = requests.post(
        args.homeserver.rstrip("/") + "/_matrix/client/v3/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": args.user},
            "password": args.password,
            "initial_device_display_name": "demo.sh",
        },
        timeout=30,
    )
    r.raise_for_status()
    client = Client(args.homeserver, r.json()["access_token"])
    try:
        room_file = Path(args.room_file)
        room_id = room_file.read_text().strip() if room_file.exists() else ""
        if room_id and client.membership(room_id, user_id).get("membership") != "join":
            room_id = ""
        if not room_id:
            r = client.call("POST", "/createRoom", json={"name": args.room_name, "preset": "private_chat"})
            r.raise_for_status()
            room_id = r.json()["room_id"]
            room_file.write_text(room_id + "\n")

        if client.membership(room_id, args.bot).get("membership") not in ("join", "invite"):
            r = client.call("POST", f"/rooms/{quote(room_id)}/invite", json={"user_id": args.bot})
            r.raise_for_status()
        deadline = time.monotonic() + args.timeout
        while True:
            member = client.membership(room_id, args.bot)
            if member.get("membership") == "join":
                break
            if member.get("membership") == "leave":
                raise SystemExit(f"{args.bot} refused the invite: {member.get('reason', '(no reason)')}")
            if time.monotonic() > deadline:
                raise SystemExit(f"{args.bot} did not join {room_id} within {args.timeout:g} s")
            time.sleep(0.2)
        print(room_id)
        if args.call is not None:
            print(call_and_wait_for_link(client, room_id, args.bot, args.call, deadline + args.timeout))
    finally:
        client.call("POST", "/logout", json={})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(required=True)

    p = sub.add_parser("write-config", help="tchap-visio config.yaml from the example")
    p.add_argument("--example", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--homeserver", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--database", required=True)
    p.add_argument("--udp-port", type=int, default=7882)
    p.add_argument("--tcp-port", type=int, default=7881)
    p.set_defaults(func=cmd_write_config)

    p = sub.add_parser("primary-ip", help="this machine's address on the default route, or nothing")
    p.set_defaults(func=cmd_primary_ip)

    p = sub.add_parser("synapse-config", help="homeserver.yaml, log config and signing key")
    p.add_argument("--dir", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--registration", required=True)
    p.set_defaults(func=cmd_synapse_config)

    p = sub.add_parser("wait-health", help="wait for GET URL = 200 while PID lives")
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60)
    p.set_defaults(func=cmd_wait_health)

    p = sub.add_parser("setup-room", help="demo user, its room, the bot invited and joined")
    p.add_argument("--homeserver", required=True)
    p.add_argument("--synapse-dir", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--room-name", required=True)
    p.add_argument("--room-file", required=True)
    p.add_argument("--bot", required=True)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--call", help="then send '!visio CALL' and print the link the bot posts")
    p.set_defaults(func=cmd_setup_room)

    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
