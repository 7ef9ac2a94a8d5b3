"""Top-1 / top-5 on a labelled set through every runtime and precision that serves a model here, in-process.

    python -m export.evaluate DATA --repo model_repo --model efficientnet_lite0 [--json scores.json]

``DATA`` is an ImageFolder (``DIR/<class>/<image>``, classes named by WordNet id or class name) or a CSV of
``file,label`` (``export/labelled.py``). Every image is decoded and preprocessed once per batch by the
service's own code (``modelrepo.image_preprocess.preprocess``, from the file's bytes: EXIF orientation, DCT
draft decoding and all), then run through each row: the model and its exported variants (``NAME_int8``,
``NAME_ov``, ``NAME_pt``, ``NAME_fp16``) on ONNX Runtime, OpenVINO (FP32, and BF16 on a CPU that has it)
and PyTorch (TorchScript). The first row, FP32 ONNX Runtime, is the reference the others' top-1 agreement
is measured against. A table goes to stdout, progress to stderr, ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from export.errors import ExportError
from export.labelled import LabelledSet, read_labelled
from export.parity import Runner
from modelrepo.errors import ImageError
from modelrepo.image_preprocess import Normalizer, preprocess
from modelrepo.layout import scan_model
from modelrepo.preprocess import Preprocess

logger = logging.getLogger(__name__)

VARIANT_SUFFIXES = ("", "_int8", "_ov", "_pt", "_fp16")
MAX_PIXELS = 200_000_000  # a validation set is trusted input: only refuse what would not fit in memory
TOP_K = 5


@dataclass(frozen=True)
class Target:
    """One row: a model of the repository on one runtime at one precision."""

    model: str
    runtime: str  # onnxruntime | openvino | pytorch
    precision: str  # fp32 | bf16 | int8 | fp16
    path: Path
    pp: Preprocess

    @property
    def key(self) -> str:
        return f"{self.model} {self.runtime} {self.precision}"


@dataclass
class Scores:
    images: int = 0
    top1: int = 0
    top5: int = 0
    predictions: list[int] = field(default_factory=list)  # top-1 class of each image, in order

    @property
    def top1_acc(self) -> float:
        return self.top1 / self.images if self.images else 0.0

    @property
    def top5_acc(self) -> float:
        return self.top5 / self.images if self.images else 0.0

    def add(self, logits: np.ndarray, labels: np.ndarray) -> None:
        k = min(TOP_K, logits.shape[1])
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        self.images += len(labels)
        self.top1 += int(np.sum(top[:, 0] == labels))
        self.top5 += int(np.sum(np.any(top == labels[:, None], axis=1)))
        self.predictions += [int(v) for v in top[:, 0]]

    def agreement(self, other: Scores) -> float:
        a, b = np.asarray(self.predictions), np.asarray(other.predictions)
        return float(np.mean(a == b)) if len(a) and len(a) == len(b) else 0.0


@dataclass
class Evaluation:
    source: str
    scores: dict[str, Scores]
    skipped: list[str] = field(default_factory=list)  # files the service's decoder refused, with why


Tensors = dict[Preprocess, np.ndarray]


def _batch_tensors(datas: list[bytes], pps: set[Preprocess]) -> tuple[Tensors, list[int], dict[int, str]]:
    """Each image preprocessed once per distinct Preprocess: the batches, the images kept, why others were not."""
    kept: list[int] = []
    refused: dict[int, str] = {}
    per_pp: dict[Preprocess, list[np.ndarray]] = {pp: [] for pp in pps}
    normalizers = {pp: Normalizer(pp) for pp in pps}
    for i, data in enumerate(datas):
        try:
            rows = {pp: preprocess(data, pp, MAX_PIXELS, normalizers[pp]) for pp in pps}
        except ImageError as e:  # undecodable or too large: what the service would refuse (400 / 413)
            refused[i] = f"{e.code}: {e.message}"
            continue
        kept.append(i)
        for pp, row in rows.items():
            per_pp[pp].append(row)
    return {pp: np.stack(rows) for pp, rows in per_pp.items() if rows}, kept, refused


def evaluate(runners: dict[str, tuple[Runner, Preprocess]], data: LabelledSet, batch: int = 16,
             progress: bool = True) -> Evaluation:
    """Stream ``data`` through every runner: each batch read and preprocessed once, then run by each."""
    scores = {name: Scores() for name in runners}
    pps = {pp for _, pp in runners.values()}
    out = Evaluation(str(data.source), scores)
    bar = tqdm(total=len(data.examples), desc="evaluating", unit="img", disable=not progress, file=sys.stderr)
    try:
        for start in range(0, len(data.examples), batch):
            chunk = data.examples[start : start + batch]
            tensors, kept, refused = _batch_tensors([e.path.read_bytes() for e in chunk], pps)
            out.skipped += [f"{chunk[i].path}: {why}" for i, why in refused.items()]
            labels = np.asarray([chunk[i].label for i in kept])
            if kept:
                for name, (runner, pp) in runners.items():
                    scores[name].add(runner(tensors[pp]), labels)
            bar.update(len(chunk))
    finally:
        bar.close()
    if out.skipped:
        logger.warning("%d image(s) could not be decoded and were left out, e.g. %s", len(out.skipped), out.skipped[0])
    if not any(s.images for s in scores.values()):
        raise ExportError(f"{data.source}: none of its {len(data.examples)} images could be decoded")
    return out


# --- the rows a repository's model has here ----------------------------------------------------------


def _rows_for(kind: str, precision: str, bf16: bool) -> list[tuple[str, str]]:
    """(runtime, precision) of each row a model file has here."""
    if kind == "onnxruntime_onnx":
        if precision == "fp16":
            return [("onnxruntime", "fp16")]
        rows = [("onnxruntime", precision), ("openvino", "int8" if precision == "int8" else "fp32")]
        return rows + ([("openvino", "bf16")] if bf16 and precision == "fp32" else [])
    if kind == "openvino":
        return [("openvino", "int8")] if precision == "int8" else [("openvino", "fp32")] + (
            [("openvino", "bf16")] if bf16 else [])
    if kind == "pytorch_libtorch":
        return [("pytorch", "fp32")]
    return []


def targets(repo: Path, name: str, version: int | None = None) -> tuple[list[Target], list[str]]:
    """The rows for ``name`` and its variants in ``repo``, and what cannot be measured here (and why)."""
    from export import openvino

    if not (repo / name / "config.pbtxt").is_file():
        raise ExportError(f"no model {name!r} in {repo} (no {repo / name / 'config.pbtxt'}): export it first")
    ov, notes = openvino.available(), []
    bf16 = ov and openvino.bf16_capable()
    if ov and not bf16:
        notes.append("OpenVINO BF16: this CPU has no BF16 in OpenVINO")
    out: list[Target] = []
    for model in (f"{name}{suffix}" for suffix in VARIANT_SUFFIXES):
        if not (repo / model / "config.pbtxt").is_file():
            continue
        entry = scan_model(repo / model, repo)
        path = entry.model_file(entry.latest_version() if version is None else version)
        pp = Preprocess.from_params(entry.params, list(entry.config.input[0].dims))
        rows = _rows_for(entry.platform, entry.params.get("export.precision", "fp32"), bf16)
        if not rows:
            notes.append(f"{model}: {entry.platform} does not run in-process on this machine")
        for runtime, precision in rows:
            if runtime == "openvino" and not ov:
                notes.append(f"{model} on OpenVINO: openvino is not installed")
                continue
            out.append(Target(model, runtime, precision, path, pp))
    return out, notes


def make_runner(t: Target, threads: int) -> Runner:
    if t.runtime == "onnxruntime":
        from export.parity import ort_runner

        return ort_runner(t.path, threads)
    if t.runtime == "openvino":
        from export import openvino

        hint = {"fp32": "f32", "bf16": "bf16"}.get(t.precision)  # INT8: OpenVINO's default, as the service runs it
        return openvino.ov_runner(t.path, hint, threads)
    from export.torchscript import ts_runner

    return ts_runner(t.path)


# --- the command line --------------------------------------------------------------------------------


def table(ev: Evaluation, rows: list[Target]) -> str:
    """Top-1 / top-5 per row, and each row's top-1 agreement with the first (FP32 ONNX Runtime)."""
    ref = ev.scores[rows[0].key]
    width = max(len(t.model) for t in rows)
    lines = [f"{'model':<{width}}  {'runtime':<11} {'precision':<9} {'images':>6} {'top-1':>7} {'top-5':>7} "
             f"{'Δtop-1':>7} {'agree':>7}"]
    for t in rows:
        s = ev.scores[t.key]
        delta = 100 * (s.top1_acc - ref.top1_acc)
        agree = "ref" if t is rows[0] else f"{100 * s.agreement(ref):.1f}%"
        lines.append(f"{t.model:<{width}}  {t.runtime:<11} {t.precision:<9} {s.images:>6} {100 * s.top1_acc:>6.1f}% "
                     f"{100 * s.top5_acc:>6.1f}% {delta:>+7.1f} {agree:>7}")
    lines.append(f"agree: top-1 agreement with {rows[0].key}; Δtop-1: its top-1 minus the reference's (points)")
    return "\n".join(lines)


