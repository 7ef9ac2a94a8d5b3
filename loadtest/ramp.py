"""Open-loop ramp (locust shape file): warm-up, steady, spike, recovery at fixed arrival rates.

    locust -f loadtest/ramp.py --headless --host http://127.0.0.1:8000 --ramp 10:5,30:10,10:30,20:10 \
        --csv out/ramp --csv-full-history --html out/ramp.html

``--ramp`` is ``seconds:req/s`` stages; the run ends after the last one. Plot the latency over time
with ``python -m loadtest.plot history out/ramp_stats_history.csv``.
"""

from __future__ import annotations

from loadtest.scenarios import OpenLoopUser
from loadtest.shapes import RampShape


class OpenLoop(OpenLoopUser):
    """Single-photo requests at ``--user-rate`` per user; the shape sets the number of users."""


class Ramp(RampShape):
    """The ``--ramp`` stages."""
