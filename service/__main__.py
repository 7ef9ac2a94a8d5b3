"""``python -m service [--flags]``: one process (``--processes 1``) or a supervisor of N (``http.supervisor``)."""

from __future__ import annotations

import logging
import sys

from service.http.server import parse_settings, serve
from service.logging import configure_logging

logger = logging.getLogger("service")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    settings = parse_settings(argv)
    if settings.processes > 1:
        from service.http.supervisor import supervise

        configure_logging(settings.log_format, settings.log_level)
        logger.info("serving on %s:%d with %d worker processes", settings.host, settings.port, settings.processes)
        raise SystemExit(supervise(settings.processes, argv))
    serve(settings)


if __name__ == "__main__":
    main()
