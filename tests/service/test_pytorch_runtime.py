"""The PyTorch runtime end to end on the CPU: a TorchScript model the exporter wrote, served with the
device-side JPEG pipeline and two instances; parity with ONNX Runtime on the same weights."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelrepo.config import read_config
from modelrepo.preprocess import Preprocess
from service.runtimes.base import LoadSpec
from service.runtimes.onnxruntime import OnnxRuntime
from service.runtimes.pytorch import PyTorchRuntime, graph_sizes
from tests.service.conftest import start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pt_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.cli import main

    repo = tmp_path_factory.mktemp("pt_repo")
    assert main(["--arch", "resnet18", "--weights", "random", "--repo", str(repo), "--format", "pytorch",
                 "--max-batch-size", "8", "--no-bf16-gate"]) == 0
    return repo


def test_exporter_writes_a_gated_torchscript_model(pt_repo: Path) -> None:
    cfg = read_config(pt_repo / "resnet18_pt")
    assert cfg.platform == "pytorch_libtorch"
    assert (pt_repo / "resnet18_pt" / "1" / "model.pt").stat().st_size > 1_000_000
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert params["serve.variant_of"] == "resnet18" and params["export.format"] == "torchscript"
    assert float(params["export.parity_max_abs_diff"]) <= 1e-3
    assert [i.name for i in cfg.input] == ["input"] and [o.name for o in cfg.output] == ["logits"]


def test_cpu_runtime_matches_onnx_runtime(pt_repo: Path, photos: dict[str, bytes]) -> None:
    """Identical top-5 and max |d logit| <= 1e-3 in FP32 on real photos."""
    from modelrepo.image_preprocess import preprocess

    cfg = read_config(pt_repo / "resnet18")
    pp = Preprocess.from_params({k: v.string_value for k, v in cfg.parameters.items()}, [3, 224, 224])
    batch = np.stack([preprocess(b, pp, 40_000_000) for b in photos.values()])
    pt, ort = PyTorchRuntime(), OnnxRuntime()
    pt.load(LoadSpec(pt_repo / "resnet18_pt" / "1" / "model.pt", device="cpu", threads=2, input_shape=(3, 224, 224)))
    ort.load(LoadSpec(pt_repo / "resnet18" / "1" / "model.onnx", device="cpu", threads=2))
    assert (pt.label, pt.precision, pt.device_kind) == ("pytorch-cpu", "fp32", "cpu")
    a, b = pt.infer(batch), ort.infer(batch)
    assert np.abs(a - b).max() <= 1e-3
    for ra, rb in zip(a, b, strict=True):
        assert list(np.argsort(-ra)[:5]) == list(np.argsort(-rb)[:5])
    pt.close()
    ort.close()


def test_a_model_that_does_not_take_the_config_input_is_refused(pt_repo: Path) -> None:
    from modelrepo.errors import RepositoryError

    with pytest.raises(RepositoryError, match=r"does not run on an input of \[1, 1, 224, 224\]"):
        PyTorchRuntime().load(LoadSpec(pt_repo / "resnet18_pt" / "1" / "model.pt", input_shape=(1, 224, 224)))
    with pytest.raises(RepositoryError, match="FP16 PyTorch inference needs a GPU"):
        PyTorchRuntime().load(LoadSpec(pt_repo / "resnet18_pt" / "1" / "model.pt", precision="f16"))


def test_graph_sizes_cover_every_batch_with_bounded_padding() -> None:
    sizes = graph_sizes(256, [48])
    assert sizes[0] == 1 and sizes[-1] == 256 and 48 in sizes and 96 in sizes and 192 in sizes
    for n in range(1, 257):
        pad = min(s for s in sizes if s >= n)
        assert pad < 2 * n or n == 1
        if n > 64:
            assert pad - n < n / 2
    assert graph_sizes(8) == [1, 2, 4, 8]


def test_served_with_device_side_decode_and_two_instances(
    pt_repo: Path, tmp_path: Path, photos: dict[str, bytes]
) -> None:
    """The service on the TorchScript model: decode in the batch (torchvision), two instances, a corrupt
    JPEG fails only its own request, and predictions equal the Pillow path's on the same model."""
    srv = start_server(pt_repo, tmp_path, "--models", "resnet18_pt", "--gpu-decode", "on", "--instances", "2",
                       "--max-queue-delay-ms", "20")
    cpu = start_server(pt_repo, tmp_path, "--models", "resnet18_pt", "--gpu-decode", "off")
    try:
        info = httpx.get(f"{srv.url}/models/resnet18_pt").json()
        assert (info["runtime"], info["decode"], info["instances"]) == ("pytorch-cpu", "gpu-jpeg", 2)
        assert httpx.get(f"{cpu.url}/models/resnet18_pt").json()["decode"] == "cpu"
        good = photos["coffee.jpg"]
        corrupt = good[:600] + bytes(64) + good[700:2000]

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
                bodies = [good, corrupt, *photos.values(), good]
                return await asyncio.gather(*(c.post("/classify", content=b, headers={
                    "Content-Type": "image/jpeg"}) for b in bodies))

        answers = asyncio.run(burst())
        assert [r.status_code for r in answers] == [200, 400, 200, 200, 200, 200]
        assert answers[1].json()["error"]["code"] == "bad_image"
        assert "image 0" in answers[1].json()["error"]["message"]
        for name, data in photos.items():
            got = httpx.post(f"{srv.url}/classify", content=data, headers={"Content-Type": "image/jpeg"}).json()
            ref = httpx.post(f"{cpu.url}/classify", content=data, headers={"Content-Type": "image/jpeg"}).json()
            top = [p["index"] for p in got["results"][0]["predictions"]]
            assert top == [p["index"] for p in ref["results"][0]["predictions"]], name
        assert "JPEGs decoded and preprocessed on cpu in the batch" in srv.logs()
    finally:
        srv.stop()
        cpu.stop()
