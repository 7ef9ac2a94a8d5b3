"""``--processes N``: N HTTP front ends sharing one port through SO_REUSEPORT (the kernel spreads
connections over them) and ONE engine process that owns the models, batchers and runtimes
(docs/guides/process-model.md; ``service.engine.process``), so one batcher sees all the traffic and a GPU has one
context. They talk over a Unix socket and shared memory in a private IPC folder.

Processes are spawned (never forked: CUDA does not survive a fork); their metrics merge through
prometheus_client's multiprocess mode. The supervisor forwards SIGTERM/SIGINT to the front ends (each
drains), then stops the engine; SIGHUP reaches the front ends (each re-reads its API keys file). A
process that dies is restarted alone (at most once per ``RESTART_BACKOFF_S``); the folders are removed
at exit.
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
#: the Settings field ``ipc_dir`` as the supervisor hands it to its children
IPC_ENV = "IMGSERVE_IPC_DIR"


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that the other front ends can bind too, NOT yet listening.

    The kernel spreads new connections over the listening sockets of a SO_REUSEPORT group only: a bound
    socket gets none. uvicorn calls ``listen()`` once the app's startup (which waits for the models) is
    done, so a front end that is loading, or restarting, is never handed a connection it cannot answer;
    while no front end listens, a connection is refused at once instead of waiting on a load.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def run_front_end(argv: list[str]) -> None:
    """One front end of --processes N (in a spawned process): HTTP on the shared port, feeding the engine."""
    from service.config import parse_settings
    from service.http.http_server import serve
    from service.lifetime import die_with_parent

    die_with_parent()
    settings = parse_settings(argv)
    serve(settings, reuseport_socket(settings.host, settings.port))


def _ipc_dir(arenas_bytes: int) -> str:
    """A private folder for the engine socket and the front ends' arenas: in /dev/shm (RAM) when it has
    room for every arena (a container's default /dev/shm is 64 MB), else on disk (still shared pages)."""
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize >= arenas_bytes * 1.25:
            return tempfile.mkdtemp(prefix="imgserve-ipc-", dir=shm)
        logger.warning("%s has %d MiB free, under the %d MiB the front ends' arenas need: using a folder on "
                       "disk instead (raise the container's shm size, e.g. docker --shm-size, or lower "
                       "--ipc-shm-mb)", shm, st.f_bavail * st.f_frsize >> 20, arenas_bytes >> 20)
    return tempfile.mkdtemp(prefix="imgserve-ipc-")


class _Slot:
    """One supervised process: what it runs, the process now, when it started."""

    def __init__(self, name: str, target: Callable[[list[str]], None]) -> None:
        self.name, self.target = name, target
        self.proc: BaseProcess | None = None
        self.started = 0.0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.is_alive()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.is_alive() and self.proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)


class _Supervisor:
    def __init__(self, argv: list[str], ipc_dir: str, engine: _Slot, front: list[_Slot]) -> None:
        self.argv, self.ipc_dir, self.engine, self.front = argv, ipc_dir, engine, front
        self.ctx = mp.get_context("spawn")
        self.stopping = False

    def spawn(self, slot: _Slot) -> None:
        slot.proc = self.ctx.Process(target=slot.target, args=(self.argv,), name=slot.name, daemon=False)
        slot.proc.start()
        slot.started = time.monotonic()
        logger.info("%s started (pid %s)", slot.name, slot.proc.pid)

    def forward(self, sig: int, frame: FrameType | None) -> None:
        self.stopping = True
        for slot in self.front:  # the front ends drain first; the engine stops once they are gone
            slot.signal(sig)

    def forward_hup(self, sig: int, frame: FrameType | None) -> None:
        for slot in self.front:  # each front end re-reads its API keys file; the supervisor would die of it
            slot.signal(sig)

    def reap(self, slot: _Slot) -> None:
        from service.metrics import mark_process_dead

        assert slot.proc is not None
        pid = slot.proc.pid or 0
        mark_process_dead(pid)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.ipc_dir, f"frontend-{pid}.arena"))  # a killed front end's shared memory
        logger.error("%s (pid %s) exited with %s%s", slot.name, pid, slot.proc.exitcode,
                     "; restarting it, the front ends keep running" if slot is self.engine else "; restarting it")
        if time.monotonic() - slot.started < RESTART_BACKOFF_S:
            time.sleep(RESTART_BACKOFF_S)  # a process that dies at start would spin otherwise

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self.forward)
        signal.signal(signal.SIGHUP, self.forward_hup)
        everyone = [self.engine, *self.front]
        for slot in everyone:
            self.spawn(slot)
        while not self.stopping:
            time.sleep(0.2)
            for slot in everyone:
                if not slot.alive() and not self.stopping:
                    self.reap(slot)
                    if not self.stopping:
                        self.spawn(slot)
        for slot in self.front:
            if slot.proc is not None:
                slot.proc.join()
        self.engine.signal(signal.SIGTERM)
        if self.engine.proc is not None:
            self.engine.proc.join()
        # uvicorn re-raises the signal it stopped on once it has drained: that is a clean stop
        clean = {0, -signal.SIGTERM, -signal.SIGINT}
        codes = [s.proc.exitcode for s in everyone if s.proc is not None]
        return max((abs(c or 0) for c in codes if c not in clean), default=0)


def supervise(n: int, argv: list[str], target: Callable[[list[str]], None] = run_front_end,
              engine: Callable[[list[str]], None] | None = None, arena_mb: int = 64) -> int:
    """Run the engine process and ``n`` front ends (``target(argv)`` each, spawned) until SIGTERM/SIGINT;
    the exit status. A process that dies is restarted alone: the front ends keep serving (503 while
    the engine is down), the engine keeps its models while a front end comes back."""
    if engine is None:
        from service.engine.process import run_engine

        engine = run_engine
    own_dir = MULTIPROC_ENV not in os.environ
    metrics_dir = os.environ.setdefault(MULTIPROC_ENV, tempfile.mkdtemp(prefix="imgserve-metrics-"))
    ipc_dir = os.environ[IPC_ENV] = _ipc_dir(n * (arena_mb << 20))
    try:
        front = [_Slot(f"front-end-{i}", target) for i in range(n)]
        return _Supervisor(argv, ipc_dir, _Slot("engine", engine), front).run()
    finally:
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        shutil.rmtree(ipc_dir, ignore_errors=True)
