"""The step protocol between the batcher and a model's pipeline: an instance is ``list[payload] -> StepResult``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class StepResult:
    """What one instance returns for a batch: one row per item that did not fail, in order, and the
    items that failed on their own (a JPEG no decoder could read): those fail alone, never the batch."""

    rows: np.ndarray
    failed: dict[int, Exception] = field(default_factory=dict)


#: one runtime instance: a batch of payloads -> its rows (called on that instance's own thread)
Step = Callable[[list[Any]], StepResult]


def stacked(infer: Callable[[np.ndarray], np.ndarray]) -> Step:
    """The step for payloads that are already model inputs: stack them and infer."""

    def step(items: list[Any]) -> StepResult:
        return StepResult(infer(np.stack(items)))

    return step
