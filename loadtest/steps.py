"""Stepped open-loop arrival rates and the capacity answer (locust shape file).

    locust -f loadtest/steps.py --headless --host http://127.0.0.1:8000 --steps 20,40,60,80,100 \
        --step-seconds 20 --capacity-p99-ms 250 --csv out/steps --csv-full-history --html out/steps.html

Each step runs ``--steps`` req/s for ``--step-seconds``; its last 75 % is measured. The answer is the
highest rate whose p99 stays under ``--capacity-p99-ms`` with no failures, under 1 % shed and the
offered rate achieved (and every lower step too): logged per step and in the summary line's
``capacity``.
"""

from __future__ import annotations

from loadtest.scenarios import OpenLoopUser
from loadtest.shapes import StepShape


class OpenLoop(OpenLoopUser):
    """Single-photo requests at ``--user-rate`` per user; the shape sets the number of users."""


class Steps(StepShape):
    """The ``--steps`` rates."""
