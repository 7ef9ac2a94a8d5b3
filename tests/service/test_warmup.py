"""Which batch sizes warm before a version reports ready (``service.engine.warmup``): every size on a GPU,
size 1 on a CPU (where warming a size costs a whole batch, and its first real batch only a little more)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.config import set_params, write_config
from service.config import Settings
from service.engine.manager import ModelManager
from service.engine.warmup import warmup_batch_sizes
from service.metrics import Metrics
from service.runtimes.onnxruntime import OnnxRuntime
from tests.service.test_compile_cache import SHAPE, tiny_onnx


def test_the_sizes_by_mode_and_device() -> None:
    assert warmup_batch_sizes("auto", "cpu", 32) == [1]
    assert warmup_batch_sizes("auto", "gpu", 4) == [1, 2, 3, 4]
    assert warmup_batch_sizes("all", "cpu", 3) == [1, 2, 3]
    assert warmup_batch_sizes("one", "gpu", 8) == [1]


def _repo(root: Path) -> Path:
    tiny_onnx(root / "tiny" / "1" / "model.onnx")
    cfg = mc.ModelConfig(name="tiny", platform="onnxruntime_onnx", max_batch_size=4)
    cfg.input.add(name="input", data_type=mc.TYPE_FP32, dims=list(SHAPE))
    cfg.output.add(name="logits", data_type=mc.TYPE_FP32, dims=[4])
    set_params(cfg, {"preprocess.crop": "8", "source.weights": "random"})
    write_config(root / "tiny", cfg)
    return root


@pytest.mark.parametrize(("flags", "warmed"), [({}, [[1]]), ({"warmup_batch_sizes": "all"}, [[1, 2, 3, 4]]),
                                               ({"warmup": False}, [])])
async def test_a_cpu_model_is_ready_after_warming_size_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture, flags: dict[str, object],
                                                         warmed: list[list[int]]) -> None:
    calls: list[list[int]] = []
    real = OnnxRuntime.warmup

    def recording(self: OnnxRuntime, batch_sizes: list[int], input_shape: tuple[int, ...]) -> None:
        calls.append(list(batch_sizes))
        real(self, batch_sizes, input_shape)

    monkeypatch.setattr(OnnxRuntime, "warmup", recording)
    s = Settings(model_repo=_repo(tmp_path / "repo"), runtime="onnxruntime", workers=1, **flags)  # type: ignore[arg-type]
    m = ModelManager(s, Metrics())
    with caplog.at_level(logging.INFO, "service.engine.warmup"):
        await m.load("tiny")
    try:
        assert calls == warmed
        if flags == {}:
            assert "at batch size 1 in" in caplog.text and "sizes up to 4: on their first batch" in caplog.text
        assert m.get("tiny").describe().state == "ready"
    finally:
        await m.close()
