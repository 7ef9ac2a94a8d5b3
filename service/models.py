"""Model instances (runtime + batcher + preprocessing) and the manager that loads and swaps them."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from service.batching import Batcher, BatcherConfig, BatchStats
from service.config import Settings
from service.errors import ModelNotFound, ModelNotReady, RepositoryError, ServiceError
from service.guards import checked
from service.metrics import Metrics
from service.pipeline import Pipeline, build_pipeline
from service.repository import FALLBACK_PARAM, ModelEntry, Preprocess, check_model_name, read_config, scan_model
from service.routing import Served, routes
from service.runtimes import Choice, LoadSpec, Runtime, choose, load_choice
from service.runtimes.faults import stall_load, with_faults
from service.runtimes.registry import registered

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_QUEUE = 256


@dataclass
class ModelInstance:
    name: str
    version: int
    entry: ModelEntry
    #: the instance group: runtime instances fed by the one batcher (all the same runtime and device)
    runtimes: list[Runtime]
    batcher: Batcher
    pipeline: Pipeline
    labels: list[str]
    preprocess: Preprocess
    input_shape: tuple[int, ...]
    default_timeout_s: float
    weights: str
    runtime_reason: str = ""
    loaded_at: float = field(default_factory=time.time)

    @property
    def runtime(self) -> Runtime:
        return self.runtimes[0]

    @property
    def runtime_tag(self) -> str:
        """Runtime and precision in use, e.g. ``openvino-cpu bf16``: the model_ready metric's runtime label."""
        return f"{self.runtime.label} {self.runtime.precision}"

    def describe(self) -> dict[str, object]:
        cfg = self.batcher.config
        params = self.entry.params
        return {
            "name": self.name,
            "version": str(self.version),
            "platform": self.entry.platform,
            "runtime": self.runtime.label,
            "precision": self.runtime.precision,
            "device": self.runtime.device_kind,
            "runtime_choice": self.runtime_reason,
            "instances": len(self.runtimes),
            "decode": self.pipeline.kind,
            "state": "ready",
            "input": {"name": "input", "shape": list(self.input_shape)},
            "num_classes": len(self.labels),
            "preprocess": {
                "resize_shorter": self.preprocess.resize_shorter,
                "crop": self.preprocess.crop,
                "mean": list(self.preprocess.mean),
                "std": list(self.preprocess.std),
                "interpolation": self.preprocess.interpolation,
            },
            "batching": {
                "max_batch_size": cfg.max_batch_size,
                "preferred_batch_sizes": cfg.preferred_batch_sizes,
                "max_queue_delay_ms": cfg.max_queue_delay_s * 1000,
                "max_queue_size": cfg.max_queue_size,
                "dispatch_when_idle": cfg.dispatch_when_idle,
                "default_timeout_s": self.default_timeout_s,
            },
            "weights": self.weights,
            "source": {k: v for k, v in params.items()
                       if k.startswith(("source.", "export.", "tensorrt.", "openvino.", "serve."))},
            "queue_depth": self.batcher.queue_depth,
        }


