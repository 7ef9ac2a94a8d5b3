"""Loading one model version (blocking; the manager runs it on its loader thread): runtimes, warm-up,
pipeline, output checks and the batcher, as ``resolve`` decided."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable

from modelrepo.errors import RepositoryError
from modelrepo.layout import ModelEntry
from service.config import Settings
from service.engine.accuracy_check import check_accuracy
from service.engine.batching import Batcher, BatchStats
from service.engine.guards import checked
from service.engine.instance import ModelInstance
from service.engine.pipeline import build_pipeline
from service.engine.resolve import Resolved, batcher_config, class_labels, resolve
from service.engine.warmup import warm_up, warmup_batch_sizes
from service.metrics import Metrics
from service.runtimes import Choice, LoadSpec, Runtime, choose, load_choice
from service.runtimes.faults import stall_load, with_faults

logger = logging.getLogger("service.engine.manager")

#: told when a batcher's watchdog retires a hung instance: (version, batcher, reason)
OnUnhealthy = Callable[[int, Batcher, str], None]


def load_version(entry: ModelEntry, version: int, s: Settings, metrics: Metrics,
                 on_unhealthy: OnUnhealthy) -> ModelInstance:
    res = resolve(entry.name, entry.config, entry.params, s)
    model_file = entry.model_file(version)
    if not model_file.is_file():
        raise RepositoryError(f"model {entry.name!r} version {version}: {model_file.name} is missing")
    spec = LoadSpec(model_file=model_file, params=entry.params, device=s.device, threads=s.intra_op_threads,
                    input_shape=res.input_shape,
                    precision=None if s.inference_precision == "auto" else s.inference_precision,
                    cache_dir=s.compile_cache_dir())
    runtimes, choice = load_instances(entry, version, spec, res, s)
    runtimes, accuracy = check_accuracy(entry, version, runtimes, spec, res.max_batch_size, s.accept_accuracy_loss,
                                        lambda pinned: load_instances(entry, version, pinned, res, s)[0])
    runtime = runtimes[0]
    bcfg = batcher_config(entry.config, s, res.max_batch_size, runtime.device_kind)
    if s.warmup:
        sizes = warmup_batch_sizes(s.warmup_batch_sizes, runtime.device_kind, res.max_batch_size)
        warm_up(entry.name, version, runtimes, sizes, res.input_shape, res.max_batch_size)
    labels, why = class_labels(entry.labels(), entry.config)
    if why:
        logger.warning("model %s: %s", entry.name, why)
    if res.weights == "random":
        logger.warning("model %s v%d has RANDOM weights: its predictions are meaningless", entry.name, version)
    pipeline = build_pipeline(runtimes, res.preprocess, s.max_image_pixels, s.gpu_decode)
    if s.warmup:
        pipeline.warmup()
    logger.info("model %s v%d: %s", entry.name, version,
                f"JPEGs decoded and preprocessed on {runtime.device_kind} in the batch (torchvision "
                f"decode_jpeg{', nvJPEG' if runtime.device_kind == 'gpu' else ''}), other formats by Pillow"
                if pipeline.kind == "gpu-jpeg" else "images decoded and preprocessed by Pillow")
    # Garbage logits (NaN/Inf, wrong shape) fail their batch, never a 200; a hung batch retires its instance.
    steps = [checked(step, len(labels)) for step in pipeline.steps]
    batcher = Batcher(entry.name, steps, bcfg, _batch_metrics(metrics, entry.name),
                      admission_control=s.admission_control, watchdog_s=s.watchdog_s)
    batcher.on_unhealthy = lambda reason: on_unhealthy(version, batcher, reason)
    return ModelInstance(
        name=entry.name, version=version, entry=entry, runtimes=runtimes, batcher=batcher, pipeline=pipeline,
        labels=labels, preprocess=res.preprocess, input_shape=res.input_shape,
        default_timeout_s=res.timeout_s, weights=res.weights, runtime_reason=choice.reason,
        runtime_untested=choice.info.untested, accuracy=accuracy,
    )


def _batch_metrics(metrics: Metrics, name: str) -> Callable[[BatchStats], None]:
    def on_batch(stats: BatchStats) -> None:
        metrics.child(metrics.batch_size, name).observe(stats.size)
        metrics.child(metrics.compute_duration, name).observe(stats.compute_s)
        for q in stats.queue_s:
            metrics.child(metrics.queue_duration, name).observe(q)

    return on_batch


def load_instances(entry: ModelEntry, version: int, spec: LoadSpec, res: Resolved,
                   s: Settings) -> tuple[list[Runtime], Choice]:
    """The version's instance group: ``--instances``, else config.pbtxt's instance_group count (Triton's
    meaning: that many runtime instances behind one batcher); CPU instances split the threads."""
    count = res.instances
    choice = choose(entry.platform, s.runtime, s.device)
    if count > 1 and choice.device == "cpu" and not spec.threads:
        spec = dataclasses.replace(spec, threads=max(1, (os.cpu_count() or 1) // count))  # share the cores
    if s.fault_file is not None:
        stall_load(s.fault_file, f"model {entry.name} v{version}")
    runtimes = [load_choice(choice, spec) for _ in range(count)]
    runtime = runtimes[0]
    logger.info("model %s v%d: runtime %s, %s, %d instance%s (%s)", entry.name, version, runtime.label,
                runtime.precision, count, "s" if count > 1 else "", choice.reason)
    if choice.info.untested:
        logger.warning("model %s v%d: runtime %s is %s", entry.name, version, choice.info.name, choice.info.untested)
    if s.fault_file is not None:
        logger.warning("FAULT INJECTION is on for model %s v%d: its outputs follow %s (--fault-file; for tests "
                       "and drills only, never in production)", entry.name, version, s.fault_file)
        runtimes = with_faults(runtimes, s.fault_file)
    return runtimes, choice
