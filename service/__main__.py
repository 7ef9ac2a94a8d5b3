"""``python -m service [--flags]``: one process (``--processes 1``) or a supervisor of N (``service.supervisor``)."""

from __future__ import annotations

import logging
import sys

from service.config import parse_settings
from service.logging import configure_logging

logger = logging.getLogger("service")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    settings = parse_settings(argv)
    if settings.processes > 1:
        from service.supervisor import supervise

        configure_logging(settings.log_format, settings.log_level)
        logger.info("serving on %s:%d with %d front ends and one engine process", settings.host, settings.port,
                    settings.processes)
        raise SystemExit(supervise(settings.processes, argv, arena_mb=settings.ipc_shm_mb))
    # Imported here: a spawned engine process imports this module too, and needs none of the HTTP stack.
    from service.http.http_server import serve

    serve(settings)


if __name__ == "__main__":
    main()
