"""The runtime registry: which runtimes serve which model kind on which device, and which one to pick.

A model's kind is its Triton ``platform`` (``onnxruntime_onnx``, ``tensorrt_plan``,
``pytorch_libtorch``) or ``backend`` (``openvino``, ...). Each runtime registers the kinds it serves,
the devices it runs on, its rank per device (lower is better, what ``--runtime auto`` uses) and a
probe that says why it cannot run here (package missing, no GPU). Choosing is data, not
``if name.endswith(...)``: adding a runtime is one module and one ``register(...)`` call.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from modelrepo.errors import RepositoryError
from service.errors import ConfigError
from service.runtimes.base import Runtime

logger = logging.getLogger(__name__)


Probe = Callable[[str], "str | None"]


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    #: model kinds it serves: Triton platforms, or backends for backend-only kinds (``openvino``)
    serves: tuple[str, ...]
    #: device -> rank for ``auto`` (lower is better); the devices it can run on
    ranks: dict[str, int]
    #: ``"module:Class"``, imported only when chosen
    target: str
    #: device -> why it cannot run there (None: it can). Cached per process.
    probe: Probe
    #: one phrase for the log line that explains a choice
    why: str = ""
    #: why this runtime has never been run by the project's tests ("" when it has): /models and the log say so
    untested: str = ""

    def create(self) -> Runtime:
        module, cls = self.target.split(":")
        return getattr(importlib.import_module(module), cls)()  # type: ignore[no-any-return,unused-ignore]


@dataclass(frozen=True)
class Choice:
    info: RuntimeInfo
    device: str
    reason: str


_REGISTRY: dict[str, RuntimeInfo] = {}
_logged: set[str] = set()


def register(info: RuntimeInfo) -> RuntimeInfo:
    _REGISTRY[info.name] = info
    return info


def registered() -> dict[str, RuntimeInfo]:
    return dict(_REGISTRY)


def _log_once(msg: str, *args: object) -> None:
    key = msg % args
    if key not in _logged:
        _logged.add(key)
        logger.info(msg, *args)


def candidates(kind: str, preference: str = "auto", device: str = "auto") -> tuple[list[Choice], list[str]]:
    """Runtimes that can serve ``kind`` here, best first, and why each other one cannot.

    ``device`` "auto" tries the GPU first, then the CPU; ``preference`` "auto" takes every registered
    runtime in rank order, a name takes only that one.
    """
    devices = ["cuda", "cpu"] if device == "auto" else [device]
    ok: list[Choice] = []
    skipped: list[str] = []
    for dev in devices:
        ranked = sorted(
            (i for i in _REGISTRY.values() if kind in i.serves and dev in i.ranks), key=lambda i: i.ranks[dev]
        )
        for info in ranked:
            if preference not in ("auto", info.name):
                continue
            problem = info.probe(dev)
            if problem:
                skipped.append(f"{info.name} on {dev}: {problem}")
                continue
            order = " > ".join(i.name for i in ranked)
            reason = (f"--runtime {preference}" if preference != "auto"
                      else f"auto: best available for {kind} on {dev} ({order}){'; ' + info.why if info.why else ''}")
            ok.append(Choice(info, dev, reason))
    return ok, skipped


def choose(kind: str, preference: str = "auto", device: str = "auto") -> Choice:
    """The runtime to load a model of ``kind`` with; RepositoryError (model not ready) with the reasons if none."""
    ok, skipped = candidates(kind, preference, device)
    for s in skipped:
        _log_once("runtime %s (skipped for %s models)", s, kind)
    if ok:
        return ok[0]
    servers = sorted(i.name for i in _REGISTRY.values() if kind in i.serves)
    if not servers:
        raise RepositoryError(
            f"no registered runtime serves {kind!r} models (registered: {', '.join(sorted(_REGISTRY))}); "
            "supported kinds: " + ", ".join(sorted({k for i in _REGISTRY.values() for k in i.serves}))
        )
    if preference != "auto" and preference not in servers:
        raise RepositoryError(
            f"--runtime {preference} does not serve {kind!r} models (these do: {', '.join(servers)}); "
            "use --runtime auto"
        )
    where = "" if device == "auto" else f" with --device {device}"
    raise RepositoryError(f"no runtime can serve this {kind} model here{where}: " + "; ".join(skipped))


def require(preference: str) -> None:
    """At start: an explicitly requested runtime must be registered and runnable on some device."""
    if preference == "auto":
        return
    info = _REGISTRY.get(preference)
    if info is None:
        raise ConfigError(f"--runtime {preference!r} is not a registered runtime: use auto or one of "
                          f"{', '.join(sorted(_REGISTRY))}")
    problems = [f"{dev}: {p}" for dev in info.ranks if (p := info.probe(dev))]
    if len(problems) == len(info.ranks):
        raise ConfigError(f"--runtime {preference} cannot run on this machine ({'; '.join(problems)})")


# -- probes ------------------------------------------------------------------------------------
@cache
def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@cache
def gpu_visible() -> bool:
    """An NVIDIA GPU this process can use (NVML when installed, else the driver's /proc entry)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return bool(pynvml.nvmlDeviceGetCount())
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 - no NVML, no driver: fall through to the driver's files
        gpus = "/proc/driver/nvidia/gpus"
        return os.path.isdir(gpus) and bool(os.listdir(gpus))


def needs(module: str, install: str, gpu: bool = False) -> Probe:
    """A probe: the Python package ``module`` must import; on ``cuda`` a GPU must be visible."""

    @cache
    def probe(device: str) -> str | None:
        if not has_module(module):
            return f"the {module} package is not installed ({install})"
        if device == "cuda" and not gpu_visible():
            return "no NVIDIA GPU is visible"
        return None

    return probe


@cache
def _ort_cuda(device: str) -> str | None:
    if device != "cuda":
        return None
    if not gpu_visible():
        return "no NVIDIA GPU is visible"
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return "this onnxruntime build has no CUDA execution provider (pip install onnxruntime-gpu)"
    return None


register(RuntimeInfo(
    name="tensorrt", serves=("tensorrt_plan", "onnxruntime_onnx"), ranks={"cuda": 0},
    target="service.runtimes.tensorrt:TensorRTRuntime", probe=needs("tensorrt", "pip install '.[gpu]'", gpu=True),
    why="a plan built for this GPU (for an ONNX model: built once into its version's .engines/ cache)",
    untested="UNTESTED: TensorRT has never run in this project's CI or GPU checks (no TensorRT on the lent GPUs); "
             "pin --runtime onnxruntime or pytorch if it misbehaves",
))
register(RuntimeInfo(
    name="openvino", serves=("onnxruntime_onnx", "openvino"), ranks={"cpu": 0},
    target="service.runtimes.openvino:OpenVinoRuntime", probe=needs("openvino", "pip install openvino"),
    why="OpenVINO runs BF16 (AMX / AVX-512 BF16) and INT8 (VNNI) kernels where the CPU has them",
))
register(RuntimeInfo(
    name="onnxruntime", serves=("onnxruntime_onnx",), ranks={"cuda": 1, "cpu": 1},
    target="service.runtimes.onnxruntime:OnnxRuntime",
    probe=lambda device: _ort_cuda(device) if has_module("onnxruntime") else "onnxruntime is not installed",
))
register(RuntimeInfo(
    name="pytorch", serves=("pytorch_libtorch",), ranks={"cuda": 2, "cpu": 2},
    target="service.runtimes.pytorch:PyTorchRuntime", probe=needs("torch", "pip install torch", gpu=True),
    why="TorchScript, FP16 channels_last with CUDA graphs on a GPU",
))
