"""``--fp16``: an FP16 variant written as its own model, FP32 input/output kept for clients."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.config import get_params, read_config
from tests.export.helpers import run_cli

pytestmark = pytest.mark.slow


def test_fp16_variant(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", "random", "--repo", str(repo), "--name", "r18", "--fp16")
    assert run.rc == 0, run.err
    assert re.search(r"FP16 vs FP32: score [\d.]+% .*\(gate 99.0%\)", run.out)
    cfg = read_config(repo / "r18_fp16")
    params = get_params(cfg)
    assert cfg.name == "r18_fp16" and params["export.precision"] == "fp16"
    assert float(params["export.fp16_score"]) >= 0.99 and 0.0 <= float(params["export.fp16_agreement"]) <= 1.0
    assert cfg.input[0].data_type == mc.TYPE_FP32 and cfg.output[0].data_type == mc.TYPE_FP32
    fp32, fp16 = repo / "r18" / "1" / "model.onnx", repo / "r18_fp16" / "1" / "model.onnx"
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    model = onnx.load(str(fp16))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    sess = ort.InferenceSession(str(fp16), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": np.zeros((2, 3, 224, 224), np.float32)})[0]
    assert out.shape == (2, 1000) and out.dtype == np.float32
