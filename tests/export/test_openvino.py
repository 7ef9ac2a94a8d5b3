"""OpenVINO output: the IR (``NAME_ov``) and its parity gate, NNCF INT8, and the BF16 gate.

The meaningful model is ``photo_classifier`` (tests/export/conftest.py); it is exported once for the
module with ``--format openvino --precision int8 --int8-method nncf``, which exercises all three.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export import bf16, images, openvino
from export.models import ARCHS
from export.parity import Reference
from modelrepo.config import get_params, read_config
from tests.export.helpers import Run, run_cli, snapshot

needs_openvino = pytest.mark.skipif(not openvino.available(), reason="openvino is not installed: pip install "
                                    "openvino nncf")
# Keys only one of the ONNX model and its IR twin has, or that differ between them by nature.
IR_OWN_KEYS = {"export.format", "export.parity_max_abs_diff", "export.parity_reference", "export.openvino_version",
               "export.bf16_agreement", "export.bf16_photos_top1_same", "export.exported_at"}


def _bf16_expected() -> str:
    return bf16.PASSED if openvino.bf16_capable() else bf16.NO_BF16


@pytest.fixture(scope="module")
def ov_export(photo_classifier: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Run]:
    ckpt, labels = photo_classifier
    repo = tmp_path_factory.mktemp("ov_repo")
    run = run_cli("--arch", "resnet18", "--weights", str(ckpt), "--labels", str(labels), "--repo", str(repo),
                  "--name", "photos", "--format", "openvino", "--precision", "int8", "--int8-method", "nncf")
    assert run.rc == 0, run.err
    return repo, run


@needs_openvino
@pytest.mark.slow
def test_ir_is_written_with_the_openvino_backend(ov_export: tuple[Path, Run]) -> None:
    repo, run = ov_export
    assert sorted(p.name for p in (repo / "photos_ov" / "1").iterdir()) == ["gate_check.npz", "model.bin", "model.xml"]
    onnx_cfg, cfg = read_config(repo / "photos"), read_config(repo / "photos_ov")
    assert cfg.name == "photos_ov" and cfg.backend == "openvino"
    assert cfg.platform == "" and cfg.default_model_filename == ""
    for fld in ("max_batch_size", "input", "output", "dynamic_batching", "instance_group", "version_policy"):
        assert getattr(cfg, fld) == getattr(onnx_cfg, fld), fld
    params, onnx_params = get_params(cfg), get_params(onnx_cfg)
    assert {k: v for k, v in params.items() if k not in IR_OWN_KEYS} == {
        k: v for k, v in onnx_params.items() if k not in IR_OWN_KEYS}
    assert params["export.format"] == "openvino-ir" and onnx_params["export.format"] == "onnx"
    assert params["export.precision"] == "fp32" and params["export.parity_reference"] == "onnxruntime"
    assert 0 <= float(params["export.parity_max_abs_diff"]) <= 1e-3
    assert (repo / "photos_ov" / "labels.txt").read_text() == (repo / "photos" / "labels.txt").read_text()
    assert "OpenVINO (CPU, f32) vs ONNX Runtime (photos_ov):" in run.out
    assert run.out.count("parity PASS") == 2


@needs_openvino
@pytest.mark.slow
def test_ir_loads_and_agrees_with_onnxruntime(ov_export: tuple[Path, Run]) -> None:
    repo, _ = ov_export
    x = images.to_batch(images.sample_photos()[:3], ARCHS["resnet18"].preprocess)
    ref = ort.InferenceSession(str(repo / "photos" / "1" / "model.onnx"),
                               providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    got = openvino.ov_runner(repo / "photos_ov" / "1" / "model.xml", "f32")(x)
    assert got.shape == ref.shape == (3, 10)
    assert np.max(np.abs(got - ref)) <= 1e-3
    assert np.array_equal(got.argmax(1), ref.argmax(1))


@needs_openvino
@pytest.mark.slow
def test_bf16_gate_passes_on_the_photo_classifier(ov_export: tuple[Path, Run]) -> None:
    repo, run = ov_export
    for name in ("photos", "photos_ov"):
        params = get_params(read_config(repo / name))
        assert params["export.bf16_gate"] == _bf16_expected(), name
        assert openvino.PRECISION_PARAM not in params
        if params["export.bf16_gate"] == bf16.PASSED:
            assert float(params["export.bf16_agreement"]) >= 0.99
            assert params["export.bf16_photos_top1_same"] == "true"
            assert re.search(rf"OpenVINO BF16 vs FP32 \({name}\): score [\d.]+% .*\(gate 99.0%\)", run.out)
    assert "pinned" not in run.out
    assert "openvino.inference_precision" not in get_params(read_config(repo / "photos_int8"))


@needs_openvino
@pytest.mark.slow
def test_nncf_int8_is_an_openvino_ir_that_passes_the_gate(ov_export: tuple[Path, Run]) -> None:
    repo, run = ov_export
    m = re.search(r"INT8 top-1 agreement with FP32: ([\d.]+)%; score ([\d.]+)% \(gate 98.0%\); format nncf-7bit;"
                  r".*\(nncf\)", run.out)
    assert m, run.out
    cfg = read_config(repo / "photos_int8")
    params = get_params(cfg)
    assert cfg.backend == "openvino" and cfg.platform == "" and cfg.default_model_filename == ""
    assert params["export.int8_method"] == "nncf" and params["export.precision"] == "int8"
    assert params["export.format"] == "openvino-ir"
    assert float(params["export.int8_agreement"]) == pytest.approx(float(m.group(1)) / 100, abs=1e-3)
    assert float(params["export.int8_score"]) == pytest.approx(float(m.group(2)) / 100, abs=1e-3)
    assert float(params["export.int8_score"]) >= 0.98 and params["export.int8_format"].startswith("nncf-7bit (")
    xml = repo / "photos_int8" / "1" / "model.xml"
    assert sorted(p.name for p in xml.parent.iterdir()) == ["gate_check.npz", "model.bin", "model.xml"]
    assert xml.with_suffix(".bin").stat().st_size < (repo / "photos_ov" / "1" / "model.bin").stat().st_size / 3
    ops = {op.get_type_name() for op in openvino.core().read_model(str(xml)).get_ops()}
    assert "FakeQuantize" in ops
    out = openvino.ov_runner(xml)(np.zeros((2, 3, 224, 224), np.float32))
    assert out.shape == (2, 10)


@needs_openvino
@pytest.mark.slow
def test_ir_gate_failure_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An IR that computes something else (its input scaled by 1.01) fails the gate: nothing is written."""
    ov = openvino.require("test")
    real = ov.convert_model

    def perturbed(*args, **kwargs):  # type: ignore[no-untyped-def]
        ppp = ov.preprocess.PrePostProcessor(real(*args, **kwargs))
        ppp.input().preprocess().scale(1 / 1.01)
        return ppp.build()

    monkeypatch.setattr(ov, "convert_model", perturbed)
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", "random", "--repo", str(repo), "--format", "openvino",
                  "--no-bf16-gate")
    assert run.rc == 1, run.out
    assert "OpenVINO IR parity gate failed" in run.err and "nothing was written" in run.err
    assert "parity FAIL" in run.out
    assert snapshot(repo) == set()


