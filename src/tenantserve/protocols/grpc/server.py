"""The OIP v2 gRPC listener: grpc.aio on the HTTP server's event loop, beside HTTP.

build_app makes a :class:`GrpcServer` when ``--grpc-port`` is given; the app's lifespan starts
it (the grpc.aio server is made then, on the loop that serves HTTP) and stops it. What each
RPC does is servicer.py's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from tenantserve.protocols.auth import Access
from tenantserve.protocols.grpc._generated.grpc_service_pb2_grpc import (
    add_GRPCInferenceServiceServicer_to_server,
)
from tenantserve.protocols.grpc.servicer import OipServicer

if TYPE_CHECKING:
    from tenantserve.metrics import Metrics
    from tenantserve.service import InferenceService

log = logging.getLogger(__name__)


class GrpcServer:
    """The gRPC listener: built by build_app, started and stopped in the app's lifespan (the
    grpc.aio server is made in :meth:`start`, on the loop that serves HTTP)."""

    def __init__(
        self,
        service: InferenceService,
        metrics: Metrics,
        *,
        access: Access,
        host: str,
        port: int,
        max_body_bytes: int,
        version: str,
    ) -> None:
        self._servicer = OipServicer(service, metrics, access, version)
        self._address = _address(host, port)
        self._host = host
        self._options = [
            # The HTTP body limit; gRPC refuses a larger message itself (RESOURCE_EXHAUSTED).
            ("grpc.max_receive_message_length", max_body_bytes),
            # grpc binds with SO_REUSEPORT by default: a port in use would be shared, silently.
            ("grpc.so_reuseport", 0),
        ]
        self._server: grpc.aio.Server | None = None

    async def start(self) -> int:
        """Listen and serve; returns the port (the one chosen when the setting is 0).

        Raises:
            OSError: the address cannot be bound (a port in use, an unknown host).
        """
        server = grpc.aio.server(options=self._options)
        add_GRPCInferenceServiceServicer_to_server(self._servicer, server)
        try:
            port = server.add_insecure_port(self._address)
        except RuntimeError as exc:
            await server.stop(None)
            raise OSError(
                f"gRPC cannot listen on {self._address} ({exc}); is the port in use? choose "
                "another --grpc-port"
            ) from None
        await server.start()
        self._server = server
        log.info("OIP gRPC service listening on %s", _address(self._host, port))
        return port

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, give calls in flight ``grace_s`` to finish, cancel the rest."""
        if self._server is not None:
            await self._server.stop(max(0.0, grace_s))
            self._server = None


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
