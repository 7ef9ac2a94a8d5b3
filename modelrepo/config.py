"""``config.pbtxt`` through the real schema: names, versions, parameters and labels.

The ModelConfig protobuf is the one Triton publishes (shipped in ``tritonclient``), so a repository
written here is served by Triton unchanged and a Triton user's repository is read here as-is.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.errors import InvalidModelName, RepositoryError, VersionNotFound

MODEL_NAME_RE = re.compile(r"[a-z0-9_.-]+")
#: longest model name accepted (a path component; file systems allow 255 bytes)
MAX_NAME_LEN = 128
VERSION_RE = re.compile(r"[0-9]{1,18}")
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"

# Files a version folder may hold, by model kind (Triton's default model filenames).
MODEL_FILENAMES = {
    "onnxruntime_onnx": "model.onnx",
    "tensorrt_plan": "model.plan",
    "pytorch_libtorch": "model.pt",
    "openvino": "model.xml",  # + model.bin beside it
}
#: parameter naming the model that serves requests for this one when it cannot load here
#: (the exporter writes it for TensorRT plans: a plan only runs on the GPU kind it was built for)
FALLBACK_PARAM = "serve.fallback_model"

ModelConfig = mc.ModelConfig
#: the tensor names every exported model uses (Triton's config names them too)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

#: Triton ``backend`` names -> the model kind (platform) they mean
BACKEND_KINDS = {
    "onnxruntime": "onnxruntime_onnx",
    "openvino": "openvino",
    "tensorrt": "tensorrt_plan",
    "pytorch": "pytorch_libtorch",
}


def model_kind(platform: str, backend: str) -> str:
    """A config's platform, else what its backend serves (``openvino`` models have only a backend)."""
    return platform or BACKEND_KINDS.get(backend, backend)


def check_model_name(name: str) -> str:
    """Model names are path components: refuse anything but ``[a-z0-9_.-]+`` (no ``..``)."""
    if not MODEL_NAME_RE.fullmatch(name) or name in {".", ".."} or len(name) > MAX_NAME_LEN:
        shown = name if len(name) <= MAX_NAME_LEN else name[:MAX_NAME_LEN] + "..."
        raise InvalidModelName(
            f"invalid model name {shown!r}: use lowercase letters, digits, '_', '.', '-' only "
            f"(at most {MAX_NAME_LEN} characters)"
        )
    return name


def check_version(version: str | None) -> str | None:
    """A version named by a request: ASCII digits only (``str.isdigit`` passes '²' and '１', which
    ``int`` then refuses or reads as 1), else 404; ``None`` or empty: the latest."""
    if not version:
        return None
    if not VERSION_RE.fullmatch(version):
        shown = version if len(version) <= 32 else version[:32] + "..."
        raise VersionNotFound(f"no version {shown!r}: versions are numbers, the names of the version folders (e.g. 1)")
    return version


def parse_config(text: str) -> mc.ModelConfig:
    cfg = mc.ModelConfig()
    text_format.Parse(text, cfg)
    return cfg


def format_config(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def read_config(model_dir: Path) -> mc.ModelConfig:
    path = model_dir / CONFIG_FILE
    try:
        return parse_config(path.read_text())
    except FileNotFoundError as e:
        raise RepositoryError(f"{path} is missing: every model folder needs a config.pbtxt") from e
    except text_format.ParseError as e:
        raise RepositoryError(f"{path} is not a valid Triton ModelConfig: {e}") from e


def write_config(model_dir: Path, cfg: mc.ModelConfig) -> Path:
    path = model_dir / CONFIG_FILE
    path.write_text(format_config(cfg))
    return path


def get_params(cfg: mc.ModelConfig) -> dict[str, str]:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def set_params(cfg: mc.ModelConfig, params: dict[str, str]) -> None:
    for k, v in params.items():
        cfg.parameters[k].string_value = str(v)


def read_labels(path: Path) -> list[str]:
    return [line.rstrip("\n") for line in path.read_text().splitlines()]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoint provenance, engine-cache staleness)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
