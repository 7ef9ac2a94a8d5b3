"""Realistic mixed traffic for the service (locust), closed loop.

    locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 30s --host http://127.0.0.1:8000

Three kinds of user, by weight: a client posting one photo at a time (small / large JPEG, PNG, WebP;
``--images DIR`` for your own) with a random ``top_k``, a client posting multipart batches of 2-4
photos, and a dashboard polling ``/models`` and ``/health/ready``. Each user waits for its answer
before the next request (closed loop: use it to find saturation). For open-loop arrival at a given
rate add a shape file: ``-f loadtest/locustfile.py,loadtest/ramp.py`` (warm-up, steady, spike,
recovery) or ``loadtest/steps.py`` (stepped rates and the capacity answer).

How answers are judged (validated 200s, invalid images with their 4xx, 503 shed as its own series,
Server-Timing stages) is in ``loadtest/scenarios.py``; the SLO options and the summary line in
``loadtest/gate.py``; ``locust -f loadtest/locustfile.py --help`` lists every option.
"""

from __future__ import annotations

import random

from locust import between, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest.scenarios import SCENARIO, classify, learn_models


class SingleImageUser(FastHttpUser):
    """A client classifying one photo per request, as a raw body of its own Content-Type."""

    weight = 6
    wait_time = between(0.2, 1.5)

    def on_start(self) -> None:
        learn_models(self.client)

    @task
    def classify_one(self) -> None:
        body = SCENARIO.pick()
        top_k = random.randint(1, SCENARIO.max_top_k)
        classify(self, [body], top_k, f"/classify [1 image, {body.kind}]")


class BatchUser(FastHttpUser):
    """A client sending 2-4 photos in one multipart request (one of them invalid at ``--invalid-share``)."""

    weight = 2
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        learn_models(self.client)

    @task
    def classify_batch(self) -> None:
        n = random.randint(2, 4)
        bodies = [SCENARIO.pick(invalid_ok=i == 0) for i in range(n)]
        random.shuffle(bodies)
        invalid = any(b.expect != 200 for b in bodies)
        classify(self, bodies, 5, f"/classify [{n} images{', invalid' if invalid else ''}]")


class MonitorUser(FastHttpUser):
    """A dashboard or orchestrator polling the model list and readiness."""

    weight = 1
    wait_time = between(2.0, 5.0)

    @task(3)
    def ready(self) -> None:
        self.client.get("/health/ready")

    @task(1)
    def models(self) -> None:
        self.client.get("/models")
