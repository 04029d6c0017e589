"""A Synapse + tchap-visio pair with users: what most tests run against."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .matrix import MatrixUser
from .service import Service
from .synapse import Synapse, merge_config

PASSWORD = "correct-horse-battery-staple"


class Env:
    """Synapse and tchap-visio started in that order, sharing `workdir`.

    service_kwargs go to Service (database_uri, permissions, language, overrides);
    service_env is the environment the service starts with (TCHAP_VISIO_* overrides);
    synapse_config is extra homeserver.yaml merged into the harness's (harness.synapse.
    merge_config): a dict, or a callable given the Service (its URL, registration) that
    returns one, called after the Service is set up and before Synapse starts.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        service_env: dict[str, str] | None = None,
        bot_account: str | None = None,
        synapse_config: dict | Callable[[Service], dict] | None = None,
        **service_kwargs,
    ):
        """bot_account: run the service in `mode: bot` as this ordinary user (registered
        here like any other), with no appservice registration at the homeserver."""
        self.dir = Path(workdir)
        self.synapse = Synapse(self.dir / "synapse")
        self.service: Service | None = None
        self.users: dict[str, MatrixUser] = {}
        try:
            if bot_account:
                overrides = dict(service_kwargs.pop("overrides", None) or {})
                overrides["mode"] = "bot"
                overrides["bot_account"] = {"user_id": f"@{bot_account}:localhost", "password": PASSWORD}
                service_kwargs["overrides"] = overrides
                service_kwargs["appservice"] = False
            self.service = Service(self.dir / "service", self.synapse, **service_kwargs)
            if synapse_config is not None:
                extra = synapse_config(self.service) if callable(synapse_config) else synapse_config
                self.synapse.extra_config = merge_config(self.synapse.extra_config, extra)
            self.synapse.start()
            if bot_account:
                self.synapse.register_user(bot_account, PASSWORD)
            self.service.start(env=service_env)
        except BaseException:
            self.close()
            raise

    @property
    def bot(self) -> str:
        return self.service.bot_user_id

    def user(self, localpart: str) -> MatrixUser:
        """A registered, logged-in client for @localpart:localhost (one per name)."""
        if localpart not in self.users:
            user_id = self.synapse.register_user(localpart, PASSWORD)
            self.users[localpart] = MatrixUser(self.synapse.url, user_id, PASSWORD)
        return self.users[localpart]

    def e2ee_user(self, localpart: str, device: str = "main") -> MatrixUser:
        """Like user(), with a client that encrypts (matrix-nio with its own key store);
        one per name and device, each its own Matrix device."""
        key = f"{localpart}/{device}"
        if key not in self.users:
            user_id = self.synapse.register_user(localpart, PASSWORD)
            store = self.dir / "e2ee" / localpart / device
            store.mkdir(parents=True, exist_ok=True)
            self.users[key] = MatrixUser(self.synapse.url, user_id, PASSWORD, store_path=str(store), device_name=device)
        return self.users[key]

    def room_with_bot(self, owner: str = "alice", **kwargs) -> tuple[MatrixUser, str]:
        """`owner` creates a room and invites the bot; returns once the bot has joined."""
        user = self.user(owner)
        room_id = user.create_room(**kwargs)
        user.invite(room_id, self.bot)
        user.wait_membership(room_id, self.bot, "join")
        return user, room_id

    def close(self) -> None:
        for u in self.users.values():
            u.close()
        self.users.clear()
        if self.service is not None:
            self.service.close()
        self.synapse.close()
