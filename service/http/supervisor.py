"""``--processes N``: N worker processes, each a whole service (its own models, batchers, event loop),
sharing one port through SO_REUSEPORT (the kernel spreads connections over them).

One Python process parses a few thousand HTTP requests a second, while a GPU classifies tens of
thousands of images; the GPU check measures one process against several (README, "GPU"). Workers are
spawned (never forked: CUDA does not survive a fork), their metrics merge through
prometheus_client's multiprocess mode, and the supervisor forwards SIGTERM/SIGINT (each worker
drains) and SIGHUP (each re-reads its API keys file), restarts a worker that dies (at most once per
``RESTART_BACKOFF_S``) and removes the metrics folder at exit.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType

logger = logging.getLogger("service")

RESTART_BACKOFF_S = 5.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that other workers can bind too, NOT yet listening.

    The kernel spreads new connections over the listening sockets of a SO_REUSEPORT group only: a bound
    socket gets none. uvicorn calls ``listen()`` once the app's startup (which waits for the models) is
    done, so a worker that is loading, or restarting, is never handed a connection it cannot answer;
    while no worker listens, a connection is refused at once instead of waiting on a load.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run_worker(argv: list[str]) -> None:
    """One of --processes N (in a spawned process): the whole service on the shared port."""
    from service.http.server import parse_settings, serve

    settings = parse_settings(argv)
    serve(settings, reuseport_socket(settings.host, settings.port))


def supervise(n: int, argv: list[str], target: Callable[[list[str]], None] = run_worker) -> int:
    """Run ``target(argv)`` in ``n`` spawned processes until SIGTERM/SIGINT; the exit status."""
    ctx = mp.get_context("spawn")
    own_dir = MULTIPROC_ENV not in os.environ
    metrics_dir = os.environ.setdefault(MULTIPROC_ENV, tempfile.mkdtemp(prefix="imgserve-metrics-"))
    stopping = False
    workers: list[BaseProcess] = []
    started: dict[int, float] = {}

    def spawn(slot: int) -> None:
        p = ctx.Process(target=target, args=(argv,), name=f"worker-{slot}", daemon=False)
        p.start()
        started[slot] = time.monotonic()
        if slot < len(workers):
            workers[slot] = p
        else:
            workers.append(p)
        logger.info("worker %d started (pid %s)", slot, p.pid)

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for p in workers:
            if p.is_alive() and p.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)

    def forward_hup(sig: int, frame: FrameType | None) -> None:
        # each worker re-reads its API keys file; the supervisor itself would otherwise die of SIGHUP
        for p in workers:
            if p.is_alive() and p.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    signal.signal(signal.SIGHUP, forward_hup)
    try:
        for slot in range(n):
            spawn(slot)
        while not stopping:
            time.sleep(0.2)
            for slot, p in enumerate(workers):
                if p.is_alive() or stopping:
                    continue
                from service.metrics import mark_process_dead

                mark_process_dead(p.pid or 0)
                logger.error("worker %d (pid %s) exited with %s", slot, p.pid, p.exitcode)
                if time.monotonic() - started[slot] < RESTART_BACKOFF_S:
                    time.sleep(RESTART_BACKOFF_S)  # a worker that dies at start would spin otherwise
                if not stopping:
                    spawn(slot)
        for p in workers:
            p.join()
        # uvicorn re-raises the signal it stopped on once it has drained: that is a clean stop
        clean = {0, -signal.SIGTERM, -signal.SIGINT}
        return max((abs(p.exitcode or 0) for p in workers if p.exitcode not in clean), default=0)
    finally:
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
