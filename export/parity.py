"""Gates: ONNX Runtime vs PyTorch (logit parity, identical top-5) and top-1 agreement between models."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from export import images
from modelrepo.checkset import Agreement, agreement, as_stored
from modelrepo.config import INPUT_NAME, OUTPUT_NAME
from modelrepo.preprocess import Preprocess

logger = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]
FP32_ATOL = 1e-3
# Also relative to the largest reference logit, so a checkpoint whose logits are small (a few hundredths)
# is not passed by the absolute bound alone. Random weights have a trained model's logits (export/random_init.py).
FP32_RTOL = 1e-3
TOP_K = 5


def ort_session(path: Path, threads: int = 2) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_runner(path: Path, threads: int = 2) -> Runner:
    sess = ort_session(path, threads)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0], dtype=np.float32)

    return run


def torch_runner(model: nn.Module) -> Runner:
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    return run


def run_batched(runner: Runner, x: np.ndarray, batch: int = 8) -> np.ndarray:
    return np.concatenate([runner(x[i : i + batch]) for i in range(0, len(x), batch)])


@dataclass
class ParityRow:
    case: str
    batch: int
    max_abs_diff: float
    max_abs_ref: float
    top5_equal: bool

    def ok(self, atol: float, rtol: float) -> bool:
        return self.max_abs_diff <= atol and self.max_abs_diff <= rtol * self.max_abs_ref and self.top5_equal


@dataclass
class ParityReport:
    atol: float
    rtol: float = FP32_RTOL
    rows: list[ParityRow] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((r.max_abs_diff for r in self.rows), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.ok(self.atol, self.rtol) for r in self.rows)

    def table(self) -> str:
        lines = [f"{'case':<16} {'batch':>5} {'max|dlogit|':>12} {'max|logit|':>11} {'top-5':>6}  ok"]
        for r in self.rows:
            lines.append(
                f"{r.case:<16} {r.batch:>5} {r.max_abs_diff:>12.2e} {r.max_abs_ref:>11.3g} "
                f"{'same' if r.top5_equal else 'DIFF':>6}  {'yes' if r.ok(self.atol, self.rtol) else 'NO'}"
            )
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"parity {verdict}: max |dlogit| {self.max_abs_diff:.2e} (tolerance {self.atol:g}, "
                     f"and {self.rtol:g} x max|logit|)")
        return "\n".join(lines)


def _top5_equal(ref: np.ndarray, got: np.ndarray) -> bool:
    k = min(TOP_K, ref.shape[1])
    a = np.argsort(-ref, axis=1, kind="stable")[:, :k]
    b = np.argsort(-got, axis=1, kind="stable")[:, :k]
    return bool(np.array_equal(a, b))


def parity_inputs(photos: np.ndarray, input_shape: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Random batches of 1 and 3 (the dynamic axis) and the real photos as one batch."""
    rng = np.random.default_rng(seed)
    return {
        "random": rng.standard_normal((1, *input_shape), dtype=np.float32),
        "random-batch": rng.standard_normal((3, *input_shape), dtype=np.float32),
        "photos": photos.astype(np.float32, copy=False),
    }


def check_parity(reference: Runner, candidate: Runner, inputs: dict[str, np.ndarray],
                 atol: float = FP32_ATOL) -> ParityReport:
    """Compare two runners on each input batch: max |delta logit| and identical ordered top-5."""
    t0 = time.perf_counter()
    report = ParityReport(atol)
    for case, x in inputs.items():
        ref, got = reference(x), candidate(x)
        if got.shape != ref.shape:
            report.rows.append(ParityRow(case, len(x), float("inf"), 0.0, False))
            continue
        diff = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))))
        report.rows.append(ParityRow(case, len(x), diff, float(np.max(np.abs(ref))), _top5_equal(ref, got)))
    logger.info("parity checked in %.1fs", time.perf_counter() - t0)
    return report


def top1_agreement(reference: Runner, candidate: Runner, x: np.ndarray, batch: int = 8) -> float:
    """Fraction of inputs whose top-1 class is the same for both runners."""
    a = run_batched(reference, x, batch).argmax(axis=1)
    b = run_batched(candidate, x, batch).argmax(axis=1)
    return float(np.mean(a == b))


class Reference:
    """FP32 ONNX Runtime and its logits on the gates' inputs (the check set, the real photos).

    Each is computed on first use and then shared by every gate of one export.
    """

    def __init__(self, fp32: Path, pp: Preprocess, batch: int = 8) -> None:
        self.fp32, self.pp, self.batch = fp32, pp, batch

    @cached_property
    def runner(self) -> Runner:
        return ort_runner(self.fp32)

    @cached_property
    def check(self) -> np.ndarray:
        return images.check_set(self.pp)

    @cached_property
    def check_logits(self) -> np.ndarray:
        return run_batched(self.runner, self.check, self.batch)

    @cached_property
    def photos(self) -> np.ndarray:
        return images.to_batch(images.sample_photos(), self.pp)

    @cached_property
    def photos_logits(self) -> np.ndarray:
        return self.runner(self.photos)

    def agreement(self, candidate: Runner) -> float:
        """Fraction of the check set whose top-1 class ``candidate`` shares with FP32 ONNX Runtime."""
        got = run_batched(candidate, self.check, self.batch).argmax(axis=1)
        return float(np.mean(self.check_logits.argmax(axis=1) == got))

    def score(self, candidate: Runner) -> Agreement:
        """``candidate`` scored against FP32 ONNX Runtime on the check set (the gate's measure)."""
        return agreement(self.check_logits, run_batched(candidate, self.check, self.batch))

    @cached_property
    def stored(self) -> np.ndarray:
        """The part of the check set an export stores beside a version (float16-rounded, as stored)."""
        return as_stored(self.check)

    @cached_property
    def stored_logits(self) -> np.ndarray:
        return run_batched(self.runner, self.stored, self.batch)

    def photos_top1_equal(self, candidate: Runner) -> bool:
        """Whether ``candidate`` gives every real photo the same top-1 class as FP32 ONNX Runtime."""
        return bool(np.array_equal(self.photos_logits.argmax(axis=1), candidate(self.photos).argmax(axis=1)))
