"""CPU INT8 (ONNX Runtime static quantization) and its top-1 agreement gate.

Random weights make a weak gate subject: a randomly initialised ResNet predicts nearly the same
class for every image, so agreement is trivially high and says nothing. These tests use a model
whose predictions mean something: ``photo_classifier`` (tests/export/conftest.py).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from export import images, openvino
from modelrepo import checkset
from modelrepo.config import get_params, read_config
from modelrepo.cpu import this_cpu
from tests.export.helpers import run_cli, snapshot

pytestmark = pytest.mark.slow


def test_int8_export_passes_the_gate(tmp_path: Path, photo_classifier: tuple[Path, Path]) -> None:
    ckpt, labels = photo_classifier
    calib_dir = tmp_path / "calib"  # a --calib-dir of image files, as a user would pass
    calib_dir.mkdir()
    for i, img in enumerate(images.calibration_variants(images.sample_photos(), per_photo=4)):
        img.save(calib_dir / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", str(ckpt), "--labels", str(labels), "--repo", str(repo),
                  "--name", "photos", "--precision", "int8", "--calib-dir", str(calib_dir))
    assert run.rc == 0, run.err
    m = re.search(r"INT8 top-1 agreement with FP32: ([\d.]+)%; score ([\d.]+)% \(gate 98.0%\); format (\S+);", run.out)
    assert m, run.out
    agreement, score = float(m.group(1)) / 100, float(m.group(2)) / 100
    assert score >= 0.98 and m.group(3) in ("u8s8-rr", "u8u8")  # auto: a format exact on every CPU

    cfg = read_config(repo / "photos_int8")
    params = get_params(cfg)
    assert cfg.name == "photos_int8" and cfg.platform == "onnxruntime_onnx"
    assert params["export.precision"] == "int8" and params["export.int8_method"] == "ort-qdq"  # the default
    assert params["export.format"] == "onnx"
    assert float(params["export.int8_agreement"]) == pytest.approx(agreement, abs=1e-3)
    assert float(params["export.int8_score"]) == pytest.approx(score, abs=1e-3)
    fmt = params["export.int8_format"]
    assert fmt.startswith(f"{m.group(3)} (") and "every x86 CPU" in fmt
    assert f"{m.group(3)}: score" in params["export.int8_candidates"]
    # the gate travels: a check set beside the version, its gate and where it was measured in the config
    assert (repo / "photos_int8" / "1" / params[checkset.PARAM_CHECK]).is_file()
    assert float(params[checkset.PARAM_MIN]) == 0.98 and float(params[checkset.PARAM_SCORE]) >= 0.98
    assert params[checkset.PARAM_CPU] == this_cpu().describe()
    assert params["source.weights"].startswith("sha256:")
    assert params["export.int8_calibration"] == str(calib_dir)
    assert get_params(read_config(repo / "photos"))["export.precision"] == "fp32"
    assert (repo / "photos_int8" / "labels.txt").read_text() == labels.read_text()

    fp32, int8 = repo / "photos" / "1" / "model.onnx", repo / "photos_int8" / "1" / "model.onnx"
    assert int8.stat().st_size < fp32.stat().st_size / 3
    sess = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    assert any(n.op_type == "QuantizeLinear" for n in _graph_nodes(int8))
    out = sess.run(None, {"input": np.zeros((3, 3, 224, 224), np.float32)})[0]
    assert out.shape == (3, len(labels.read_text().splitlines()))


def _graph_nodes(path: Path) -> list:  # type: ignore[type-arg]
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)


@pytest.mark.parametrize("method", [
    "ort-qdq",
    pytest.param("nncf", marks=pytest.mark.skipif(not openvino.available(),
                                                   reason="openvino is not installed: pip install openvino nncf")),
])
def test_int8_gate_refuses_a_badly_calibrated_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photo_classifier: tuple[Path, Path], method: str
) -> None:
    """Calibration on wrongly preprocessed images (100x too small) saturates the activations: the
    gate catches the broken INT8 model, the export fails and writes nothing."""
    real = images.calibration_set

    def wrong_scale(pp, calib_dir, limit=256):  # type: ignore[no-untyped-def]
        return real(pp, calib_dir, limit) * np.float32(0.01)

    monkeypatch.setattr(images, "calibration_set", wrong_scale)
    repo = tmp_path / "repo"
    ckpt, labels = photo_classifier
    run = run_cli("--arch", "resnet18", "--weights", str(ckpt), "--labels", str(labels), "--repo", str(repo),
                  "--precision", "int8", "--int8-method", method, "--no-bf16-gate")
    assert run.rc == 1, run.out
    assert "INT8 gate failed" in run.err and "--min-agreement" in run.err
    assert re.search(r"INT8 \S+: score [\d.]+%", run.out)
    assert snapshot(repo) == set()
