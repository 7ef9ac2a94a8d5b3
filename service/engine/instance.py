"""One served model version: its runtime instances, batcher, pipeline and what describes it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.layout import ModelEntry
from modelrepo.preprocess import Preprocess
from service.engine.accuracy_check import AccuracyCheck
from service.engine.batching import Batcher
from service.engine.description import BatchingInfo, InputInfo, ModelDescription, PreprocessInfo
from service.engine.pipeline import Pipeline
from service.runtimes import Runtime


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
    #: the registry's word when the runtime was never run by the project's tests (TensorRT)
    runtime_untested: str = ""
    #: what re-running its accuracy check set here found (``service.engine.accuracy_check``)
    accuracy: AccuracyCheck | None = None
    #: this load of the version, unique across loads and engine restarts: a reload of the same version (new
    #: weights in place) gets a new one, so results cached under the old one are never answered again
    load_id: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def config(self) -> mc.ModelConfig:
        return self.entry.config

    @property
    def platform(self) -> str:
        return self.entry.platform

    @property
    def decode(self) -> str:
        """Where images are decoded: "cpu" (Pillow, per image) or "gpu-jpeg" (in the batch, on the device)."""
        return self.pipeline.kind

    @property
    def runtime(self) -> Runtime:
        return self.runtimes[0]

    @property
    def runtime_tag(self) -> str:
        """Runtime and precision in use, e.g. ``openvino-cpu bf16``: the model_ready metric's runtime label."""
        return f"{self.runtime.label} {self.runtime.precision}"

    def describe(self) -> ModelDescription:
        """This version as ``/models`` shows it (the engine fills in the model's state and versions)."""
        cfg, pp = self.batcher.config, self.preprocess
        return ModelDescription(
            name=self.name, state="ready", versions=[str(self.version)], version=str(self.version),
            platform=self.entry.platform, runtime=self.runtime.label, precision=self.runtime.precision,
            device=self.runtime.device_kind, runtime_choice=self.runtime_reason,
            runtime_untested=self.runtime_untested or None, instances=len(self.runtimes), decode=self.pipeline.kind,
            input=InputInfo("input", list(self.input_shape)), num_classes=len(self.labels),
            preprocess=PreprocessInfo(pp.resize_shorter, pp.crop, list(pp.mean), list(pp.std), pp.interpolation),
            batching=BatchingInfo(cfg.max_batch_size, list(cfg.preferred_batch_sizes), cfg.max_queue_delay_s * 1000,
                                  cfg.max_queue_size, cfg.dispatch_when_idle, self.default_timeout_s),
            weights=self.weights,
            accuracy_check=self.accuracy.describe() if self.accuracy is not None else None,
            source={k: v for k, v in self.entry.params.items()
                    if k.startswith(("source.", "export.", "tensorrt.", "openvino.", "serve."))},
            queue_depth=self.batcher.queue_depth,
        )