def _versions_to_serve(entry: ModelEntry) -> list[int]:
    policy = entry.config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return list(entry.versions)
    if kind == "specific":
        wanted = [v for v in policy.specific.versions if v in entry.versions]
        if not wanted:
            raise RepositoryError(f"model {entry.name!r}: none of the versions in version_policy exists")
        return wanted
    n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
    return sorted(entry.versions)[-n:]


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repo = Path(settings.model_repo)
        self._instances: dict[str, dict[int, ModelInstance]] = {}
        self.states: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: a model that cannot load here -> the model named by its FALLBACK_PARAM (a TensorRT plan -> its ONNX)
        self.fallbacks: dict[str, str] = {}
        #: --runtime auto: a model name -> (the variant on a better runtime that serves it, why)
        self.routes: dict[str, tuple[str, str]] = {}
        # Loading/warming a model is long blocking work: its own thread, never the event loop.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")

    # -- lookups -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(set(self.states) | set(self._instances))

    def get(self, name: str, version: str | None = None) -> ModelInstance:
        if name in self.routes and not version:
            name = self.routes[name][0]
        versions = self._instances.get(name)
        if not versions and name in self.fallbacks:
            return self.get(self.fallbacks[name], version)
        if not versions:
            state = self.states.get(name)
            if state is None:
                raise ModelNotFound(
                    f"unknown model {name!r}; served models: {', '.join(self.names()) or 'none'} (GET /models)"
                )
            raise ModelNotReady(f"model {name!r} is not ready ({state})", retry_after_s=2)
        if version is None or version == "":
            return versions[max(versions)]
        if not version.isdigit() or int(version) not in versions:
            raise ModelNotFound(
                f"model {name!r} has no loaded version {version!r}; loaded: "
                f"{', '.join(map(str, sorted(versions)))}"
            )
        return versions[int(version)]

    def instances(self, name: str) -> list[ModelInstance]:
        return [self._instances[name][v] for v in sorted(self._instances.get(name, {}))]

    def not_ready(self) -> dict[str, str]:
        """Models that should serve but do not; an operator's explicit unload is not a failure, and a
        plan that cannot run here is served by its ONNX model."""
        return {n: s for n, s in self.states.items() if s not in ("ready", "unloaded") and n not in self.fallbacks}

    # -- loading -----------------------------------------------------------------------------
    def configured_names(self) -> list[str]:
        if self.settings.models:
            return [check_model_name(n) for n in self.settings.models]
        if not self.repo.is_dir():
            raise RepositoryError(f"model repository {self.repo} does not exist: run `python -m export` first")
        return sorted(p.name for p in self.repo.iterdir() if (p / "config.pbtxt").is_file())

    def _build(self, name: str) -> list[ModelInstance]:
        """Blocking: read the model folder, load each served version and warm it up."""
        entry = scan_model(self.repo / name)
        out: list[ModelInstance] = []
        for version in _versions_to_serve(entry):
            out.append(self._build_version(entry, version))
        return out

    def _build_version(self, entry: ModelEntry, version: int) -> ModelInstance:
        s, cfg = self.settings, entry.config
        if not cfg.input or len(cfg.input[0].dims) != 3:
            raise RepositoryError(f"model {entry.name!r}: expected one input with dims [3, H, W]")
        input_shape = tuple(int(d) for d in cfg.input[0].dims)
        params = entry.params
        pp = Preprocess.from_params(params, list(input_shape))
        if pp.crop != input_shape[-1]:
            raise RepositoryError(f"model {entry.name!r}: preprocess.crop {pp.crop} != input size {input_shape[-1]}")
        model_file = entry.model_file(version)
        if not model_file.is_file():
            raise RepositoryError(f"model {entry.name!r} version {version}: {model_file.name} is missing")
        spec = LoadSpec(model_file=model_file, params=params, device=s.device, threads=s.intra_op_threads,
                        input_shape=input_shape,
                        precision=None if s.inference_precision == "auto" else s.inference_precision)
        runtimes, choice = self._load_instances(entry, version, spec)
        runtime = runtimes[0]
        max_bs = s.max_batch_size or cfg.max_batch_size or 1
        dyn = cfg.dynamic_batching
        qp = dyn.default_queue_policy
        bcfg = BatcherConfig(
            max_batch_size=max_bs,
            max_queue_delay_s=(
                s.max_queue_delay_ms / 1000 if s.max_queue_delay_ms is not None
                else (dyn.max_queue_delay_microseconds / 1e6 if cfg.HasField("dynamic_batching") else 0.0)
            ),
            preferred_batch_sizes=[b for b in dyn.preferred_batch_size if b <= max_bs],
            max_queue_size=s.max_queue_size or qp.max_queue_size or DEFAULT_QUEUE,
            dispatch_when_idle=(
                s.dispatch_when_idle if s.dispatch_when_idle is not None else runtime.device_kind == "cpu"
            ),
        )
        if s.warmup:
            t0 = time.monotonic()
            for rt in runtimes:
                rt.warmup(list(range(1, max_bs + 1)), input_shape)
            logger.info("warmed up %s v%d (%d instance%s) at batch sizes 1..%d in %.1f s", entry.name, version,
                        len(runtimes), "s" if len(runtimes) > 1 else "", max_bs, time.monotonic() - t0)
        labels = entry.labels()
        out_dims = list(cfg.output[0].dims) if cfg.output else []
        n_classes = int(out_dims[-1]) if out_dims else (len(labels) if labels else 0)
        if labels is None or len(labels) != n_classes:
            if labels is not None:
                logger.warning("model %s: labels.txt has %d lines for %d classes; using class_<i>",
                               entry.name, len(labels), n_classes)
            labels = [f"class_{i}" for i in range(n_classes)]
        weights = params.get("source.weights", "unknown")
        if weights == "random":
            logger.warning("model %s v%d has RANDOM weights: its predictions are meaningless", entry.name, version)
        timeout = s.request_timeout_s or (qp.default_timeout_microseconds / 1e6) or DEFAULT_TIMEOUT_S
        name = entry.name
        metrics = self.metrics

        def on_batch(stats: BatchStats) -> None:
            metrics.child(metrics.batch_size, name).observe(stats.size)
            metrics.child(metrics.compute_duration, name).observe(stats.compute_s)
            for q in stats.queue_s:
                metrics.child(metrics.queue_duration, name).observe(q)

        pipeline = build_pipeline(runtimes, pp, s.max_image_pixels, s.gpu_decode)
        if s.warmup:
            pipeline.warmup()
        logger.info("model %s v%d: %s", name, version,
                    f"JPEGs decoded and preprocessed on {runtime.device_kind} in the batch (torchvision "
                    f"decode_jpeg{', nvJPEG' if runtime.device_kind == 'gpu' else ''}), other formats by Pillow"
                    if pipeline.kind == "gpu-jpeg" else "images decoded and preprocessed by Pillow")
        # Garbage logits (NaN/Inf, wrong shape) fail their batch, never a 200; a hung batch retires its instance.
        steps = [checked(step, n_classes) for step in pipeline.steps]
        batcher = Batcher(name, steps, bcfg, on_batch, admission_control=s.admission_control,
                          watchdog_s=s.watchdog_s)
        batcher.on_unhealthy = partial(self._unhealthy, name, version, batcher)
        return ModelInstance(
            name=name, version=version, entry=entry, runtimes=runtimes, batcher=batcher, pipeline=pipeline,
            labels=labels, preprocess=pp, input_shape=input_shape,
            default_timeout_s=timeout, weights="random" if weights == "random" else weights,
            runtime_reason=choice.reason,
        )

    def _load_instances(self, entry: ModelEntry, version: int, spec: LoadSpec) -> tuple[list[Runtime], Choice]:
        """The version's instance group: ``--instances``, else config.pbtxt's instance_group count (Triton's
        meaning: that many runtime instances behind one batcher); CPU instances split the threads."""
        s = self.settings
        count = s.instances or sum(g.count for g in entry.config.instance_group) or 1
        choice = choose(entry.platform, s.runtime, s.device)
        if count > 1 and choice.device == "cpu" and not spec.threads:
            spec = dataclasses.replace(spec, threads=max(1, (os.cpu_count() or 1) // count))  # share the cores
        if s.fault_file is not None:
            stall_load(s.fault_file, f"model {entry.name} v{version}")
        runtimes = [load_choice(choice, spec) for _ in range(count)]
        runtime = runtimes[0]
        logger.info("model %s v%d: runtime %s, %s, %d instance%s (%s)", entry.name, version, runtime.label,
                    runtime.precision, count, "s" if count > 1 else "", choice.reason)
        if s.fault_file is not None:
            logger.warning("FAULT INJECTION is on for model %s v%d: its outputs follow %s (--fault-file; for tests "
                           "and drills only, never in production)", entry.name, version, s.fault_file)
            runtimes = with_faults(runtimes, s.fault_file)
        return runtimes, choice

    async def load(self, name: str) -> list[ModelInstance]:
        """(Re)load a model; the old instances keep serving until the new ones are warm."""
        check_model_name(name)
        if not (self.repo / name / "config.pbtxt").is_file():
            raise ModelNotFound(f"no model {name!r} in repository {self.repo} (no {name}/config.pbtxt)")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name not in self._instances:
                self.states[name] = "loading"
            try:
                new = await asyncio.get_running_loop().run_in_executor(self._loader, self._build, name)
            except ServiceError as e:
                self._fail(name, e.message)
                raise
            except Exception as e:
                self._fail(name, f"{type(e).__name__}: {e}")
                raise RepositoryError(f"model {name!r} failed to load: {type(e).__name__}: {e}") from e
            for inst in new:
                inst.batcher.start()
            old = self._instances.get(name, {})
            self._instances[name] = {inst.version: inst for inst in new}
            self.states[name] = "ready"
            self.fallbacks.pop(name, None)
            for inst in old.values():
                self.metrics.child(self.metrics.model_ready, name, str(inst.version), inst.runtime_tag).set(0)
            for inst in new:
                self.metrics.child(self.metrics.model_ready, name, str(inst.version), inst.runtime_tag).set(1)
            logger.info("model %s ready: versions %s on %s", name, [i.version for i in new],
                        new[0].runtime_tag if new else "-")
            self._reroute()
        await self._retire(old.values())
        return new

    def _reroute(self) -> None:
        """Recompute which names a better-placed variant serves (--runtime auto only)."""
        if self.settings.runtime != "auto":
            return
        loaded = {
            name: Served(inst.runtime.name, "cuda" if inst.runtime.device_kind == "gpu" else "cpu", inst.entry.params)
            for name, versions in self._instances.items() if versions
            for inst in [versions[max(versions)]]
        }
        new = routes(loaded, {n: i.ranks for n, i in registered().items()})
        for base, (variant, why) in new.items():
            if self.routes.get(base, ("",))[0] != variant:
                logger.info("model %s is served by %s: %s", base, variant, why)
        self.routes = new

    def _unhealthy(self, name: str, version: int, batcher: Batcher, reason: str) -> None:
        """The batcher's watchdog retired a hung instance: readiness 503 with the reason until a reload."""
        inst = self._instances.get(name, {}).get(version)
        if inst is None or inst.batcher is not batcher:
            return  # an instance already replaced or unloaded: the model's state is the new one's
        self.states[name] = f"unhealthy: version {version}: {reason}; reload it (POST /models/{name}/load)"
        self.metrics.child(self.metrics.model_ready, name, str(version), inst.runtime_tag).set(0)

    def _fail(self, name: str, reason: str) -> None:
        if name in self._instances:  # a failed reload keeps the old instances serving
            logger.error("model %s failed to reload, the loaded version keeps serving: %s", name, reason)
            return
        base = self._fallback_for(name)
        if base is not None:
            logger.warning("model %s cannot run here (%s); requests for it are served by %s", name, reason, base)
            self.fallbacks[name] = base
            self.states[name] = f"fallback: served by {base} ({reason})"
            return
        logger.error("model %s failed to load: %s", name, reason)
        self.states[name] = f"failed: {reason}"

    def _fallback_for(self, name: str) -> str | None:
        """The model named by ``name``'s FALLBACK_PARAM, when it is in the repository (data, not a name suffix)."""
        try:
            params = read_config(self.repo / name).parameters
            base = params[FALLBACK_PARAM].string_value if FALLBACK_PARAM in params else ""
            if not base or base == name:
                return None
            check_model_name(base)
            read_config(self.repo / base)
            return base
        except ServiceError:
            return None

    async def unload(self, name: str) -> None:
        if name not in self._instances and name not in self.states:
            raise ModelNotFound(f"unknown model {name!r}; served models: {', '.join(self.names()) or 'none'}")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            old = self._instances.pop(name, {})
            self.states[name] = "unloaded"
            for inst in old.values():
                self.metrics.child(self.metrics.model_ready, name, str(inst.version), inst.runtime_tag).set(0)
            self._reroute()
        await self._retire(old.values())
        logger.info("model %s unloaded", name)

    async def _retire(self, instances: object) -> None:
        for inst in list(instances):  # type: ignore[call-overload]
            await inst.batcher.drain_and_stop()
            for i, rt in enumerate(inst.runtimes):
                if i not in inst.batcher.retired:  # a hung instance's thread is still inside it: never closed
                    rt.close()

    async def load_all(self) -> None:
        for name in self.configured_names():
            self.states.setdefault(name, "pending")
        for name in self.configured_names():
            try:
                await self.load(name)
            except ServiceError as e:
                logger.error("could not load %s: %s", name, e.message)

    async def close(self) -> None:
        for name in list(self._instances):
            old = self._instances.pop(name)
            await self._retire(old.values())
        self._loader.shutdown(wait=False)

    def default_model(self) -> str:
        """--default-model, else the first model found at startup (no disk access per request)."""
        if self.settings.default_model:
            return self.settings.default_model
        if not self.states:
            raise ModelNotFound("no model is served: export one into the repository and load it")
        return min(self.states)
