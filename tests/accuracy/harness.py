"""Rows of the accuracy table: one model on one runtime and precision, measured through the real HTTP service.

Each row starts ``python -m service`` on the exported repository with the runtime flags that select it,
checks in ``/models`` that the service really runs that runtime and precision, then sends every labelled
photo and decode-stress variant to ``/classify`` with ``top_k=1000`` (the whole softmax), so a row gets
expected-label hits, top-1 agreement with FP32 ONNX Runtime and max |Δ probability| from the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tests.accuracy import photos as P
from tests.service.conftest import start_server

CHUNK = 8  # images per multipart request


@dataclass(frozen=True)
class RowSpec:
    title: str
    model: str
    flags: tuple[str, ...]  # python -m service flags selecting the runtime and precision
    runtime: str  # what /models must report
    precision: str


#: the rows this machine can run (CPU): the reference first
ROWS = (
    RowSpec("ONNX Runtime FP32", "efficientnet_lite0", ("--runtime", "onnxruntime"), "onnxruntime-cpu", "fp32"),
    RowSpec("OpenVINO FP32", "efficientnet_lite0", ("--runtime", "openvino", "--inference-precision", "f32"),
            "openvino-cpu", "fp32"),
    RowSpec("OpenVINO BF16", "efficientnet_lite0", ("--runtime", "openvino", "--inference-precision", "bf16"),
            "openvino-cpu", "bf16"),
    RowSpec("INT8 QDQ on ONNX Runtime", "efficientnet_lite0_int8", ("--runtime", "onnxruntime"),
            "onnxruntime-cpu", "int8"),
    RowSpec("INT8 QDQ on OpenVINO", "efficientnet_lite0_int8", ("--runtime", "openvino"), "openvino-cpu", "int8"),
    RowSpec("NNCF INT8 (OpenVINO IR)", "lite0_nncf_int8", ("--runtime", "openvino"), "openvino-cpu", "int8"),
    RowSpec("PyTorch CPU FP32 (TorchScript)", "efficientnet_lite0_pt", ("--runtime", "pytorch"), "pytorch-cpu",
            "fp32"),
)


@dataclass
class Row:
    spec: RowSpec
    served: dict[str, object]  # the model's /models entry
    probs: dict[str, np.ndarray]  # image -> softmax over the 1000 classes, as /classify answered
    hits: dict[str, bool] = field(default_factory=dict)  # image -> an expected class in its top-k
    agreement: float = 1.0  # top-1 agreement with the reference row
    max_dp: float = 0.0  # max |Δ probability| against the reference row, over every image and class
    #: images whose top-1 differs from the reference's -> how far the reference itself ranks the two apart
    #: (its probability of its top-1 minus its probability of this row's top-1): small = a near-tie
    flips: dict[str, float] = field(default_factory=dict)

    def top1(self, image: str) -> int:
        return int(np.argmax(self.probs[image]))


def labelled_items(found: list[P.Photo]) -> list[tuple[str, bytes, P.Photo]]:
    """(name, bytes, the photo whose classes are expected) for every labelled photo and variant here."""
    by_name = {p.name: p for p in found}
    items = [(p.name, P.photo_bytes(p), p) for p in found]
    for v, (base, _) in P.VARIANTS.items():
        if base in by_name:
            items.append((v, P.variant_bytes(v), by_name[base]))
    return items


def _classify(client: object, model: str, items: list[tuple[str, bytes, P.Photo]]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        files = [("file", (name, data, "application/octet-stream")) for name, data, _ in chunk]
        r = client.post("/classify", params={"model": model, "top_k": 1000}, files=files)  # type: ignore[attr-defined]
        assert r.status_code == 200, r.text
        for (name, _, _), res in zip(chunk, r.json()["results"], strict=True):
            p = np.zeros(1000)
            for pred in res["predictions"]:
                p[pred["index"]] = pred["score"]
            out[name] = p
    return out


def measure(spec: RowSpec, repo: Path, tmp: Path, items: list[tuple[str, bytes, P.Photo]],
            categories: list[str]) -> Row:
    server = start_server(repo, tmp, "--models", f'["{spec.model}"]', "--max-images-per-request", str(CHUNK),
                          *spec.flags)
    try:
        with server.client() as c:
            served = c.get(f"/models/{spec.model}").json()
            probs = _classify(c, spec.model, items)
    finally:
        server.stop()
    row = Row(spec, served, probs)
    for name, _, photo in items:
        top = np.argsort(-probs[name], kind="stable")[: photo.k]
        row.hits[name] = bool(set(top.tolist()) & P.expected_indices(photo, categories))
    return row


def compare(row: Row, ref: Row) -> None:
    names = list(ref.probs)
    row.agreement = float(np.mean([row.top1(n) == ref.top1(n) for n in names]))
    row.max_dp = float(max(np.abs(row.probs[n] - ref.probs[n]).max() for n in names))
    row.flips = {n: float(ref.probs[n][ref.top1(n)] - ref.probs[n][row.top1(n)])
                 for n in names if row.top1(n) != ref.top1(n)}


def markdown(rows: list[Row], photos: int, variants: int) -> str:
    lines = ["| runtime, precision (as `/models` reports it) | model | photos: expected label | "
             "decode variants: expected label | top-1 agreement with ONNX Runtime FP32 | max \\|Δ probability\\| |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        names = list(r.hits)
        ph = sum(r.hits[n] for n in names[:photos])
        va = sum(r.hits[n] for n in names[photos:])
        served = f"{r.served.get('runtime')} {r.served.get('precision')}"
        lines.append(f"| {r.spec.title}: {served} | `{r.spec.model}` | {ph}/{photos} | {va}/{variants} | "
                     f"{100 * r.agreement:.0f}% | {r.max_dp:.2g} |")
    return "\n".join(lines)
