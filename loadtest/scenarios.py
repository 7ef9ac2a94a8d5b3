"""The requests locust users make and the marks their answers get (the checks: ``loadtest.judge``).

A 200 is validated (schema, one result per image, ``top_k`` predictions, indices and labels from the
model's label set, scores in [0, 1] in descending order), so a wrong 200 is a failure. An invalid
body (``--invalid-share``) is correct when it gets its documented 4xx and error code. A 503 with
``Retry-After`` is load shedding, a designed outcome: it is recorded under the request type ``SHED``
(not a failure, and outside the latency statistics, see ``loadtest.gate``) and the user backs off
for the time the server asked. The ``Server-Timing`` stages of every 200 are recorded as extra
series of request type ``SERVER`` (``queue``, ``preprocess``, ``infer``, in ms).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import gevent
from locust import constant_throughput, events, task
from locust.contrib.fasthttp import FastHttpSession, FastHttpUser, ResponseContextManager
from locust.env import Environment

from loadtest import gate  # noqa: F401  (importing it registers the options and the SLO gate)
from loadtest.corpus import Body, photos
from loadtest.judge import Scenario, backoff_s, check_body, error_code, expected, multipart

SHED = "SHED"
SERVER = "SERVER"
_TIMING = re.compile(r"(\w+);dur=([0-9.]+)")
SCENARIO = Scenario()  # this process's settings and what it learned from the service


@events.init.add_listener
def _configure(environment: Environment, **_kw: Any) -> None:
    opts = environment.parsed_options
    if opts is None:  # locust used as a library: keep the defaults
        SCENARIO.photos = SCENARIO.photos or photos(None)
        return
    SCENARIO.model = opts.model or None
    SCENARIO.max_top_k = opts.top_k
    SCENARIO.invalid_share = opts.invalid_share
    SCENARIO.invalid_schedule = opts.invalid_schedule
    SCENARIO.max_backoff_s = opts.max_backoff_s
    SCENARIO.user_rate = opts.user_rate
    SCENARIO.photos = photos(opts.images)
    if opts.labels:
        SCENARIO.labels = Path(opts.labels).read_text().splitlines()



def learn_models(client: FastHttpSession) -> None:
    """Read every served model's number of classes from ``GET /models`` (once per process)."""
    if SCENARIO.num_classes or SCENARIO.learning:
        return
    SCENARIO.learning = True  # the other users of this process start meanwhile: one request is enough
    with client.get("/models", name="/models [setup]", catch_response=True) as resp:
        try:
            SCENARIO.num_classes = {m["name"]: int(m["num_classes"]) for m in resp.json()["models"]
                                    if "num_classes" in m}
        except (ValueError, KeyError, TypeError) as e:
            resp.failure(f"GET /models: unexpected body ({e})")
            SCENARIO.learning = False


def classify(user: FastHttpUser, bodies: list[Body], top_k: int, name: str) -> None:
    """POST the bodies (raw when one, multipart otherwise), judge the answer, back off when shed."""
    if len(bodies) == 1:
        data, ctype = bodies[0].data, bodies[0].ctype
    else:
        data, ctype = multipart(bodies)
    params = {"top_k": str(top_k), **({"model": SCENARIO.model} if SCENARIO.model else {})}
    # geventhttpclient sends bytes as they are; locust's hint says str | dict only.
    with user.client.post("/classify", data=data, headers={"Content-Type": ctype},  # type: ignore[arg-type]
                          params=params, name=name, catch_response=True) as resp:
        backoff = judge(resp, bodies, top_k)
        if backoff is None:
            record_timing(user.environment, str((resp.headers or {}).get("Server-Timing", "")))
    if backoff:
        gevent.sleep(backoff)



def judge(resp: ResponseContextManager, bodies: list[Body], top_k: int) -> float | None:
    """Mark the response; seconds to back off when it was shed (0 when not), None for a 200 to time."""
    status, code = expected(bodies)
    retry_after = resp.headers.get("Retry-After") if resp.headers is not None else None
    if resp.status_code == 503 and retry_after is not None:
        resp.request_meta["request_type"] = SHED
        resp.success()
        return backoff_s(str(retry_after), SCENARIO.max_backoff_s)
    if resp.status_code != status:
        resp.failure(f"HTTP {resp.status_code} (expected {status}): {(resp.text or '')[:200]}")
        return 0.0
    if status != 200:
        got = error_code(resp.text or "")
        if got == code:
            resp.success()
        else:
            resp.failure(f"HTTP {status} with error code {got!r}, expected {code!r}")
        return 0.0
    problem = check_body(SCENARIO, resp.text or "", len(bodies), top_k)
    if problem:
        resp.failure(problem)
        return 0.0
    resp.success()
    return None


def record_timing(environment: Environment, header: str) -> None:
    """Each ``Server-Timing`` stage as a sample of the ``SERVER`` series of that name (ms)."""
    for stage, dur in _TIMING.findall(header):
        environment.events.request.fire(request_type=SERVER, name=stage, response_time=float(dur),
                                        response_length=0, exception=None, context={})


class OpenLoopUser(FastHttpUser):
    """Open-loop arrival: each user starts one single-photo request every 1/``--user-rate`` s.

    Users x ``--user-rate`` is the arrival rate as long as a request takes less than 1/``--user-rate``
    s (at 1 req/s per user: under a second); past that the user falls behind and the achieved rate
    drops below the offered one, which ``loadtest.shapes`` reports. A shape (``loadtest/ramp.py``,
    ``loadtest/steps.py``) sets the number of users over time.
    """

    abstract = True  # collected only where a shape file imports it

    def wait_time(self) -> float:
        return float(constant_throughput(SCENARIO.user_rate)(self))

    def on_start(self) -> None:
        learn_models(self.client)

    @task
    def classify_one(self) -> None:
        top_k = random.randint(1, SCENARIO.max_top_k)
        body = SCENARIO.pick()
        classify(self, [body], top_k, f"/classify [open loop, {body.kind}]")

