"""Models and versions on disk: a repository folder of model folders, each of numeric version folders.

Every file served must resolve inside the repository (no symlink escape).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.config import (
    CONFIG_FILE,
    LABELS_FILE,
    MODEL_FILENAMES,
    check_model_name,
    get_params,
    model_kind,
    read_config,
    read_labels,
)
from modelrepo.errors import RepositoryError, VersionNotFound

logger = logging.getLogger(__name__)


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
            raise VersionNotFound(
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


def model_names(repo: Path) -> list[str]:
    """The names of the repository's model folders (those holding a config.pbtxt), sorted."""
    if not repo.is_dir():
        raise RepositoryError(f"model repository {repo} does not exist: run `python -m export` first")
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and (p / CONFIG_FILE).is_file())


def scan_repository(repo: Path) -> dict[str, ModelEntry]:
    """Every model folder (one holding a config.pbtxt) in the repository, by name; broken ones skipped."""
    models: dict[str, ModelEntry] = {}
    for name in model_names(repo):
        child = repo / name
        try:
            models[child.name] = scan_model(child, repo)
        except RepositoryError as e:
            logger.warning("skipping %s: %s", child, e)
    return models


