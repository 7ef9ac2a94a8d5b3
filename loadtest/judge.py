"""How an answer of the service is judged: pure functions, no locust (so tests import them freely).

A 200 must be a classification of every image sent (schema, ``top_k`` predictions, indices inside the
model's classes, labels from its label set, scores in [0, 1] in descending order); an invalid body
must get its documented 4xx and error code; a 503 with ``Retry-After`` is load shedding.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from loadtest.corpus import Body, invalid_bodies


@dataclass
class Scenario:
    """This process's settings (from the command line) and what it learned from the service."""

    model: str | None = None
    max_top_k: int = 10
    invalid_share: float = 0.0
    invalid_schedule: str = "random"  # or "even": exactly that share, evenly spaced, the first pick included
    max_backoff_s: float = 5.0
    user_rate: float = 1.0
    photos: list[Body] = field(default_factory=list)
    invalid: list[Body] = field(default_factory=invalid_bodies)
    num_classes: dict[str, int] = field(default_factory=dict)  # model name -> number of classes
    labels: list[str] | None = None  # the exact label set (--labels), checked by index
    seen: dict[tuple[str, int], str] = field(default_factory=dict)  # else: one label per (model, index)
    learning: bool = False
    picks: int = 0  # picks that could have been invalid, for the "even" schedule

    def pick(self, invalid_ok: bool = True) -> Body:
        if not invalid_ok or self.invalid_share <= 0:
            return random.choice(self.photos)
        if self.invalid_schedule == "even":
            k, self.picks = self.picks, self.picks + 1
            if even_hit(k, self.invalid_share):  # the invalid bodies in turn
                return self.invalid[invalid_before(k, self.invalid_share) % len(self.invalid)]
        elif random.random() < self.invalid_share:
            return random.choice(self.invalid)
        return random.choice(self.photos)


def invalid_before(k: int, share: float) -> int:
    """How many of picks 0..k-1 the "even" schedule made invalid: ceil(k * share), never more than k."""
    return min(k, math.ceil(round(k * min(share, 1.0), 9)))  # round: 0.1 * 30 is 3.0000000000000004


def even_hit(k: int, share: float) -> bool:
    """Whether pick ``k`` (from 0) is invalid in the "even" schedule: picks 0, 1/share, 2/share, ...

    Over any first n picks exactly ceil(n * share) are invalid, so a run that makes one request has
    sent an invalid one: a test expecting invalid images needs no luck.
    """
    return invalid_before(k + 1, share) > invalid_before(k, share)


def multipart(bodies: list[Body]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body with one ``file`` part per image; (body, Content-Type)."""
    boundary = uuid.uuid4().hex
    chunks: list[bytes] = []
    for b in bodies:
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{b.name}"\r\n'
                      f"Content-Type: {b.ctype}\r\n\r\n".encode())
        chunks += [b.data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"

def expected(bodies: list[Body]) -> tuple[int, str]:
    bad = [b for b in bodies if b.expect != 200]
    if not bad:
        return 200, ""
    return (bad[0].expect, bad[0].code) if len(bodies) == 1 else (400, "bad_image")  # a bad part is a bad image

def backoff_s(retry_after: str, cap: float) -> float:
    """The server's Retry-After (seconds), jittered by up to +20 % so shed users do not return in step."""
    try:
        seconds = float(retry_after)
    except ValueError:
        seconds = 1.0
    return min(cap, max(0.0, seconds)) * random.uniform(1.0, 1.2)


def error_code(text: str) -> str | None:
    try:
        return str(json.loads(text)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def check_body(sc: Scenario, text: str, images: int, top_k: int) -> str | None:
    """What is wrong with a 200's body, or None."""
    try:
        body = json.loads(text)
        model, results = body["model"], body["results"]
    except (ValueError, KeyError, TypeError):
        return f"200 whose body is not a classification: {text[:200]!r}"
    if sc.model and model != sc.model:
        return f"answered by model {model!r}, asked for {sc.model!r}"
    if not isinstance(results, list) or len(results) != images:
        return f"{len(results) if isinstance(results, list) else '?'} results for {images} image(s)"
    for i, r in enumerate(results):
        preds = r.get("predictions") if isinstance(r, dict) else None
        if not isinstance(preds, list) or len(preds) != top_k:
            return f"image {i}: {len(preds) if isinstance(preds, list) else 'no'} predictions, top_k={top_k}"
        problem = check_predictions(sc, model, preds)
        if problem:
            return f"image {i}: {problem}"
    return None


def check_predictions(sc: Scenario, model: str, preds: list[Any]) -> str | None:
    n = sc.num_classes.get(model)
    last = 1.0
    for p in preds:
        try:
            index, label, score = p["index"], p["label"], float(p["score"])
        except (KeyError, TypeError, ValueError):
            return f"malformed prediction {p!r}"
        if type(index) is not int or index < 0 or (n is not None and index >= n):
            return f"index {index!r} outside the model's {n} classes"
        if not 0.0 <= score <= last + 1e-6:
            return f"score {score} out of [0, 1] or not in descending order"
        last = score
        if sc.labels is not None:
            if index >= len(sc.labels) or sc.labels[index] != label:
                return f"label {label!r} is not the label set's entry {index}"
        elif sc.seen.setdefault((model, index), label) != label:
            return f"index {index} labelled {label!r} here and {sc.seen[(model, index)]!r} before"
    return None
