"""What a tuning run leaves: the table, the JSON, the picture, the written config and the scaling files."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

from loadtest.tune.space import Candidate
from loadtest.tune.tuner import Outcome, Tried
from modelrepo.config import CONFIG_FILE, read_config, set_params, write_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
HPA_METRIC = "inference_inflight_requests"  # the serving metric deploy/k8s/base/hpa.yaml scales on
STEP_SHARES = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1)  # the locust profile's steps, as shares of the capacity


def _p99(t: Tried) -> str:
    at = t.search.at_capacity() if t.search else None
    return f"{at.p99_ms:.0f}" if at and at.p99_ms is not None else "-"


def table(out: Outcome) -> str:
    best = out.best
    lines = ["| stage | configuration | capacity (req/s) | p99 there (ms) | runs | seconds | |",
             "|---|---|---|---|---|---|---|"]
    for t in out.tried:
        mark = "**chosen**" if t is best else t.note
        runs = len(t.search.probes) if t.search else 0
        lines.append(f"| {t.stage} | {t.candidate.label()} | {t.capacity:.1f} | {_p99(t)} | {runs} | "
                     f"{t.seconds:.0f} | {mark} |")
    return "\n".join(lines)


def summary(out: Outcome) -> str:
    best, default = out.best, out.default
    gain = best.capacity / default.capacity if default.capacity else math.inf
    lines = [f"default: {default.capacity:.1f} req/s; tuned: {best.capacity:.1f} req/s ({best.candidate.label()}),"
             f" {gain:.2f}x the default, at p99 <= {out.target_ms:g} ms"]
    for p in out.confirmations:
        why = p.why_not(out.target_ms)
        lines.append(f"confirmation: {p.rate:.1f} req/s for {p.seconds:g} s: p99 {p.p99_ms or 0:.0f} ms, "
                     f"{p.errors} errors of {p.sent} -> {'passed' if not why else 'missed (' + why + ')'}")
    confirmed = out.confirmed_rps
    lines.append(f"capacity, confirmed: {confirmed:.1f} req/s" if confirmed else
                 f"capacity NOT confirmed: every confirmation run missed the target; {best.capacity:.1f} req/s is "
                 "what short runs carried, not a capacity (a looser target, or a quieter machine)")
    lines += [f"pruned: {p}" for p in out.pruned]
    lines.append(f"search wall time: {out.wall_s:.0f} s")
    return "\n".join(lines)


def to_json(out: Outcome, extra: dict[str, Any]) -> dict[str, Any]:
    return extra | {
        "target_p99_ms": out.target_ms, "wall_s": out.wall_s, "pruned": out.pruned,
        "tried": [t.to_json() for t in out.tried], "best": out.best.to_json(), "default": out.default.to_json(),
        "gain": out.best.capacity / out.default.capacity if out.default.capacity else None,
        "confirmations": [p.to_json() for p in out.confirmations], "confirmed_rps": out.confirmed_rps,
    }


def plot(out: Outcome, path: Path, title: str) -> Path:
    """Rate vs p99 per candidate (filled: met the target), the target line, the chosen point, the confirmation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for t in out.tried:
        if not t.search or not t.search.probes:
            continue
        pts = sorted((p.rate, p.p99_ms or float("nan"), p.passes(out.target_ms)) for p in t.search.probes)
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", alpha=0.6, label=t.candidate.label())
        for r, p99, ok in pts:
            ax.plot(r, p99, "o", color=line.get_color(), fillstyle="full" if ok else "none")
    best = out.best.search.at_capacity() if out.best.search else None
    if best is not None and best.p99_ms is not None:
        ax.plot(best.rate, best.p99_ms, "*", color="black", markersize=16, label="chosen")
    for p in out.confirmations:
        ax.plot(p.rate, p.p99_ms or float("nan"), "X", color="black", markersize=10,
                label=f"confirmation ({'passed' if p.passes(out.target_ms) else 'missed'})")
    ax.axhline(out.target_ms, color="red", linestyle="--", label=f"target p99 {out.target_ms:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (req/s, Poisson arrivals)")
    ax.set_ylabel("p99 latency (ms), whole request")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_config_file(repo: Path, cand: Candidate, out: Outcome, cpu: str) -> tuple[Path, Path]:
    """The chosen candidate's config.pbtxt in ``repo``, the old file kept beside it; (new, kept)."""
    model_dir = repo / cand.model
    old = model_dir / CONFIG_FILE
    kept = model_dir / f"{CONFIG_FILE}.before-tune-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = cand.apply(read_config(model_dir))
    set_params(cfg, {"tune.flags": " ".join(cand.flags()), "tune.p99_target_ms": f"{out.target_ms:g}",
                     "tune.capacity_rps": f"{out.best.capacity:.1f}", "tune.confirmed_rps": f"{out.confirmed_rps:.1f}",
                     "tune.cpu": cpu, "tune.at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    os.replace(old, kept)
    write_config(model_dir, cfg)
    return old, kept


def inflight_target(rate: float, mean_ms: float) -> int:
    """Requests in flight on one replica carrying ``rate`` at mean latency ``mean_ms`` (Little's law)."""
    return max(1, round(rate * mean_ms / 1000))


def write_scaling(out: Outcome, folder: Path, host: str = "http://127.0.0.1:8000") -> dict[str, Any]:
    """A kustomization (the CPU overlay with the HPA's serving target from the confirmed capacity) and a
    locust config (stepped rates around the capacity, the p99 target as its SLO); the values written."""
    passed = [p for p in out.confirmations if p.passes(out.target_ms)]
    if not passed or passed[-1].mean_ms is None:
        raise ValueError("no confirmed capacity: nothing to scale on (the confirmation runs missed the target)")
    rate, mean_ms = passed[-1].rate, passed[-1].mean_ms
    steps = [round(rate * s, 1) for s in STEP_SHARES]
    values = {"inflight_per_pod": inflight_target(rate, mean_ms), "capacity_rps": rate, "steps": steps,
              "p99_ms": out.target_ms}
    folder.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(DEPLOY / "k8s" / "overlays" / "cpu", folder.resolve())
    patch = [{"op": "replace", "path": "/spec/metrics/0/pods/target/averageValue",
              "value": str(values["inflight_per_pod"])}]
    (folder / "kustomization.yaml").write_text(
        f"# generated by python -m loadtest.tune: one replica carries {rate:.1f} req/s at p99 <= "
        f"{out.target_ms:g} ms (mean {mean_ms:.0f} ms), so {values['inflight_per_pod']} requests in flight per "
        f"pod (Little's law) is the HPA's {HPA_METRIC} target\n" + yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": [rel],
            "patches": [{"target": {"kind": "HorizontalPodAutoscaler", "name": "imgserve"},
                         "patch": yaml.safe_dump(patch)}]}, sort_keys=False))
    (folder / "locust.conf").write_text(
        f"# generated by python -m loadtest.tune: locust -f loadtest/steps.py --config {folder / 'locust.conf'}\n"
        f"host = {host}\nheadless = true\nsteps = {','.join(f'{s:g}' for s in steps)}\n"
        f"step-seconds = 20\ncapacity-p99-ms = {out.target_ms:g}\nslo-p99-ms = {out.target_ms:g}\n"
        f"slo-fail-ratio = 0.01\n")
    return values
