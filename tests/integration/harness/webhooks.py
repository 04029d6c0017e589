"""A webhook receiver for tests: a small HTTP server on 127.0.0.1 that checks the
signature of every request it gets (as docs/admin.md tells receivers to) and records
each one. It can be told to refuse the first attempts of every delivery, to exercise
retries.

    with WebhookReceiver(fail_first=1) as hook:
        env = Env(..., overrides={"webhooks": [hook.config()]})
        ...
        hook.wait_accepted(lambda ds: ..., timeout=20, what="...")
        assert hook.bad_signatures == []
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from .util import wait_for

EVENT_HEADER = "X-Tchap-Visio-Event"
DELIVERY_HEADER = "X-Tchap-Visio-Delivery"
SIGNATURE_HEADER = "X-Tchap-Visio-Signature"
# Largest request the receiver reads (events are small; a bigger one is a bug).
MAX_BODY = 1 << 20


def verify(secret: bytes, header: str, body: bytes, tolerance_s: int = 300) -> bool:
    """True if `header` (X-Tchap-Visio-Signature) signs `body` with `secret`.

    The same code as the snippet in docs/admin.md (test_bot_api runs that one too).
    """
    try:
        parts = dict(item.split("=", 1) for item in header.split(","))
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - t) > tolerance_s:
        return False
    expected = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, parts.get("v1", ""))


@dataclass
class Delivery:
    """One request the receiver got."""

    event: str
    delivery_id: str
    signature: str
    raw: bytes
    status: int  # what the receiver answered
    at: float = field(default_factory=time.monotonic)

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.raw)


class WebhookReceiver:
    """Listens on 127.0.0.1:<free port>/hook until close()."""

    def __init__(self, secret: str | None = None, fail_first: int = 0):
        """fail_first: how many attempts of each delivery (by delivery id) get a 500."""
        self.secret = secret or secrets.token_hex(32)
        self.fail_first = fail_first
        self.lock = threading.Lock()
        self.requests: list[Delivery] = []
        self.bad_signatures: list[Delivery] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(min(length, MAX_BODY))
                signature = self.headers.get(SIGNATURE_HEADER, "")
                ok = self.path == "/hook" and verify(receiver.secret.encode(), signature, raw)
                delivery_id = self.headers.get(DELIVERY_HEADER, "")
                with receiver.lock:
                    seen = sum(1 for d in receiver.requests if d.delivery_id == delivery_id)
                    status = 401 if not ok else (500 if seen < receiver.fail_first else 204)
                    delivery = Delivery(
                        event=self.headers.get(EVENT_HEADER, ""),
                        delivery_id=delivery_id,
                        signature=signature,
                        raw=raw,
                        status=status,
                    )
                    receiver.requests.append(delivery)
                    if not ok:
                        receiver.bad_signatures.append(delivery)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # keep pytest's output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="webhook-receiver", daemon=True)
        self.thread.start()

    def config(self) -> dict[str, str]:
        """This receiver's entry for the service's `webhooks` config list."""
        return {"url": self.url, "secret": self.secret}

    def all(self) -> list[Delivery]:
        with self.lock:
            return list(self.requests)

    def accepted(self, event: str | None = None) -> list[Delivery]:
        """Requests answered 2xx (so not sent again), optionally of one event type."""
        return [d for d in self.all() if 200 <= d.status < 300 and (event is None or d.event == event)]

    def events_once(self) -> list[dict[str, Any]]:
        """Bodies of the accepted events, oldest first, after checking that every request
        was correctly signed and that no event was accepted twice (a retry after a 2xx
        would be a duplicate). For end-to-end tests: assert on the types and data."""
        assert self.bad_signatures == [], f"badly signed deliveries: {self.bad_signatures}"
        bodies = [d.body for d in self.accepted()]
        ids = [b["id"] for b in bodies]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        assert not duplicates, f"events accepted more than once: {duplicates}"
        return sorted(bodies, key=lambda b: b["created_at"])

    def wait_accepted(self, done: Callable[[list[Delivery]], Any], timeout: float, what: str) -> Any:
        """Wait until done(accepted deliveries) is truthy; returns its value."""
        return wait_for(lambda: done(self.accepted()), timeout, what, interval=0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "WebhookReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
