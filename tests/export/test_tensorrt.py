"""TensorRT plans: built and gated on a GPU with TensorRT 10; skipped (with the reason) elsewhere."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.config import get_params, read_config
from tests.export.helpers import run_cli


def _why_not() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed (pip install -e '.[gpu]')"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible"
    return None


pytestmark = [
    pytest.mark.tensorrt,
    pytest.mark.gpu,
    pytest.mark.slow,
    pytest.mark.skipif(_why_not() is not None, reason=f"TensorRT export needs a GPU: {_why_not()}"),
]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_trt_plan_is_built_gated_and_described(tmp_path: Path, precision: str) -> None:
    import torch

    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", "random", "--repo", str(repo), "--trt",
                  "--precision", precision, "--max-batch-size", "16", "--min-agreement", "0")
    assert run.rc == 0, run.err
    assert re.search(rf"TensorRT {precision} top-1 agreement with ONNX: [\d.]+%", run.out)
    model_dir = repo / "resnet18_trt"
    major, minor = torch.cuda.get_device_capability()
    plan = f"model.sm{major}{minor}.plan"
    assert (model_dir / "1" / plan).stat().st_size > 0
    assert (model_dir / "timing.cache").is_file()
    if precision == "int8":
        assert (model_dir / "1" / "calibration.cache").is_file()
    cfg = read_config(model_dir)
    assert cfg.platform == "tensorrt_plan"
    assert cfg.instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    assert dict(cfg.cc_model_filenames) == {f"{major}.{minor}": plan}
    params = get_params(cfg)
    assert params["tensorrt.compute_capability"] == f"{major}.{minor}"
    assert params["tensorrt.version"].startswith("10.")
    assert params["export.precision"] == precision
    assert params["tensorrt.profile"] == "1,16,16"
    assert (repo / "resnet18" / "1" / "model.onnx").is_file()  # the ONNX model it was built from
