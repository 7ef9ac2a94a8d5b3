"""One HTTP server process: settings from the command line, the app, uvicorn with the connection guard,
and the drain on SIGTERM (readiness 503 at once, then in-flight requests finish)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.config import Settings
from service.errors import ConfigError
from service.http.app import create_app
from service.http.connections import ConnectionGuard, connection_caps, guarded_protocol, raise_fd_limit
from service.logging import configure_logging

logger = logging.getLogger("service")


class _Server(uvicorn.Server):
    """On SIGTERM/SIGINT, readiness turns 503 at once; uvicorn then finishes in-flight requests."""

    shutdown_delay_s = 0.0
    _exit_scheduled = False

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app  # ours, not uvicorn's wrapped ``config.loaded_app``

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.state.client.draining = True
        grpc_server = self.app.state.grpc
        if grpc_server is not None:  # no new RPCs from now on; in-flight ones finish
            grpc_server.drain(self.config.timeout_graceful_shutdown or 30.0)
        delay = self.shutdown_delay_s if not self.should_exit and not self._exit_scheduled else 0.0
        logger.info("signal %s: draining (readiness 503) for %.1f s, then finishing in-flight requests", sig, delay)
        if delay > 0:
            self._exit_scheduled = True
            asyncio.get_running_loop().call_later(delay, super().handle_exit, sig, frame)
        else:
            super().handle_exit(sig, frame)


def serve(settings: Settings, sock: socket.socket | None = None) -> None:
    configure_logging(settings.log_format, settings.log_level)
    try:
        app = create_app(settings)
    except ConfigError as e:
        print(f"error: {e.message}", file=sys.stderr)
        raise SystemExit(2) from None
    total, per_client = connection_caps(raise_fd_limit(), settings.max_connections,
                                        settings.max_connections_per_client)
    guard = ConnectionGuard(total, per_client, settings.header_timeout_s, app.state.client.metrics)
    logger.info("connections: %s; request bodies at >= %g bytes/s after %g s, %d bytes in flight at most",
                guard.describe(), settings.body_min_rate, settings.body_timeout_s, settings.max_body_bytes_in_flight)
    config = uvicorn.Config(
        app,
        http=guarded_protocol(guard),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        backlog=2048,
    )
    server = _Server(config, app)
    server.shutdown_delay_s = settings.shutdown_delay_s
    server.run(sockets=[sock] if sock is not None else None)
