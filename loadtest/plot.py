"""The benchmark and locust runs as pictures (matplotlib, Agg backend, PNG).

    python -m loadtest.plot bench docs/bench/2026-11-27-amd-epyc-zen5-2vcpu.json   # -> same name .png
    python -m loadtest.plot history out/locust_stats_history.csv -o out/latency.png

``bench``: from the JSON ``python -m loadtest.bench`` writes, one row per model: throughput vs
concurrency (the service, the service on the baseline runtime, the naive server, each engine limit
as a horizontal line) and p50 / p99 latency vs throughput (the engine limits as vertical lines).
``history``: latency over time from a locust ``--csv ... --csv-full-history`` run (p50 / p95 / p99
of the last 10 s, the server's queue time) above the users, requests/s, shed/s and failures/s.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.ticker import ScalarFormatter  # noqa: E402

ENGINE_COLORS = ("tab:green", "tab:olive", "tab:cyan")


def _points(model: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return sorted((model.get(kind) or {}).get("points", []), key=lambda p: p["concurrency"])


def _engine_label(e: dict[str, Any]) -> str:
    return f"engine limit {e.get('label', e.get('runtime', '?'))} {e.get('precision', '')} " \
           f"(b{e.get('best_batch', '?')}): {e['best_ips']:.0f} img/s"


def _engines(model: dict[str, Any]) -> list[dict[str, Any]]:
    engines = list((model.get("engines") or {}).values()) or ([model["engine"]] if model.get("engine") else [])
    return sorted(engines, key=lambda e: -e["best_ips"])


def throughput_panel(ax: Axes, name: str, model: dict[str, Any]) -> None:
    svc = model.get("service") or {}
    runtime = f"{svc.get('runtime', '?')} {svc.get('precision', '')}".strip()
    for kind, label, style in (("service", f"service ({runtime})", "o-"), ("naive", "naive server", "s--")):
        pts = _points(model, kind)
        if pts:
            ax.plot([p["concurrency"] for p in pts], [p["rps"] for p in pts], style, label=label)
    for p in _points(model, "service_baseline"):
        ax.plot([p["concurrency"]], [p["rps"]], "D", color="tab:red",
                label=f"service on {(model.get('service_baseline') or {}).get('runtime', 'baseline')}")
    for e, color in zip(_engines(model), ENGINE_COLORS, strict=False):
        ax.axhline(e["best_ips"], color=color, linestyle=":", linewidth=2, label=_engine_label(e))
    ax.set_xscale("log", base=2)
    conc = sorted({p["concurrency"] for k in ("service", "naive") for p in _points(model, k)})
    ax.set_xticks(conc, [str(c) for c in conc])
    ax.set_xlabel("concurrency (wrk connections, closed loop)")
    ax.set_ylabel("images/s")
    ax.set_ylim(bottom=0)
    ax.set_title(f"{name}: throughput vs concurrency")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


def latency_panel(ax: Axes, name: str, model: dict[str, Any]) -> None:
    for kind, label, color in (("service", "service", "tab:blue"), ("naive", "naive", "tab:orange")):
        pts = _points(model, kind)
        if not pts:
            continue
        x = [p["rps"] for p in pts]
        ax.plot(x, [p["p50_ms"] for p in pts], "o-", color=color, label=f"{label} p50")
        ax.plot(x, [p["p99_ms"] for p in pts], "^--", color=color, label=f"{label} p99")
        for p in pts:
            ax.annotate(f"c={p['concurrency']}", (p["rps"], p["p99_ms"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color=color)
    for e, color in zip(_engines(model), ENGINE_COLORS, strict=False):
        ax.axvline(e["best_ips"], color=color, linestyle=":", linewidth=2, label=_engine_label(e))
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("images/s achieved")
    ax.set_ylabel("latency, ms (log)")
    xmax = max([p["rps"] for k in ("service", "naive") for p in _points(model, k)]
               + [e["best_ips"] for e in _engines(model)] + [1.0])
    ax.set_xlim(0, xmax * 1.1)
    ax.set_title(f"{name}: p50 / p99 latency vs throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)  # below: no data hidden


def bench_png(result: dict[str, Any], out: Path) -> Path:
    """One row per model: throughput vs concurrency, latency vs throughput."""
    models = result.get("models") or {}
    if not models:
        raise SystemExit("no model in the benchmark JSON")
    fig, axes = plt.subplots(len(models), 2, figsize=(13, 5.6 * len(models)), squeeze=False)
    for row, (name, model) in zip(axes, models.items(), strict=True):
        throughput_panel(row[0], name, model)
        latency_panel(row[1], name, model)
    env = result.get("environment") or {}
    cpu, openvino = (env.get("cpu") or {}).get("model", "?"), str(env.get("openvino", "-")).split("-")[0]
    fig.suptitle(f"python -m loadtest.bench, {result.get('started', '')[:10]}: {cpu} x {env.get('cpus', '?')}, "
                 f"OpenVINO {openvino}, ONNX Runtime {env.get('onnxruntime', '-')}", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _num(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "N/A" before the first request


def read_history(path: Path) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """``{(type, name): rows}`` of a locust stats_history CSV, times in seconds since its first row."""
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path}: empty history")
    t0 = int(rows[0]["Timestamp"])
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        r = {**r, "t": int(r["Timestamp"]) - t0}
        out.setdefault((r["Type"], r["Name"]), []).append(r)
    return out


def history_png(path: Path, out: Path, title: str = "") -> Path:
    """Latency percentiles over time above the load; needs ``--csv-full-history`` for windowed percentiles."""
    series = read_history(path)
    agg = series.get(("", "Aggregated"), [])
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7), sharex=True, height_ratios=(3, 2))
    for col, style in (("50%", "-"), ("95%", "--"), ("99%", "-")):
        pts = [(r["t"], _num(r[col])) for r in agg]
        top.plot([t for t, v in pts if v], [v for _, v in pts if v], style, label=f"p{col[:-1]} (last 10 s)",
                 linewidth=2 if col == "99%" else 1.2)
    queue = series.get(("SERVER", "queue"), [])
    if queue:
        pts = [(r["t"], _num(r["95%"])) for r in queue]
        top.plot([t for t, v in pts if v], [v for _, v in pts if v], ":",
                 color="tab:gray", label="server queue p95 (Server-Timing)")
    top.set_ylabel("latency, ms")
    top.set_yscale("log")
    top.yaxis.set_major_formatter(ScalarFormatter())
    top.grid(True, which="both", alpha=0.3)
    top.legend(fontsize=8, loc="upper left")
    top.set_title(title or f"latency over time: {path.name}")
    bottom.plot([r["t"] for r in agg], [_num(r["Requests/s"]) or 0 for r in agg], label="requests/s")
    shed: dict[int, float] = {}
    for (kind, _), rows in series.items():
        if kind == "SHED":
            for r in rows:
                shed[r["t"]] = shed.get(r["t"], 0.0) + (_num(r["Requests/s"]) or 0)
    if shed:
        bottom.plot(sorted(shed), [shed[t] for t in sorted(shed)], color="tab:orange", label="shed (503)/s")
    bottom.plot([r["t"] for r in agg], [_num(r["Failures/s"]) or 0 for r in agg], color="tab:red", label="failures/s")
    bottom.plot([r["t"] for r in agg], [int(r["User Count"]) for r in agg], color="black", drawstyle="steps-post",
                linewidth=1, label="users")
    bottom.set_xlabel("seconds since the start")
    bottom.set_ylabel("per second / users")
    bottom.grid(True, alpha=0.3)
    bottom.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.plot", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    b = sub.add_parser("bench", help="throughput and latency plots from a loadtest.bench JSON")
    b.add_argument("json", type=Path)
    b.add_argument("-o", "--out", type=Path, help="PNG path (default: the JSON's path with .png)")
    h = sub.add_parser("history", help="latency over time from a locust *_stats_history.csv")
    h.add_argument("csv", type=Path)
    h.add_argument("-o", "--out", type=Path, help="PNG path (default: the CSV's path with .png)")
    h.add_argument("--title", default="")
    args = ap.parse_args(argv)
    if args.what == "bench":
        path = bench_png(json.loads(args.json.read_text()), args.out or args.json.with_suffix(".png"))
    else:
        path = history_png(args.csv, args.out or args.csv.with_suffix(".png"), args.title)
    print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
