"""A candidate as a real server on loopback, and one open-loop run against it.

Each candidate serves from an overlay repository: the model's folder with its files linked and its
``config.pbtxt`` replaced by the candidate's (``Candidate.apply``), so nothing in the user's repository
changes until ``--write``. Requests are what a client sends: real JPEGs (scikit-image's photos, or
``--images``) posted raw to ``/classify``, arriving by a Poisson process (``rawclient.poisson_offsets``),
so decode, preprocessing, queueing, inference and the answer are all in the latency measured.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from loadtest.rawclient import build, poisson_offsets, run, scheduled
from loadtest.server_process import HOST, free_port, running, service_argv, wait_idle
from loadtest.tune.search import Probe
from loadtest.tune.space import Candidate
from modelrepo.config import CONFIG_FILE, read_config, write_config

GRACE_S = 1.0  # answers this long after the last arrival still count as keeping up
WARMUP_S = 3.0  # a fresh server's first seconds (first batches of each size) are not measured

Run = Callable[[float, float], Probe]  # (rate, seconds) -> the run's outcome


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # the service refuses symlinks out of its repository; hard links are its own files
    except OSError:
        shutil.copy2(src, dst)  # another file system


def overlay(repo: Path, cand: Candidate, into: Path) -> Path:
    """A repository holding only ``cand.model``: its files hard-linked (copied across file systems), its
    config the candidate's."""
    src, dst = repo / cand.model, into / cand.model
    shutil.copytree(src, dst, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(CONFIG_FILE + "*"))
    write_config(dst, cand.apply(read_config(src)))
    return into


def summarise(rate: float, seconds: float, started: float, answers: Sequence[tuple[float, float, int | None]]) -> Probe:
    """A run's outcome from ``(sent, answered, status)`` times (monotonic s)."""
    ok = np.array([(end - t0) * 1000 for t0, end, status in answers if status == 200])
    in_time = sum(1 for _, end, status in answers if status == 200 and end <= started + seconds + GRACE_S)
    return Probe(rate=rate, seconds=seconds, sent=len(answers), ok=len(ok),
                 p99_ms=float(np.percentile(ok, 99)) if len(ok) else None,
                 p50_ms=float(np.percentile(ok, 50)) if len(ok) else None,
                 mean_ms=float(ok.mean()) if len(ok) else None, answered_in_time=in_time)


class Live:
    """Starts candidates one at a time in ``workdir`` and runs open-loop load against them."""

    def __init__(self, repo: Path, workdir: Path, images: Sequence[bytes], ready_timeout: float = 180.0,
                 seed: int = 1) -> None:
        self.repo, self.workdir, self.images = repo, workdir, list(images)
        self.ready_timeout = ready_timeout
        self._seeds = itertools.count(seed)
        self._n = itertools.count()

    @contextlib.contextmanager
    def serving(self, cand: Candidate) -> Iterator[Run]:
        """The candidate running; yields ``run(rate, seconds)``. Stops it (by PID) on exit."""
        n = next(self._n)
        repo = overlay(self.repo, cand, self.workdir / f"candidate-{n}")
        port = free_port()
        argv = service_argv(repo, cand.model, port, cand.flags())
        log = self.workdir / f"candidate-{n}.log"
        with running(f"candidate-{n}", argv, port, log, "/health/ready", self.ready_timeout) as srv:
            requests = [build("POST", "/classify", f"{HOST}:{port}", {"Content-Type": "image/jpeg"}, img)
                        for img in self.images]
            warmed = False

            def one_run(rate: float, seconds: float) -> Probe:
                nonlocal warmed
                if not warmed:
                    self._load(port, requests, rate, WARMUP_S)
                    warmed = True
                probe = self._load(port, requests, rate, seconds)
                wait_idle(srv.pid, timeout=60.0)  # the next run starts on an idle server
                return probe

            yield one_run

    def _load(self, port: int, requests: list[bytes], rate: float, seconds: float) -> Probe:
        offsets = poisson_offsets(rate, seconds, seed=next(self._seeds))
        started = time.monotonic()
        answers = run(lambda: scheduled(HOST, port, requests, offsets))
        return summarise(rate, seconds, started, [(a.started, a.ended, a.status) for a in answers])
