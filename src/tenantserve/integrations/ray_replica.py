"""What one Ray Serve replica runs, without Ray: the app for its name and rank, its stats, health.

``ray_serve.TenantServeReplica`` holds one of these and forwards Serve's hooks to it, so the
logic is tested in-process and the Serve class stays a thin shell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tenantserve.app import build_app
from tenantserve.config import Settings
from tenantserve.integrations.ray_affinity import pins_for_rank, routing_stats

REPLICA_HEADER = "X-Tenantserve-Replica"
"""Response header naming the Serve replica that answered (its unique id)."""


class ReplicaHeader:
    """Pure ASGI wrapper: adds :data:`REPLICA_HEADER` to every HTTP response."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self._app = app
        self._header = (REPLICA_HEADER.lower().encode(), replica.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), self._header]}
            await send(message)

        await self._app(scope, receive, send_named)


class ReplicaServer:
    """The whole tenantserve app of one replica, with its own cache and budget."""

    def __init__(
        self, settings: Mapping[str, Any], min_copies: Mapping[str, int], spread: int
    ) -> None:
        self._values = dict(settings)
        self._min_copies = dict(min_copies)
        self._spread = spread
        self._app: Starlette | None = None
        self._budget_bytes = 0

    def build(self, name: str, rank: int) -> ASGIApp:
        """The app for replica ``name``: it pins its share of warm copies, by ``rank``."""
        settings = Settings(**self._values)
        pins = pins_for_rank(self._min_copies, rank, self._spread)
        settings = settings.model_copy(
            update={
                "pin": tuple(dict.fromkeys((*settings.pin, *pins))),
                # A disk copy folder is owned by one process (DiskCache), so one each.
                "cache_dir": settings.cache_dir / f"replica-{name}",
            }
        )
        self._app = build_app(settings)
        self._budget_bytes = settings.memory_budget
        return ReplicaHeader(self._app, name)

    def routing_stats(self) -> dict[str, Any]:
        """Resident model ids and free budget bytes, for the routers (empty before build)."""
        if self._app is None:
            return {}
        return routing_stats(self._app.state.service.resident(), self._budget_bytes)

    def check_health(self) -> None:
        if self._app is not None and not self._app.state.service.ready():
            raise RuntimeError("replica is not accepting requests")
