"""Pretrained tags through torchvision's own weights mechanism, with the download faked offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models._api import WeightsEnum

from export.models import load_model


@pytest.fixture
def fake_download(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``WeightsEnum.get_state_dict`` returns a matching random state_dict instead of downloading."""
    fetched: list[str] = []

    def get_state_dict(self: WeightsEnum, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        fetched.append(str(self))
        arch = {"Inception_V3_Weights": "inception_v3", "ResNet50_Weights": "resnet50"}[type(self).__name__]
        extra = {"aux_logits": True, "init_weights": False} if arch == "inception_v3" else {}
        with torch.device("meta"):
            model = torchvision.models.get_model(arch, num_classes=len(self.meta["categories"]), **extra)
        return {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()}

    monkeypatch.setattr(WeightsEnum, "get_state_dict", get_state_dict)
    return fetched


def test_inception_tag_sets_transform_input_and_its_preprocessing(fake_download: list[str]) -> None:
    loaded = load_model("inception_v3", "IMAGENET1K_V1")
    assert fake_download == ["Inception_V3_Weights.IMAGENET1K_V1"]
    assert loaded.weights == "Inception_V3_Weights.IMAGENET1K_V1"
    assert loaded.transform_input is True  # as torchvision does for its ImageNet weights
    assert loaded.model.transform_input is True  # type: ignore[union-attr]
    assert loaded.model.AuxLogits is None  # one output: no auxiliary head in the exported graph
    assert (loaded.preprocess.crop, loaded.preprocess.resize_shorter) == (299, 342)
    assert loaded.num_classes == 1000 and loaded.labels[0] == "tench"


def test_default_tag_resolves_through_torchvision(fake_download: list[str]) -> None:
    loaded = load_model("resnet50", "DEFAULT")
    assert fake_download == ["ResNet50_Weights.IMAGENET1K_V2"]
    # the V2 recipe's eval transform: resize 232, crop 224
    assert (loaded.preprocess.resize_shorter, loaded.preprocess.crop) == (232, 224)
    assert loaded.transform_input is None


def test_transform_input_can_be_overridden_for_checkpoints(tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "googlenet.pth"
    torch.save(torchvision.models.googlenet(num_classes=5, aux_logits=True, init_weights=False).state_dict(), path)
    assert load_model("googlenet", str(path)).transform_input is False  # aux heads dropped, default off
    loaded = load_model("googlenet", str(path), transform_input=True)
    assert loaded.transform_input is True and loaded.num_classes == 5
