"""Triton-layout repository writing: config.pbtxt via the real ModelConfig schema, staged atomically.

Everything of one export is first written into a staging folder inside the repository (same
filesystem), gated there, and only then renamed into place; on any error the staging folder is
removed and the repository is left as it was.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from export.errors import ExportError
from modelrepo.config import LABELS_FILE, check_model_name, set_params, write_config
from modelrepo.config import ModelConfig as _ModelConfig
from modelrepo.errors import RepositoryError

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".export-tmp-"
DEFAULT_PREFERRED = (8, 16)
MAX_QUEUE_DELAY_US = 2000
MAX_QUEUE_SIZE = 256
DEFAULT_TIMEOUT_US = 30_000_000


def valid_name(name: str) -> str:
    try:
        return check_model_name(name)
    except RepositoryError as e:
        raise ExportError(str(e)) from e


def preferred_batches(preferred: Sequence[int] | None, max_batch: int) -> list[int]:
    """Preferred batch sizes capped at ``max_batch`` (default 8, 16), sorted, de-duplicated."""
    sizes = sorted({b for b in (preferred or DEFAULT_PREFERRED) if 0 < b <= max_batch})
    return sizes or [max_batch]


@dataclass(frozen=True)
class ConfigSpec:
    name: str
    platform: str  # onnxruntime_onnx | tensorrt_plan | "" with a backend
    input_dims: tuple[int, int, int]
    num_classes: int
    max_batch_size: int
    preferred: tuple[int, ...]
    params: dict[str, str]
    gpu: bool = False
    backend: str = ""  # e.g. openvino: Triton picks the model by backend (the platform stays empty)
    #: TensorRT plans per GPU kind: compute capability ("9.0") -> file in the version folder (Triton's field)
    cc_model_filenames: dict[str, str] = field(default_factory=dict)
    default_model_filename: str = ""


def build_config(spec: ConfigSpec) -> _ModelConfig:
    if bool(spec.platform) == bool(spec.backend):
        raise ValueError(f"model {spec.name}: give a platform or a backend, not both or neither")
    cfg = mc.ModelConfig()
    cfg.name = spec.name
    if spec.backend:
        cfg.backend = spec.backend
    else:
        cfg.platform = spec.platform
    cfg.max_batch_size = spec.max_batch_size
    if spec.default_model_filename:
        cfg.default_model_filename = spec.default_model_filename
    for cc, fname in sorted(spec.cc_model_filenames.items()):
        cfg.cc_model_filenames[cc] = fname
    inp = cfg.input.add()
    inp.name = "input"
    inp.data_type = mc.TYPE_FP32
    inp.format = mc.ModelInput.FORMAT_NCHW
    inp.dims.extend(spec.input_dims)
    out = cfg.output.add()
    out.name = "logits"
    out.data_type = mc.TYPE_FP32
    out.dims.append(spec.num_classes)
    out.label_filename = LABELS_FILE
    db = cfg.dynamic_batching
    db.preferred_batch_size.extend(spec.preferred)
    db.max_queue_delay_microseconds = MAX_QUEUE_DELAY_US
    qp = db.default_queue_policy
    qp.max_queue_size = MAX_QUEUE_SIZE
    qp.default_timeout_microseconds = DEFAULT_TIMEOUT_US
    qp.timeout_action = mc.ModelQueuePolicy.REJECT
    ig = cfg.instance_group.add()
    ig.count = 1
    ig.kind = mc.ModelInstanceGroup.KIND_GPU if spec.gpu else mc.ModelInstanceGroup.KIND_CPU
    cfg.version_policy.latest.num_versions = 1
    set_params(cfg, dict(sorted(spec.params.items())))
    return cfg


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def choose_version(repo: Path, names: Sequence[str], version: int | None) -> int:
    """``version`` if no model of ``names`` has it yet, else the next version free in all of them."""
    if version is not None:
        if version < 1:
            raise ExportError(f"--version must be a positive integer, got {version}")
        taken = [n for n in names if (repo / n / str(version)).exists()]
        if taken:
            raise ExportError(
                f"version {version} of model {taken[0]!r} already exists in {repo}: pick another "
                "--version, leave it out to use the next free one, or delete that folder"
            )
        return version
    return 1 + max((max(existing_versions(repo / n), default=0) for n in names), default=0)


@dataclass
class StagedModel:
    name: str
    version: int
    dir: Path  # staging/<name>

    @property
    def version_dir(self) -> Path:
        return self.dir / str(self.version)

    def write(self, cfg: _ModelConfig, labels: list[str]) -> None:
        write_config(self.dir, cfg)
        (self.dir / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels))


class Staging:
    """A temporary folder inside the repository holding models until they are committed."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.root = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=repo))
        self.models: list[StagedModel] = []

    def model(self, name: str, version: int) -> StagedModel:
        m = StagedModel(name, version, self.root / name)
        m.version_dir.mkdir(parents=True)
        self.models.append(m)
        return m

    def commit(self) -> list[Path]:
        """Move every staged model into the repository (each step an atomic rename)."""
        done = []
        for m in self.models:
            target = self.repo / m.name
            if not target.exists():
                os.rename(m.dir, target)
            else:
                if (target / str(m.version)).exists():
                    raise ExportError(f"{target / str(m.version)} appeared while exporting: not overwriting it")
                os.rename(m.version_dir, target / str(m.version))
                # config.pbtxt, labels.txt and model-level caches (e.g. the TensorRT timing cache)
                for f in m.dir.iterdir():
                    os.replace(f, target / f.name)
            done.append(target / str(m.version))
            logger.info("wrote %s", target / str(m.version))
        return done

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def staging(repo: Path) -> Iterator[Staging]:
    """A staging area in ``repo``; removed afterwards (and ``repo`` too if this created it empty)."""
    created = not repo.exists()
    repo.mkdir(parents=True, exist_ok=True)
    st = Staging(repo)
    try:
        yield st
    finally:
        st.cleanup()
        if created and not any(repo.iterdir()):
            repo.rmdir()
