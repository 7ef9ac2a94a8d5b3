"""Triton-layout model repository: reading and writing ``config.pbtxt`` through the real schema.

The ModelConfig protobuf is the one Triton publishes (shipped in ``tritonclient``), so a repository
written here is served by Triton unchanged and a Triton user's repository is read here as-is.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from service.errors import ModelNotFound, RepositoryError

logger = logging.getLogger(__name__)

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


class InvalidModelName(RepositoryError):
    """A model name that cannot be a folder of the repository: 422 when a request or load call sent it."""

    status, code = 422, "bad_parameter"


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
        raise ModelNotFound(f"no version {shown!r}: versions are numbers, the names of the version folders (e.g. 1)")
    return version


def check_inside(path: Path, root: Path, what: str) -> Path:
    """``path`` with every symlink resolved, refused unless it stays inside the repository ``root``
    (a model folder, version folder or file that is a symlink pointing elsewhere is not served)."""
    real, real_root = path.resolve(), root.resolve()
    if not real.is_relative_to(real_root):
        raise RepositoryError(
            f"{what} {path} resolves to {real}, outside the model repository {real_root}: "
            "refused (copy the files into the repository, or point --model-repo at their folder)"
        )
    return real


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


@dataclass(frozen=True)
class Preprocess:
    """Image preprocessing kept in ``parameters`` (Triton has no field for it)."""

    resize_shorter: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    layout: str = "NCHW"

    def to_params(self) -> dict[str, str]:
        return {
            "preprocess.resize_shorter": str(self.resize_shorter),
            "preprocess.crop": str(self.crop),
            "preprocess.mean": ",".join(f"{v:g}" for v in self.mean),
            "preprocess.std": ",".join(f"{v:g}" for v in self.std),
            "preprocess.interpolation": self.interpolation,
            "preprocess.layout": self.layout,
        }

    @classmethod
    def from_params(cls, params: dict[str, str], input_dims: list[int] | None = None) -> Preprocess:
        d = cls()
        crop = int(params.get("preprocess.crop", 0)) or (input_dims[-1] if input_dims else d.crop)
        resize = int(params.get("preprocess.resize_shorter", 0)) or round(crop * 256 / 224)

        def triple(key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
            raw = params.get(key)
            if not raw:
                return default
            vals = [float(x) for x in raw.split(",")]
            if len(vals) != 3:
                raise RepositoryError(f"parameter {key} needs 3 comma-separated numbers, got {raw!r}")
            return (vals[0], vals[1], vals[2])

        return cls(
            resize_shorter=resize,
            crop=crop,
            mean=triple("preprocess.mean", d.mean),
            std=triple("preprocess.std", d.std),
            interpolation=params.get("preprocess.interpolation", d.interpolation),
            layout=params.get("preprocess.layout", d.layout),
        )


@dataclass
class ModelEntry:
    """One model folder of the repository as found on disk."""

    name: str
    path: Path
    config: mc.ModelConfig
    versions: list[int] = field(default_factory=list)
    #: the repository folder: every file read for this model must resolve inside it
    root: Path | None = None

    def inside(self, path: Path, what: str) -> Path:
        return check_inside(path, self.root if self.root is not None else self.path.parent, what)

    @property
    def platform(self) -> str:
        """The model kind: the config's platform, else what its backend serves (``openvino``)."""
        from service.runtimes.registry import model_kind

        return model_kind(self.config.platform, self.config.backend)

    @property
    def params(self) -> dict[str, str]:
        return get_params(self.config)

    def latest_version(self) -> int:
        if not self.versions:
            raise RepositoryError(f"model {self.name!r} has no numeric version folder with a model file")
        return max(self.versions)

    def version_dir(self, version: int) -> Path:
        if version not in self.versions:
            raise ModelNotFound(
                f"model {self.name!r} has no version {version}; available: "
                f"{', '.join(map(str, sorted(self.versions))) or 'none'}"
            )
        vdir = self.path / str(version)
        self.inside(vdir, f"model {self.name!r} version folder")
        return vdir

    def model_file(self, version: int) -> Path:
        """The version's model file; it, and everything beside it (model.bin, engines), must resolve
        inside the repository."""
        vdir = self.version_dir(version)
        fname = self.config.default_model_filename or MODEL_FILENAMES.get(self.platform, "model.onnx")
        for p in [vdir / fname, *vdir.iterdir()]:
            self.inside(p, f"model {self.name!r} version {version} file")
        return vdir / fname

    def labels(self) -> list[str] | None:
        for out in self.config.output:
            if out.label_filename:
                p = self.path / out.label_filename
                if p.is_file():
                    return read_labels(self.inside(p, f"model {self.name!r} labels file"))
        p = self.path / LABELS_FILE
        return read_labels(self.inside(p, f"model {self.name!r} labels file")) if p.is_file() else None


def scan_model(model_dir: Path, root: Path | None = None) -> ModelEntry:
    """One model folder of the repository ``root`` (default: the folder's parent). The folder and its
    config.pbtxt must resolve inside the repository (no symlink escape)."""
    name = check_model_name(model_dir.name)
    root = root if root is not None else model_dir.parent
    check_inside(model_dir, root, f"model {name!r} folder")
    check_inside(model_dir / CONFIG_FILE, root, f"model {name!r} config")
    cfg = read_config(model_dir)
    if cfg.name and cfg.name != name:
        raise RepositoryError(f"{model_dir / CONFIG_FILE}: name {cfg.name!r} does not match folder {name!r}")
    versions = sorted(
        int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()
    )
    return ModelEntry(name=name, path=model_dir, config=cfg, versions=versions, root=root)


def scan_repository(repo: Path) -> dict[str, ModelEntry]:
    """Every model folder (one holding a config.pbtxt) in the repository, by name."""
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist: run `python -m export` first")
    models: dict[str, ModelEntry] = {}
    for child in sorted(repo.iterdir()):
        if not child.is_dir() or not (child / CONFIG_FILE).is_file():
            continue
        try:
            models[child.name] = scan_model(child, repo)
        except RepositoryError as e:
            logger.warning("skipping %s: %s", child, e)
    return models


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoint provenance, engine-cache staleness)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
