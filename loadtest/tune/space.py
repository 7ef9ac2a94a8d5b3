"""What the tuner may try: the model's variants that passed their gates, the runtimes that serve them
here, and a configuration (a ``Candidate``) as the config.pbtxt and flags a server runs with.

Batching, instances and OpenVINO streams are the model's ``config.pbtxt`` (``Candidate.apply``), so the
file ``--write`` leaves behind is exactly the one measured; the runtime, intra-op threads and
``--processes`` are server flags (``Candidate.flags``), printed as the command to run.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tritonclient.grpc import model_config_pb2 as mc

from loadtest.tune.costs import Costs
from modelrepo.checkset import PARAM_MIN, PARAM_SCORE
from modelrepo.config import ModelConfig, get_params, read_config
from modelrepo.layout import scan_model

STREAMS_PARAM = "openvino.num_streams"  # service.runtimes.openvino reads it (no service import here)


@dataclass(frozen=True)
class Variant:
    """One model of the repository that serves the same network: ``resnet50``, ``resnet50_int8``, ..."""

    model: str
    precision: str
    runtimes: tuple[str, ...]
    max_batch: int
    skipped: str = ""  # why it is not searched ("": it is)


def gate_problem(params: dict[str, str], precision: str) -> str:
    """"" when a reduced-precision variant passed its accuracy gate at export, else why it is left out."""
    if precision == "fp32":
        return ""
    if PARAM_MIN not in params or PARAM_SCORE not in params:
        return f"{precision}: no accuracy gate recorded at export (an ungated variant is never tuned)"
    score, floor = float(params[PARAM_SCORE]), float(params[PARAM_MIN])
    return "" if score >= floor else f"{precision}: gate failed at export ({score:.3f} < {floor:.3f})"


def variants(repo: Path, model: str) -> list[Variant]:
    """``model`` and its ``model_<suffix>`` siblings (the exporter's precision and format variants)."""
    from service.runtimes.registry import candidates

    found = []
    for d in sorted(p for p in repo.iterdir() if p.name == model or p.name.startswith(model + "_")):
        if not (d / "config.pbtxt").is_file():
            continue
        entry = scan_model(d)
        params = entry.params
        precision = params.get("export.precision", "fp32")
        ok, skipped = candidates(entry.platform, "auto", "cpu")
        runtimes = tuple(c.info.name for c in ok)
        problem = gate_problem(params, precision) or ("" if runtimes else "; ".join(skipped) or "no runtime here")
        found.append(Variant(d.name, precision, runtimes, entry.config.max_batch_size or 1, problem))
    return found


@dataclass(frozen=True)
class Candidate:
    """One configuration. ``None`` fields keep what the model's config.pbtxt says."""

    model: str
    runtime: str = "auto"
    max_batch_size: int | None = None
    max_queue_delay_ms: float | None = None
    preferred: tuple[int, ...] | None = None
    instances: int | None = None
    threads: int = 0  # intra-op threads per instance (0: the service's default, one per core)
    streams: int | None = None  # OpenVINO streams per instance
    processes: int = 1
    default: bool = False  # the model as exported, served with no flags: the baseline

    def label(self) -> str:
        if self.default:
            return f"{self.model} default"
        parts = [self.model, self.runtime, f"b{self.max_batch_size}"]
        if self.max_queue_delay_ms:
            parts.append(f"d{self.max_queue_delay_ms:g}ms")
        if self.preferred:
            parts.append("pref" + "/".join(map(str, self.preferred)))
        if self.instances and self.instances > 1:
            parts.append(f"x{self.instances}t{self.threads}")
        if self.streams and self.streams > 1:
            parts.append(f"s{self.streams}")
        if self.processes > 1:
            parts.append(f"p{self.processes}")
        return " ".join(parts)

    def flags(self) -> list[str]:
        out = [] if self.runtime == "auto" else ["--runtime", self.runtime]
        if self.threads:
            out += ["--intra-op-threads", str(self.threads)]
        if self.processes > 1:
            out += ["--processes", str(self.processes)]
        return out

    def apply(self, cfg: ModelConfig) -> ModelConfig:
        """The model's config with this candidate's batching, instances and streams."""
        out = copy.deepcopy(cfg)
        if self.max_batch_size is not None:
            out.max_batch_size = self.max_batch_size
        dyn = out.dynamic_batching
        if self.max_queue_delay_ms is not None:
            dyn.max_queue_delay_microseconds = round(self.max_queue_delay_ms * 1000)
        if self.preferred is not None:
            del dyn.preferred_batch_size[:]
            dyn.preferred_batch_size.extend(b for b in self.preferred if b <= (out.max_batch_size or 1))
        if self.instances is not None:
            del out.instance_group[:]
            out.instance_group.add(count=self.instances, kind=mc.ModelInstanceGroup.KIND_CPU)
        if self.streams is not None:
            out.parameters[STREAMS_PARAM].string_value = str(self.streams)
        return out

    def settings(self, cfg: ModelConfig) -> dict[str, Any]:
        """What this candidate serves with, spelled out (the JSON and the table)."""
        applied = self.apply(cfg)
        return {"model": self.model, "runtime": self.runtime, "max_batch_size": applied.max_batch_size,
                "max_queue_delay_ms": applied.dynamic_batching.max_queue_delay_microseconds / 1000,
                "preferred_batch_sizes": list(applied.dynamic_batching.preferred_batch_size),
                "instances": sum(g.count for g in applied.instance_group) or 1, "threads": self.threads,
                "streams": get_params(applied).get(STREAMS_PARAM), "processes": self.processes,
                "flags": self.flags()}

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"label": self.label()}


