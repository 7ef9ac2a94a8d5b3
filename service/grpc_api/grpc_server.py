"""The gRPC server of one front end: started in the HTTP app's lifespan (same event loop), health kept
in step with readiness, stopped gracefully on SIGTERM (no new RPCs; in-flight ones finish)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2_grpc

from service.access import AccessControl
from service.engine.client import EngineClient
from service.errors import ConfigError
from service.grpc_api.servicer import InferenceServicer

logger = logging.getLogger("service.grpc")

SERVICE = "inference.GRPCInferenceService"
HEALTH_EVERY_S = 0.5
#: headroom over --max-upload-bytes for a message's framing and the tensor metadata
MESSAGE_HEADROOM = 1 << 20


class _Health(health.aio.HealthServicer):
    """grpc.health.v1 whose Check answers readiness as of the call (Watch follows ``_keep_health``)."""

    def __init__(self, client: EngineClient) -> None:
        super().__init__()
        self.client = client

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> Any:  # noqa: N802
        if request.service in ("", SERVICE):
            ok = self.client.readiness()[0]
            return health_pb2.HealthCheckResponse(
                status=health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING)
        return await super().Check(request, context)


class GrpcServer:
    def __init__(self, client: EngineClient, access: AccessControl) -> None:
        self.client = client
        s = client.settings
        limit = s.max_upload_bytes + MESSAGE_HEADROOM
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.so_reuseport", 1),  # the front ends of --processes N share the port, as for HTTP
        ])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(client, access), self.server)
        self.health = _Health(client)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"{'[' + s.host + ']' if ':' in s.host else s.host}:{s.grpc_port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as e:
            raise ConfigError(f"--grpc-port {s.grpc_port}: cannot listen on {address} ({e}); choose a free "
                              "port or 0 to turn gRPC off") from e
        self._watch: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        self._watch = asyncio.get_running_loop().create_task(self._keep_health())
        logger.info("gRPC (KServe v2, grpc.health.v1) on port %d", self.port)

    async def _keep_health(self) -> None:
        serving = None
        while True:
            ok = self.client.readiness()[0]
            if ok is not serving:
                status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                for name in ("", SERVICE):
                    await self.health.set(name, status)
                serving = ok
            await asyncio.sleep(HEALTH_EVERY_S)

    def drain(self, grace_s: float) -> None:
        """At SIGTERM: refuse new RPCs at once, let in-flight ones run up to ``grace_s``."""
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_task(self._stop(grace_s))

    async def _stop(self, grace_s: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)

    async def close(self, grace_s: float) -> None:
        self.drain(grace_s)
        assert self._stopping is not None
        await self._stopping
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
