"""Element Call (MatrixRTC) seen from a member's client: the homeserver settings it needs,
OpenID tokens, the focus's endpoints (/get_token, /sfu/get, /delegate_delayed_leave,
MSC4195 through the homeserver), call-membership state and delayed events."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import quote

import requests

# The type and application of a MatrixRTC call membership (MSC3401/MSC4143).
CALL_MEMBER = "org.matrix.msc3401.call.member"
ROOM_SLOT = "m.call#ROOM"
_RELAXED = {"per_second": 1000, "burst_count": 1000}


def synapse_config(service) -> dict:
    """Extra homeserver.yaml for MatrixRTC with `service` as the LiveKit focus: MSC4143
    transports, the MSC4512 proxy (MSC4195 tokens), MSC4502 membership checks, sticky
    events, delayed events (MSC4140). For Env(..., synapse_config=synapse_config)."""
    return {
        "experimental_features": {
            "msc4143_enabled": True,
            "msc4512_enabled": True,
            "msc4502_enabled": True,
            "msc4354_enabled": True,
        },
        "matrix_rtc": {"transports": [{"type": "livekit", "livekit_service_url": service.url}]},
        "max_event_delay_duration": "24h",
        "rc_delayed_event_mgmt": _RELAXED,
    }


def alias(*parts: str) -> str:
    """Unpadded standard base64 of the SHA-256 of the compact JSON array of `parts`: how
    the focus names LiveKit rooms and identities (as lk-jwt-service does)."""
    text = json.dumps(list(parts), separators=(",", ":"), ensure_ascii=False)
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode().rstrip("=")


def claims(jwt: str) -> dict:
    """A JWT's payload, not verified."""
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def auth(user) -> dict[str, str]:
    return {"Authorization": f"Bearer {user.client.access_token}"}


def openid_token(synapse_url: str, user) -> dict:
    """A fresh OpenID token of `user` (a MatrixUser): {access_token, token_type,
    matrix_server_name, expires_in}."""
    r = requests.post(
        f"{synapse_url}/_matrix/client/v3/user/{quote(user.user_id)}/openid/request_token",
        headers=auth(user),
        json={},
        timeout=10,
    )
    r.raise_for_status()
    return r.json()


def get_token_body(
    synapse_url: str, user, room_id: str, slot_id: str = ROOM_SLOT, member_id: str = "member0", **extra: Any
) -> dict:
    """The body of a POST /get_token for `user`'s own device (extra: delay_id, ...)."""
    return {
        "room_id": room_id,
        "slot_id": slot_id,
        "openid_token": openid_token(synapse_url, user),
        "member": {"id": member_id, "claimed_user_id": user.user_id, "claimed_device_id": user.device_id},
        **extra,
    }


def post(url: str, body: Any, **kwargs) -> requests.Response:
    """POST a JSON value (or raw bytes) to `url`."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    return requests.post(url, data=data, headers=headers, timeout=kwargs.pop("timeout", 20), **kwargs)


def call_state_key(user) -> str:
    """The state key of `user`'s own device's membership of the room-wide call."""
    return f"_{user.user_id}_{user.device_id}_m.call"


def membership_content(user, focus_url: str) -> dict:
    """A membership as Element Call sends it (legacy per-device form)."""
    return {
        "application": "m.call",
        "call_id": "",
        "scope": "m.room",
        "device_id": user.device_id,
        "expires": 14400000,
        "focus_active": {"type": "livekit", "focus_selection": "oldest_membership"},
        "foci_preferred": [{"type": "livekit", "livekit_service_url": focus_url}],
    }


def state_url(synapse_url: str, room_id: str, event_type: str, state_key: str) -> str:
    return f"{synapse_url}/_matrix/client/v3/rooms/{quote(room_id)}/state/{quote(event_type)}/{quote(state_key, safe='')}"


def put_state(synapse_url: str, user, room_id: str, event_type: str, state_key: str, content: dict, delay_ms: int | None = None) -> dict:
    """PUT a state event; with delay_ms, a delayed one (MSC4140): returns {delay_id}."""
    params = {"org.matrix.msc4140.delay": str(delay_ms)} if delay_ms is not None else {}
    r = requests.put(state_url(synapse_url, room_id, event_type, state_key), headers=auth(user), params=params, json=content, timeout=10)
    assert r.status_code == 200, f"PUT state {event_type}/{state_key}: {r.status_code} {r.text}"
    return r.json()


def get_state(synapse_url: str, user, room_id: str, event_type: str, state_key: str) -> dict | None:
    """The state event's content, None when there is none."""
    r = requests.get(state_url(synapse_url, room_id, event_type, state_key), headers=auth(user), timeout=10)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.json()
