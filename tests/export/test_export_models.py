"""Exports of the torchvision CNNs (random weights): files, config.pbtxt, parity, ONNX Runtime."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.config import get_params, read_config, read_labels
from modelrepo.layout import scan_repository
from modelrepo.preprocess import Preprocess
from tests.export.helpers import Run, run_cli

pytestmark = pytest.mark.slow

ARCHS = ("resnet18", "resnext50_32x4d", "inception_v3", "googlenet")


def parity_max(out: str) -> float:
    m = re.search(r"parity PASS: max \|dlogit\| (\S+) \(tolerance 0.001, and 0.001 x max\|logit\|\)", out)
    assert m, out
    return float(m.group(1))


@pytest.mark.parametrize("arch", ARCHS)
def test_export_writes_a_valid_model(arch: str, repo: Path, exports: dict[str, Run]) -> None:
    run = exports[arch]
    assert run.rc == 0, run.err
    assert parity_max(run.out) <= 1e-3
    model_dir = repo / arch
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert (model_dir / "1" / "model.onnx").is_file()
    labels = read_labels(model_dir / "labels.txt")
    assert len(labels) == 1000 and labels[281] == "tabby"

    cfg = read_config(model_dir)  # parsed through the ModelConfig protobuf schema
    crop = 299 if arch == "inception_v3" else 224
    assert cfg.name == arch and cfg.platform == "onnxruntime_onnx"
    assert list(cfg.input[0].dims) == [3, crop, crop]
    assert cfg.input[0].name == "input" and cfg.input[0].data_type == mc.TYPE_FP32
    assert cfg.input[0].format == mc.ModelInput.FORMAT_NCHW
    assert cfg.output[0].name == "logits" and list(cfg.output[0].dims) == [1000]
    assert cfg.output[0].label_filename == "labels.txt"
    db = cfg.dynamic_batching
    assert db.max_queue_delay_microseconds == 2000
    assert db.default_queue_policy.max_queue_size == 256
    assert db.default_queue_policy.default_timeout_microseconds == 30_000_000
    assert db.default_queue_policy.timeout_action == mc.ModelQueuePolicy.REJECT
    if arch == "resnet18":  # defaults
        assert cfg.max_batch_size == 32 and list(db.preferred_batch_size) == [8, 16]
    else:  # --max-batch-size 16 --preferred-batch 4 8 64: capped at the max
        assert cfg.max_batch_size == 16 and list(db.preferred_batch_size) == [4, 8]
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, mc.ModelInstanceGroup.KIND_CPU)]
    assert cfg.version_policy.latest.num_versions == 1

    params = get_params(cfg)
    assert params["source.arch"] == arch
    assert params["source.weights"] == "random"
    assert params["source.num_classes"] == "1000"
    assert params["export.precision"] == "fp32"
    assert int(params["export.opset"]) >= 17
    assert params["export.torch_version"] and params["export.exported_at"].endswith("+00:00")
    pp = Preprocess.from_params(params, list(cfg.input[0].dims))
    assert (pp.crop, pp.resize_shorter) == ((299, 342) if arch == "inception_v3" else (224, 256))
    assert pp.mean == pytest.approx((0.485, 0.456, 0.406)) and pp.std == pytest.approx((0.229, 0.224, 0.225))
    if arch in ("inception_v3", "googlenet"):
        assert params["model.transform_input"] == "false"  # torchvision: only the ImageNet weights set it
    else:
        assert "model.transform_input" not in params


@pytest.mark.parametrize("arch", ARCHS)
def test_onnx_runs_with_a_dynamic_batch(arch: str, repo: Path, exports: dict[str, Run]) -> None:
    assert exports[arch].rc == 0
    sess = ort.InferenceSession(str(repo / arch / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = sess.get_inputs(), sess.get_outputs()
    assert (inp.name, out.name) == ("input", "logits")
    assert not isinstance(inp.shape[0], int)  # symbolic batch axis
    crop = inp.shape[-1]
    logits = sess.run(None, {"input": np.zeros((2, 3, crop, crop), np.float32)})[0]
    assert logits.shape == (2, 1000) and logits.dtype == np.float32


def test_repository_is_readable_by_the_service(repo: Path, exports: dict[str, Run]) -> None:
    assert all(r.rc == 0 for r in exports.values())
    models = scan_repository(repo)
    assert set(ARCHS) <= set(models)
    assert models["resnet18"].latest_version() == 1
    assert not [p for p in repo.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_parity_table_is_printed(exports: dict[str, Run]) -> None:
    out = exports["resnet18"].out
    for case in ("random ", "random-batch", "photos"):
        assert case in out


def test_timm_preactivation_resnet_v2(tmp_path: Path) -> None:
    run = run_cli("--arch", "timm:resnetv2_18", "--weights", "random", "--repo", str(tmp_path))
    assert run.rc == 0, run.err
    assert parity_max(run.out) <= 1e-3
    cfg = read_config(tmp_path / "timm_resnetv2_18")
    params = get_params(cfg)
    assert params["source.arch"] == "timm:resnetv2_18" and params["source.weights"] == "random"
    # from timm's data config: 224 crop at crop_pct 0.9, bicubic
    assert params["preprocess.crop"] == "224" and params["preprocess.interpolation"] == "bicubic"
    assert int(params["preprocess.resize_shorter"]) == 248
    assert list(cfg.output[0].dims) == [1000]