def _photos_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the BF16 gate fail deterministically: the real photos' top-1 'differs' in BF16."""
    monkeypatch.setattr(Reference, "photos_top1_equal", lambda self, candidate: False)


@needs_openvino
@pytest.mark.slow
def test_bf16_gate_failure_pins_the_model_to_f32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photo_classifier: tuple[Path, Path]
) -> None:
    if not openvino.bf16_capable():
        pytest.skip("this CPU has no BF16 in OpenVINO: the gate is skipped")
    _photos_differ(monkeypatch)
    ckpt, labels = photo_classifier
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", str(ckpt), "--labels", str(labels), "--repo", str(repo),
                  "--name", "photos", "--format", "openvino")
    assert run.rc == 0, run.err
    for name in ("photos", "photos_ov"):
        params = get_params(read_config(repo / name))
        assert params["export.bf16_gate"] == bf16.FAILED
        assert params[openvino.PRECISION_PARAM] == "f32"
        assert params["export.bf16_photos_top1_same"] == "false"
        assert f"BF16 gate failed: {name} is pinned to FP32 in its config (openvino.inference_precision: f32)" \
            in run.out


@needs_openvino
@pytest.mark.slow
def test_bf16_gate_is_recorded_but_not_enforced_with_random_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not openvino.bf16_capable():
        pytest.skip("this CPU has no BF16 in OpenVINO: the gate is skipped")
    _photos_differ(monkeypatch)  # even a failing gate pins nothing: random predictions mean nothing
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", "random", "--repo", str(repo))
    assert run.rc == 0, run.err
    params = get_params(read_config(repo / "resnet18"))
    assert params["export.bf16_gate"] == "not enforced: random weights"
    assert 0.0 <= float(params["export.bf16_agreement"]) <= 1.0
    assert openvino.PRECISION_PARAM not in params and "pinned" not in run.out


@pytest.mark.slow
def test_without_openvino_the_onnx_export_runs_and_records_the_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", "random", "--repo", str(repo))
    assert run.rc == 0, run.err
    cfg = read_config(repo / "resnet18")
    assert cfg.platform == "onnxruntime_onnx"
    assert get_params(cfg)["export.bf16_gate"] == "skipped: openvino not installed (pip install openvino nncf)"


@pytest.mark.parametrize("argv", [("--format", "openvino"), ("--precision", "int8", "--int8-method", "nncf"),
                                  ("--bf16-gate",)])
def test_openvino_requested_but_missing_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...]
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", "random", "--repo", str(repo), *argv)
    assert run.rc == 1
    assert "pip install openvino nncf" in run.err and len(run.err.strip().splitlines()) == 1
    assert snapshot(repo) == set()


@pytest.mark.parametrize("argv", [("--int8-method", "nncf"), ("--precision", "int8", "--int8-method", "x"),
                                  ("--format", "tflite")])
def test_bad_openvino_flags_are_usage_errors(tmp_path: Path, argv: tuple[str, ...]) -> None:
    run = run_cli("--arch", "resnet18", "--weights", "random", "--repo", str(tmp_path / "repo"), *argv)
    assert run.rc == 2


def test_bf16_result_params() -> None:
    assert bf16.verdict(0.995, True, random_weights=False) == bf16.PASSED
    assert bf16.verdict(0.985, True, random_weights=False) == bf16.FAILED
    assert bf16.verdict(1.0, False, random_weights=False) == bf16.FAILED
    assert bf16.verdict(0.5, False, random_weights=True) == bf16.NOT_ENFORCED
    failed = bf16.Bf16Result(bf16.FAILED, 0.98, True).params()
    assert failed == {"export.bf16_gate": "failed", "export.bf16_agreement": "0.9800",
                      "export.bf16_photos_top1_same": "true", "openvino.inference_precision": "f32"}
    assert bf16.Bf16Result(bf16.NO_BF16).params() == {"export.bf16_gate": "skipped: no BF16 on the exporting CPU"}
    assert bf16.skip_reason(False) == "skipped: --no-bf16-gate"