def report(ev: Evaluation, rows: list[Target], notes: list[str], seconds: float) -> dict[str, object]:
    ref = ev.scores[rows[0].key]
    return {
        "data": ev.source, "reference": rows[0].key, "seconds": round(seconds, 2), "skipped": ev.skipped,
        "not_measured": notes,
        "rows": [{**{k: str(v) for k, v in asdict(t).items() if k in ("model", "runtime", "precision", "path")},
                  "images": ev.scores[t.key].images, "top1": ev.scores[t.key].top1_acc,
                  "top5": ev.scores[t.key].top5_acc, "top1_agreement": ev.scores[t.key].agreement(ref)}
                 for t in rows],
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m export.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="ImageFolder (DIR/<class>/<image>) or CSV of file,label")
    p.add_argument("--model", required=True, help="model name in the repository (its variants are found too)")
    p.add_argument("--repo", type=Path, default=Path("model_repo"), help="model repository (default model_repo)")
    p.add_argument("--version", type=int, help="version of every model (default: each one's latest)")
    p.add_argument("--json", type=Path, help="also write the numbers here")
    p.add_argument("--batch", type=int, default=16, help="images per inference batch (default 16)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="compute threads per runtime")
    p.add_argument("--limit", type=int, help="only the first N images (a quick look)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace, out: Callable[[str], None] = print) -> dict[str, object]:
    if args.batch < 1 or args.threads < 1 or (args.limit is not None and args.limit < 1):
        raise ExportError("--batch, --threads and --limit must be at least 1")
    rows, notes = targets(args.repo, args.model, args.version)
    if not rows:
        raise ExportError(f"nothing can run {args.model} here: {'; '.join(notes) or 'no model file'}")
    from export.models import imagenet_categories

    labels = scan_model(args.repo / args.model, args.repo).labels() or []
    hint = f"The model's class names are in {args.repo / args.model / 'labels.txt'}."
    data = read_labelled(args.data, labels, labels == imagenet_categories(), hint)
    if args.limit:
        data = LabelledSet(data.source, data.examples[: args.limit])
    out(f"{len(data.examples)} images in {data.classes} classes from {data.source}; {len(rows)} rows")
    t0 = time.perf_counter()
    runners = {t.key: (make_runner(t, args.threads), t.pp) for t in rows}
    ev = evaluate(runners, data, args.batch, progress=not args.no_progress)
    result = report(ev, rows, notes, time.perf_counter() - t0)
    out(table(ev, rows))
    for note in notes:
        out(f"not measured: {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        out(f"wrote {args.json}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    from modelrepo.errors import RepositoryError

    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (ExportError, RepositoryError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
