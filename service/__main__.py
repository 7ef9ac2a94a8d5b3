"""``python -m service [--flags]``: configure logging once, serve with uvicorn, drain on SIGTERM."""

from __future__ import annotations

import logging
import sys

import uvicorn

from service.app import create_app
from service.config import Settings
from service.logging import configure_logging

logger = logging.getLogger("service")


class _Server(uvicorn.Server):
    """On SIGTERM/SIGINT, readiness turns 503 at once; uvicorn then finishes in-flight requests."""

    def handle_exit(self, sig: int, frame: object) -> None:
        app = self.config.loaded_app
        # loaded_app may be wrapped by uvicorn's middlewares; find our FastAPI state through them.
        while app is not None and not hasattr(app, "state"):
            app = getattr(app, "app", None)
        if app is not None:
            app.state.draining = True
        logger.info("signal %s: draining (readiness 503), finishing in-flight requests", sig)
        super().handle_exit(sig, frame)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    settings = Settings(_cli_parse_args=sys.argv[1:] if argv is None else argv)
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.graceful_timeout_s),
        backlog=2048,
    )
    _Server(config).run()


if __name__ == "__main__":
    main()
