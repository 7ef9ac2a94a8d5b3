"""Managed TensorRT engines: a per-version cache of plans built from ``model.onnx``, built once per key.

A plan only runs on the GPU kind (compute capability) and TensorRT version it was built for, at the
precision and batch profile it was built with. The cache keeps one plan per such key in the ONNX
model's version folder (``1/.engines/``, which Triton ignores), named by the key, with a JSON sidecar
recording the sha256 of the ``model.onnx`` it was built from. A plan whose sidecar disagrees with the
current ``model.onnx`` (the model was re-exported) or with its key is never loaded: it is rebuilt.
Plans of other keys (another GPU kind sharing the volume) are never touched.

Concurrent starters sharing a volume build a missing plan once: the builder holds an exclusive
``flock`` on ``<name>.lock``; the others wait on it and then find the plan. A build writes a temp file
in the same folder and renames it into place, so a crash or a failed build leaves no partial plan.

Nothing here imports TensorRT: the build itself is a callable handed in (``export.tensorrt.build_engine``
on a GPU, a fake in the tests).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from modelrepo.config import sha256_file
from modelrepo.errors import RepositoryError

logger = logging.getLogger(__name__)

ENGINE_DIR = ".engines"
PLAN_SUFFIX = ".plan"
PRECISIONS = ("fp16", "fp32", "int8", "bf16")
#: the config.pbtxt parameter choosing the precision of an engine built from an ONNX model
PRECISION_PARAM = "tensorrt.precision"
DEFAULT_PRECISION = "fp16"
#: operator pins (``--inference-precision``, OpenVINO spelling) -> TensorRT precision
PIN_PRECISIONS = {"f32": "fp32", "f16": "fp16", "bf16": "bf16", "fp32": "fp32", "fp16": "fp16", "int8": "int8"}

_CC_RE = re.compile(r"^(\d+)\.(\d)$")
_UNSAFE = re.compile(r"[^0-9A-Za-z.-]")
_NAME_RE = re.compile(
    r"^sm(?P<cc>\d{2,3})_trt(?P<trt>[0-9A-Za-z.-]+)_(?P<prec>[a-z0-9]+)_b(?P<lo>\d+)-(?P<opt>\d+)-(?P<hi>\d+)"
    r"_(?P<shape>\d+(?:x\d+)*)\.plan$"
)

#: ``build(onnx_path, out_path)`` writes a serialized plan to ``out_path`` (a temp file) or raises
BuildFn = Callable[[Path, Path], None]


@dataclass(frozen=True)
class EngineKey:
    """What a plan is valid for; its ``filename`` names it in the cache (safe characters only)."""

    compute_capability: str  # "9.0"
    trt_version: str  # "10.3.0"
    precision: str  # fp16 | fp32 | int8 | bf16
    min_batch: int
    opt_batch: int
    max_batch: int
    input_shape: tuple[int, ...]  # without the batch axis, e.g. (3, 224, 224)

    def __post_init__(self) -> None:
        if not _CC_RE.match(self.compute_capability):
            raise ValueError(f"compute capability must look like '9.0', got {self.compute_capability!r}")
        safe = _UNSAFE.sub("-", self.trt_version)
        if not safe or safe.strip(".-") != safe:
            raise ValueError(f"unusable TensorRT version {self.trt_version!r}")
        object.__setattr__(self, "trt_version", safe)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(f"batch profile must be 1 <= min <= opt <= max, got "
                             f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        shape = tuple(int(d) for d in self.input_shape)
        if not shape or any(d < 1 for d in shape):
            raise ValueError(f"input shape must be positive dims, got {self.input_shape!r}")
        object.__setattr__(self, "input_shape", shape)

    @property
    def sm(self) -> str:
        """``sm90`` for compute capability 9.0."""
        return "sm" + self.compute_capability.replace(".", "")

    @property
    def stem(self) -> str:
        shape = "x".join(map(str, self.input_shape))
        return (f"{self.sm}_trt{self.trt_version}_{self.precision}_"
                f"b{self.min_batch}-{self.opt_batch}-{self.max_batch}_{shape}")

    @property
    def filename(self) -> str:
        return self.stem + PLAN_SUFFIX

    @property
    def profile(self) -> tuple[int, int, int]:
        return self.min_batch, self.opt_batch, self.max_batch

    @classmethod
    def from_filename(cls, name: str) -> EngineKey:
        """The key a cache filename names; ValueError for anything else."""
        m = _NAME_RE.match(name)
        if m is None:
            raise ValueError(f"{name!r} is not an engine cache filename")
        cc = m["cc"]
        return cls(
            compute_capability=f"{cc[:-1]}.{cc[-1]}", trt_version=m["trt"], precision=m["prec"],
            min_batch=int(m["lo"]), opt_batch=int(m["opt"]), max_batch=int(m["hi"]),
            input_shape=tuple(int(d) for d in m["shape"].split("x")),
        )

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        return d


def batch_profile(max_batch: int) -> tuple[int, int, int]:
    """The service's optimisation profile for a model: batch 1, max/2 (optimised for), max."""
    hi = max(1, int(max_batch))
    return 1, max(1, hi // 2), hi


def engine_precision(params: Mapping[str, str], pin: str | None = None) -> str:
    """The operator's pin, else the config's ``tensorrt.precision``, else fp16."""
    raw = pin or params.get(PRECISION_PARAM) or DEFAULT_PRECISION
    precision = PIN_PRECISIONS.get(raw)
    if precision is None:
        raise RepositoryError(f"{PRECISION_PARAM}={raw!r} is not a TensorRT precision: use one of "
                              f"{', '.join(PRECISIONS)}")
    return precision


def engine_key(cc: str, trt_version: str, params: Mapping[str, str], max_batch: int,
               input_shape: tuple[int, ...], pin: str | None = None) -> EngineKey:
    """The key the service asks for (the exporter's ahead-of-time build uses the same one)."""
    lo, opt, hi = batch_profile(max_batch)
    return EngineKey(cc, trt_version, engine_precision(params, pin), lo, opt, hi, tuple(input_shape))


def engine_dir(version_dir: Path) -> Path:
    return version_dir / ENGINE_DIR


def cached_keys(version_dir: Path) -> list[EngineKey]:
    """Keys of the plans in a version's cache (every GPU kind), for listing; sidecars are not checked."""
    d = engine_dir(version_dir)
    if not d.is_dir():
        return []
    keys = []
    for p in sorted(d.glob("*" + PLAN_SUFFIX)):
        with contextlib.suppress(ValueError):
            keys.append(EngineKey.from_filename(p.name))
    return keys


def sidecar_path(plan: Path) -> Path:
    return plan.with_suffix(".json")


def read_sidecar(plan: Path) -> dict[str, object] | None:
    try:
        data = json.loads(sidecar_path(plan).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def plan_problem(plan: Path, key: EngineKey, onnx_sha256: str) -> str | None:
    """Why ``plan`` must not be loaded for ``key`` built from an ONNX file with ``onnx_sha256`` (None: it may)."""
    if not plan.is_file():
        return "not built yet"
    meta = read_sidecar(plan)
    if meta is None:
        return f"{sidecar_path(plan).name} is missing or unreadable"
    if meta.get("key") != key.to_json():
        return f"its sidecar describes another key ({meta.get('key')})"
    if meta.get("onnx_sha256") != onnx_sha256:
        return "model.onnx changed since it was built (re-exported)"
    if meta.get("plan_bytes") != plan.stat().st_size:
        return "its size differs from the one recorded when it was built"
    return None


@contextlib.contextmanager
def exclusive_lock(path: Path, log: logging.Logger = logger) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (per open file: excludes threads and processes alike)."""
    with path.open("a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building %s (lock %s)", path.stem, path)
            t0 = time.monotonic()
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            log.info("lock %s acquired after %.1fs", path.name, time.monotonic() - t0)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _write_json_atomic(path: Path, data: dict[str, object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_leftovers(d: Path, key: EngineKey) -> None:
    """Temp files of this key left by a builder that died (we hold the key's lock: none is in use)."""
    for p in d.glob(f".{key.stem}.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


def _build_locked(onnx_path: Path, key: EngineKey, plan: Path, sha: str, build: BuildFn,
                  log: logging.Logger) -> None:
    """Under the key's lock: build into a temp file, rename it into place, then write the sidecar."""
    d = plan.parent
    _remove_leftovers(d, key)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{key.stem}.", suffix=".tmp", dir=d)
    os.close(fd)
    tmp = Path(tmp_name)
    log.info("building TensorRT engine %s from %s (this takes minutes)", key.filename, onnx_path)
    t0 = time.monotonic()
    try:
        build(onnx_path, tmp)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise RuntimeError(f"the TensorRT build wrote no plan for {key.filename}")
        seconds = time.monotonic() - t0
        # the old sidecar first: a crash between the two renames must not pair a new plan with it
        with contextlib.suppress(FileNotFoundError):
            sidecar_path(plan).unlink()
        os.replace(tmp, plan)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _write_json_atomic(sidecar_path(plan), {
        "key": key.to_json(),
        "onnx": onnx_path.name,
        "onnx_sha256": sha,
        "plan_bytes": plan.stat().st_size,
        "build_seconds": round(seconds, 3),
        "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "host": os.uname().nodename,
    })
    log.info("built TensorRT engine %s in %.1fs", plan, seconds)


def get_or_build(onnx_path: Path, key: EngineKey, build: BuildFn, log: logging.Logger = logger) -> Path:
    """The cached plan for ``key`` built from ``onnx_path``; built (once, under a file lock) if missing or stale."""
    if not onnx_path.is_file():
        raise RepositoryError(f"{onnx_path} is missing: cannot build a TensorRT engine from it")
    d = engine_dir(onnx_path.parent)
    d.mkdir(exist_ok=True)
    plan = d / key.filename
    sha = sha256_file(onnx_path)
    if plan_problem(plan, key, sha) is None:
        log.info("using cached TensorRT engine %s", plan)
        return plan
    with exclusive_lock(d / f"{key.stem}.lock", log):
        problem = plan_problem(plan, key, sha)  # another starter may have built it while we waited
        if problem is None:
            log.info("using TensorRT engine %s (built by another process)", plan)
            return plan
        if plan.exists():
            log.warning("TensorRT engine %s is stale (%s): rebuilding it", plan, problem)
        _build_locked(onnx_path, key, plan, sha, build, log)
    return plan


def select_plan(cc_model_filenames: Mapping[str, str], default: str, cc: str) -> str:
    """Triton's choice of plan file for compute capability ``cc``.

    The map's entry for ``cc``; with no map, ``default``. A map without an entry for this GPU is refused
    (its plans were built for other GPU kinds and would not deserialize here).
    """
    if not cc_model_filenames:
        return default
    name = cc_model_filenames.get(cc)
    if name:
        if "/" in name or "\\" in name or name in (".", ".."):
            raise RepositoryError(f"cc_model_filenames[{cc!r}] = {name!r}: a file name inside the version folder, "
                                  "not a path")
        return name
    avail = ", ".join(f"{k} ({v})" for k, v in sorted(cc_model_filenames.items()))
    raise RepositoryError(
        f"no TensorRT plan for this GPU (compute capability {cc}): cc_model_filenames has plans for {avail}; "
        "build one on this GPU kind with `python -m export --trt` (the ONNX model is served meanwhile)"
    )


def plan_param(cc: str, field: str) -> str:
    """Per-plan provenance in a multi-GPU ``NAME_trt`` config, e.g. ``tensorrt.sm90.version``."""
    return f"tensorrt.sm{cc.replace('.', '')}.{field}"


def cc_map(model_dir: Path) -> dict[str, str]:
    """The ``cc_model_filenames`` of ``model_dir``'s config.pbtxt ({} when it has none)."""
    from modelrepo.config import read_config

    return dict(read_config(model_dir).cc_model_filenames)


def plan_for_gpu(model_file: Path, params: Mapping[str, str], cc: str, trt_version: str) -> Path:
    """The plan of ``model_file``'s version folder that runs on this GPU, or a RepositoryError saying why none does.

    With ``cc_model_filenames`` the map picks the file (per-plan provenance ``tensorrt.smXY.version``);
    without, ``model_file`` itself, checked against the config's ``tensorrt.compute_capability``.
    """
    ccs = cc_map(model_file.parent.parent)
    built_cc: str | None
    if ccs:
        plan = model_file.parent / select_plan(ccs, model_file.name, cc)
        built_cc, built_trt = cc, params.get(plan_param(cc, "version")) or params.get("tensorrt.version")
    else:
        plan = model_file
        built_cc, built_trt = params.get("tensorrt.compute_capability"), params.get("tensorrt.version")
    if built_cc and built_cc != cc:
        raise RepositoryError(
            f"plan {plan} was built for compute capability {built_cc}, this GPU is {cc}: rebuild it "
            "with `python -m export --trt` on this GPU kind (the ONNX model is served meanwhile)"
        )
    if built_trt and built_trt != trt_version:
        raise RepositoryError(f"plan {plan} was built with TensorRT {built_trt}, this is {trt_version}: rebuild it")
    if not plan.is_file():
        raise RepositoryError(f"plan {plan} (for compute capability {cc}) is missing")
    return plan
