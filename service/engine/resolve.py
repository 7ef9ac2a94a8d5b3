"""What a model's config.pbtxt and the operator's settings ask for, resolved with no I/O (pure functions).

The config says what Triton would do (dims, dynamic batching, queue policy, version policy, instance
groups); a setting given on the command line wins over it; a default fills what neither says.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.errors import RepositoryError
from modelrepo.preprocess import Preprocess
from service.config import Settings
from service.engine.batching import BatcherConfig

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_QUEUE = 256


@dataclass(frozen=True)
class Resolved:
    """How one model is served, before any runtime is loaded."""

    input_shape: tuple[int, ...]
    preprocess: Preprocess
    max_batch_size: int
    timeout_s: float
    #: ``source.weights`` (``random`` when the exporter had no trained weights)
    weights: str
    #: runtime instances behind the one batcher (Triton's instance_group count)
    instances: int


def versions_to_serve(policy: mc.ModelVersionPolicy, available: list[int], name: str) -> list[int]:
    """Triton's version_policy over the version folders found: latest (default 1), all, or specific."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return list(available)
    if kind == "specific":
        wanted = [v for v in policy.specific.versions if v in available]
        if not wanted:
            raise RepositoryError(f"model {name!r}: none of the versions in version_policy exists")
        return wanted
    n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
    return sorted(available)[-n:]


def resolve(name: str, cfg: mc.ModelConfig, params: dict[str, str], s: Settings) -> Resolved:
    if not cfg.input or len(cfg.input[0].dims) != 3:
        raise RepositoryError(f"model {name!r}: expected one input with dims [3, H, W]")
    input_shape = tuple(int(d) for d in cfg.input[0].dims)
    pp = Preprocess.from_params(params, list(input_shape))
    if pp.crop != input_shape[-1]:
        raise RepositoryError(f"model {name!r}: preprocess.crop {pp.crop} != input size {input_shape[-1]}")
    qp = cfg.dynamic_batching.default_queue_policy
    return Resolved(
        input_shape=input_shape,
        preprocess=pp,
        max_batch_size=s.max_batch_size or cfg.max_batch_size or 1,
        timeout_s=s.request_timeout_s or (qp.default_timeout_microseconds / 1e6) or DEFAULT_TIMEOUT_S,
        weights=params.get("source.weights", "unknown"),
        instances=s.instances or sum(g.count for g in cfg.instance_group) or 1,
    )


def batcher_config(cfg: mc.ModelConfig, s: Settings, max_batch_size: int, device_kind: str) -> BatcherConfig:
    """The batcher's limits; CPU runtimes dispatch at once when idle (waiting buys nothing there)."""
    dyn = cfg.dynamic_batching
    return BatcherConfig(
        max_batch_size=max_batch_size,
        max_queue_delay_s=(
            s.max_queue_delay_ms / 1000 if s.max_queue_delay_ms is not None
            else (dyn.max_queue_delay_microseconds / 1e6 if cfg.HasField("dynamic_batching") else 0.0)
        ),
        preferred_batch_sizes=[b for b in dyn.preferred_batch_size if b <= max_batch_size],
        max_queue_size=s.max_queue_size or dyn.default_queue_policy.max_queue_size or DEFAULT_QUEUE,
        dispatch_when_idle=s.dispatch_when_idle if s.dispatch_when_idle is not None else device_kind == "cpu",
    )


def class_labels(labels: list[str] | None, cfg: mc.ModelConfig) -> tuple[list[str], str | None]:
    """One label per output class (``class_<i>`` when labels.txt is missing or disagrees), and why not."""
    out_dims = list(cfg.output[0].dims) if cfg.output else []
    n_classes = int(out_dims[-1]) if out_dims else (len(labels) if labels else 0)
    if labels is not None and len(labels) == n_classes:
        return labels, None
    why = None if labels is None else f"labels.txt has {len(labels)} lines for {n_classes} classes; using class_<i>"
    return [f"class_{i}" for i in range(n_classes)], why