def default_candidate(model: str) -> Candidate:
    return Candidate(model, default=True)


def model_config(repo: Path, model: str) -> ModelConfig:
    return read_config(repo / model)


def parallel_options(c: Candidate, cores: int) -> list[Candidate]:
    """Other ways to spread the cores: two instances of one thread each, or (OpenVINO) two streams."""
    if cores < 2:
        return []
    out = [replace(c, instances=2, threads=max(1, cores // 2), streams=None)]
    if c.runtime == "openvino":
        out.append(replace(c, instances=1, threads=0, streams=2))
    return out


def batch_options(c: Candidate, max_batch: int) -> list[Candidate]:
    """The neighbouring batch limits, and a short wait that lets batches fill (a preferred size)."""
    b = c.max_batch_size or 1
    out = [replace(c, max_batch_size=n) for n in (b // 2, b * 2) if 1 <= n <= max_batch and n != b]
    if b > 1:
        out.append(replace(c, max_queue_delay_ms=2.0, preferred=(b,)))
    return out


PRUNE_SHARE = 0.5  # a (variant, runtime) predicted under this share of the best one's rate is not run


@dataclass(frozen=True)
class Start:
    """A first candidate for the runtime-and-precision stage, with the rate its search starts from."""

    candidate: Candidate
    predicted_rps: float


def first_candidates(costs: list[Costs], target_ms: float, cores: int) -> tuple[list[Start], list[str]]:
    """From measured costs: one candidate per (variant, runtime) at the largest batch that
    fits the target, best predicted first, and why each other pair was pruned."""
    ranked: list[Start] = []
    pruned: list[str] = []
    for c in costs:
        b = c.fitting_batch(target_ms)
        if b is None:
            pruned.append(f"{c.model} on {c.runtime}: a batch of 1 takes {c.batch_ms[1]:.0f} ms; decode "
                          f"({c.pre_ms:.0f} ms) + waiting for one batch + running one is over {target_ms:g} ms")
            continue
        cand = Candidate(c.model, c.runtime, max_batch_size=b, max_queue_delay_ms=0.0, preferred=(),
                         instances=1, threads=0, streams=None)
        ranked.append(Start(cand, c.predicted_rps(b, cores)))
    ranked.sort(key=lambda s: -s.predicted_rps)
    if not ranked:
        return [], pruned
    best = ranked[0].predicted_rps
    kept = [s for s in ranked if s.predicted_rps >= PRUNE_SHARE * best]
    pruned += [f"{s.candidate.model} on {s.candidate.runtime}: predicted {s.predicted_rps:.0f} req/s, under "
               f"{PRUNE_SHARE:.0%} of the best ({best:.0f})" for s in ranked if s not in kept]
    return kept, pruned
