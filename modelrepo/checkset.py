"""The accuracy gate of a reduced-precision model, and the check set that carries it to the serving CPU.

**The measure** (``agreement``): how far a candidate (INT8, FP16, BF16) keeps the FP32 model's answers,
without a labelled set. Plain top-1 agreement punishes near-ties that have no right answer (a photo of
no ImageNet class, where FP32's top two are 0.31 and 0.30); so the gate scores two things and keeps the
lower:

- ``confident_top1``: top-1 agreement over the images where FP32 is decided (its top class beats the
  second by ``CONFIDENT_MARGIN`` in softmax probability) -- where a flip is a real change of answer;
- ``top5``: the fraction of *all* images whose candidate top-1 is among FP32's top five.

A good INT8 model of a real network passes both; a saturating or broken one flips decided answers and
wanders out of the top five. With fewer than ``MIN_CONFIDENT`` decided images, ``confident_top1`` falls
back to plain top-1 agreement over all of them (stricter, never looser).

**The check set** (``CHECK_FILE`` in the version folder, written by the exporter): a few dozen
preprocessed inputs (float16, disjoint from calibration) and the FP32 model's logits for exactly those
inputs. The service runs it through the runtime that will serve the version, on the CPU that will serve
it, and refuses a version whose score is below the gate recorded in its config (``PARAM_*``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelrepo.errors import RepositoryError

CHECK_FILE = "gate_check.npz"
CHECK_IMAGES = 32
CONFIDENT_MARGIN = 0.2
MIN_CONFIDENT = 8
TOP_K = 5
FORMAT = "imgserve-gate-check/1"

# config.pbtxt parameters an export writes beside the check set
PARAM_CHECK = "export.gate_check"  # the file name, relative to the version folder
PARAM_MIN = "export.gate_min"  # the score the candidate must reach (a fraction)
PARAM_SCORE = "export.gate_score"  # the score measured at export
PARAM_CPU = "export.gate_cpu"  # the exporting CPU, ``modelrepo.cpu.CpuInfo.describe()``


@dataclass(frozen=True)
class Agreement:
    """A candidate's answers against FP32's on one set of inputs (fractions in [0, 1])."""

    images: int
    top1: float  # plain top-1 agreement (recorded, not gated)
    confident: int  # images where FP32 is decided
    confident_top1: float
    top5: float

    @property
    def score(self) -> float:
        return min(self.confident_top1, self.top5)

    def summary(self) -> str:
        return (f"score {100 * self.score:.1f}% (top-1 agreement {100 * self.confident_top1:.1f}% on the "
                f"{self.confident} of {self.images} images where FP32 is decided, top-1 within FP32's top-5 "
                f"{100 * self.top5:.1f}%; plain top-1 agreement {100 * self.top1:.1f}%)")


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Score ``candidate`` logits [N, C] against FP32 ``reference`` logits of the same inputs."""
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
        raise ValueError(f"logits of shape {candidate.shape} cannot be scored against {reference.shape}")
    ref_top1, got_top1 = reference.argmax(axis=1), candidate.argmax(axis=1)
    same = ref_top1 == got_top1
    probs = np.sort(_softmax(reference), axis=1)
    decided = (probs[:, -1] - probs[:, -2]) >= CONFIDENT_MARGIN if reference.shape[1] > 1 else np.ones_like(same)
    k = min(TOP_K, reference.shape[1])
    topk = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    within = (topk == got_top1[:, None]).any(axis=1)
    n_decided = int(decided.sum())
    confident_top1 = float(same[decided].mean()) if n_decided >= MIN_CONFIDENT else float(same.mean())
    return Agreement(len(same), float(same.mean()), n_decided, confident_top1, float(within.mean()))


@dataclass(frozen=True)
class CheckSet:
    inputs: np.ndarray  # float32 [N, C, H, W], exactly what the reference logits were computed from
    reference: np.ndarray  # float32 [N, classes]: the FP32 model's logits


def as_stored(inputs: np.ndarray, count: int = CHECK_IMAGES) -> np.ndarray:
    """``count`` inputs spread over ``inputs``, rounded to float16 and back: what ``write_check`` keeps
    (compute the FP32 reference logits from these, so the service scores the same tensors)."""
    if len(inputs) == 0:
        raise ValueError("a check set needs at least one input")
    idx = np.unique(np.linspace(0, len(inputs) - 1, min(count, len(inputs))).round().astype(int))
    return inputs[idx].astype(np.float16).astype(np.float32)


def write_check(path: Path, inputs: np.ndarray, reference: np.ndarray) -> Path:
    """Write a check set (``inputs`` as returned by ``as_stored``) with its FP32 ``reference`` logits."""
    if len(inputs) != len(reference):
        raise ValueError(f"{len(inputs)} inputs but {len(reference)} reference rows")
    np.savez_compressed(path, format=np.array(FORMAT), inputs=inputs.astype(np.float16),
                        reference=reference.astype(np.float32))
    return path


def read_check(path: Path, input_shape: tuple[int, ...], num_classes: int) -> CheckSet:
    """The check set at ``path``, validated against the model's input shape (C, H, W) and class count.

    Raises ``RepositoryError`` naming the file for anything missing, truncated or mismatched.
    """
    what = f"accuracy check set {path}"
    if not path.is_file():
        raise RepositoryError(f"{what} is missing: the export wrote it beside the model; re-export, or copy the "
                              "whole version folder")
    try:
        with np.load(path, allow_pickle=False) as z:
            fmt, inputs, ref = str(z["format"]), z["inputs"], z["reference"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise RepositoryError(f"{what} cannot be read ({type(e).__name__}: {e}): it is truncated or not a check "
                              "set; re-export the model") from e
    if fmt != FORMAT:
        raise RepositoryError(f"{what} has format {fmt!r}, this service reads {FORMAT!r}; re-export the model")
    want = (len(inputs), *input_shape)
    if inputs.ndim != 4 or tuple(inputs.shape) != want or len(inputs) == 0:
        raise RepositoryError(f"{what} holds inputs of shape {tuple(inputs.shape)}, but the model takes "
                              f"{tuple(input_shape)}: it belongs to another model; re-export")
    if ref.shape != (len(inputs), num_classes) and not (num_classes == 0 and ref.ndim == 2):
        raise RepositoryError(f"{what} holds reference logits of shape {tuple(ref.shape)}, but the model has "
                              f"{num_classes} classes and the set {len(inputs)} inputs; re-export")
    if not (np.isfinite(inputs).all() and np.isfinite(ref).all()):
        raise RepositoryError(f"{what} holds NaN/Inf values; re-export the model")
    return CheckSet(inputs.astype(np.float32), ref.astype(np.float32))
