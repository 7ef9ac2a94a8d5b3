"""Realistic mixed traffic for the service (locust).

    locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 30s --host http://127.0.0.1:8000

Three kinds of user, by weight: a client posting one photo at a time with a random ``top_k`` (the
bulk of the traffic), a client posting multipart batches of 2-4 photos, and a dashboard polling
``/models`` and ``/health/ready`` now and then. The photos are scikit-image's sample photos as JPEG.
``LOCUST_MODEL`` picks the model query parameter (default: the service's default model).
A 503 (load shedding, with Retry-After) counts as a failure in locust's statistics, by design.
"""

from __future__ import annotations

import os
import random
import uuid

from locust import between, task
from locust.contrib.fasthttp import FastHttpSession, FastHttpUser, ResponseContextManager

from loadtest.images import sample_jpegs

IMAGES = list(sample_jpegs().items())
MODEL = os.environ.get("LOCUST_MODEL")


def multipart(files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one ``file`` part per image; (body, Content-Type)."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, blob in files:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
        )
        chunks += [blob, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def post(client: FastHttpSession, body: bytes, ctype: str, top_k: int, name: str) -> ResponseContextManager:
    """POST /classify; the response context lets ``check_results`` judge the body."""
    params = {"top_k": str(top_k), **({"model": MODEL} if MODEL else {})}
    # geventhttpclient sends bytes as they are; locust's hint says str | dict only.
    return client.post("/classify", data=body, headers={"Content-Type": ctype},  # type: ignore[arg-type]
                       params=params, name=name, catch_response=True)


def check_results(resp: ResponseContextManager, expected: int, top_k: int) -> None:
    """Mark a 200 whose body has the wrong shape as a failure (locust counts non-2xx by itself)."""
    if resp.status_code != 200:
        return
    try:
        results = resp.json()["results"]
        ok = len(results) == expected and all(len(x["predictions"]) == top_k for x in results)
    except (ValueError, KeyError, TypeError):
        ok = False
    if not ok:
        resp.failure(f"unexpected body for {expected} image(s), top_k={top_k}")


class SingleImageUser(FastHttpUser):
    """A client classifying one photo per request, as raw ``image/jpeg``."""

    weight = 6
    wait_time = between(0.2, 1.5)

    @task
    def classify_one(self) -> None:
        name, blob = random.choice(IMAGES)
        top_k = random.randint(1, 10)
        with post(self.client, blob, "image/jpeg", top_k, "/classify [1 image]") as resp:
            check_results(resp, 1, top_k)


class BatchUser(FastHttpUser):
    """A client sending 2-4 photos in one multipart request."""

    weight = 2
    wait_time = between(1.0, 3.0)

    @task
    def classify_batch(self) -> None:
        n = random.randint(2, 4)
        body, ctype = multipart(random.choices(IMAGES, k=n))
        with post(self.client, body, ctype, 5, f"/classify [{n} images]") as resp:
            check_results(resp, n, 5)


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
