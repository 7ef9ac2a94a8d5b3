"""One top-k and one meaning of a score, for every protocol: a class's score is its softmax probability.

``/classify``'s predictions, KServe v2's classification extension (HTTP and gRPC, tensor or image input)
and the result cache all come from ``predictions``: the same image gives the same labels and scores
whichever way it came in.
"""

from __future__ import annotations

import numpy as np

#: one image's top-k: ``{"index", "label", "score"}`` per class, best first
Predictions = list[dict[str, object]]
#: decimals a score keeps (what the JSON and the classification strings carry)
SCORE_DECIMALS = 6


def softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row max is subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probs: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` best classes of one row of probabilities, best first (ties keep index order)."""
    idx = np.argpartition(-probs, k - 1)[:k] if k < probs.shape[0] else np.arange(probs.shape[0])
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [(int(i), float(probs[i])) for i in idx]


def post(rows: list[np.ndarray], k: int) -> list[list[tuple[int, float]]]:
    """Logit rows of one request -> each row's top-k (class index, softmax probability)."""
    if not rows:
        return []
    probs = softmax_rows(np.stack(rows))
    return [top_k(p, k) for p in probs]


def predictions(rows: list[np.ndarray], k: int, labels: list[str]) -> list[Predictions]:
    """Logit rows -> each row's top-k as ``{"index", "label", "score"}``, best first."""
    return [[{"index": j, "label": labels[j], "score": round(p, SCORE_DECIMALS)} for j, p in row]
            for row in post(rows, k)]
