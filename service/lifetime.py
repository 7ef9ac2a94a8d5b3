"""Process lifetime shared by the supervisor's children (front ends and the engine)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its supervisor dies, even by ``kill -9``, so no orphan keeps
    the port or the models. Elsewhere (no ``prctl``) a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
