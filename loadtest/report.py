"""The checks (ratios against baselines measured in the same run) and the printed table."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

LATENCY_SLACK_MS = 2.0
# service img/s at the top concurrency / the best engine limit among the runtimes measured
THROUGHPUT_TARGET = 0.85
THROUGHPUT_TARGET_INT8 = 0.85
# default service / the same model served by ONNX Runtime, on a CPU with AMX (BF16/INT8 matrix units)
AMX_SPEEDUP_TARGET = 4.0


NOISE_WARN = 0.25  # share of one core used by other processes during the load runs


def noise(model: dict[str, Any]) -> float:
    """Mean CPU (in cores) that neither wrk nor the server used while they ran."""
    points = [p for k in ("service", "naive") for p in (model.get(k) or {}).get("points", [])]
    seconds = sum(p["seconds"] for p in points)
    return sum(p["other_cpu_s"] for p in points) / seconds if seconds else 0.0


def is_int8(name: str, params: dict[str, str]) -> bool:
    return params.get("export.precision") == "int8" or name.endswith("_int8")


def checks(model: dict[str, Any], amx: bool = False) -> dict[str, Any]:
    """Throughput and latency checks for one model's results (best engine, service, baseline, naive)."""
    out: dict[str, Any] = {}
    engine, service = model.get("engine"), model.get("service")
    points = {p["concurrency"]: p for p in (service or {}).get("points", [])}
    naive = {p["concurrency"]: p for p in (model.get("naive") or {}).get("points", [])}
    top = max(points) if points else None
    if engine and top is not None:
        target = THROUGHPUT_TARGET_INT8 if model.get("int8") else THROUGHPUT_TARGET
        ratio = points[top]["rps"] / engine["best_ips"] if engine["best_ips"] else 0.0
        out["throughput"] = {
            "concurrency": top, "service_ips": points[top]["rps"], "engine_best_ips": engine["best_ips"],
            "engine_runtime": f"{engine.get('label', '?')} {engine.get('precision', '')}".strip(),
            "ratio": ratio, "target": target, "pass": ratio >= target,
        }
    if engine and 1 in points:
        budget = engine["preprocess_ms"] + engine["batch1_ms"] + LATENCY_SLACK_MS
        p50 = points[1]["p50_ms"]
        out["latency"] = {
            "service_p50_ms": p50, "budget_ms": budget, "preprocess_ms": engine["preprocess_ms"],
            "batch1_ms": engine["batch1_ms"], "slack_ms": LATENCY_SLACK_MS, "pass": p50 <= budget,
        }
    if top is not None and top in naive and naive[top]["rps"]:
        out["vs_naive"] = {"concurrency": top, "speedup": points[top]["rps"] / naive[top]["rps"]}
    base = {p["concurrency"]: p for p in (model.get("service_baseline") or {}).get("points", [])}
    if top is not None and top in base and base[top]["rps"]:
        speedup = points[top]["rps"] / base[top]["rps"]
        check: dict[str, Any] = {"concurrency": top, "service": model["service"].get("runtime", "?"),
                                 "baseline": model["service_baseline"].get("runtime", "?"), "speedup": speedup}
        if amx:  # the target is for CPUs with AMX; elsewhere the ratio is information
            check.update(target=AMX_SPEEDUP_TARGET, **{"pass": speedup >= AMX_SPEEDUP_TARGET})
        out["vs_baseline_runtime"] = check
    return out


def has_amx(env: dict[str, Any]) -> bool:
    flags = env.get("cpu", {}).get("flags", {})
    return bool(flags.get("amx_bf16") and flags.get("amx_int8"))


def format_cpu(env: dict[str, Any]) -> str:
    cpu = env.get("cpu", {})
    flags = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in cpu.get("flags", {}).items())
    caps = ", ".join(cpu.get("openvino_capabilities", [])) or "-"
    return (f"CPU: {cpu.get('model', '?')} x {env.get('cpus')} | {flags}\n"
            f"OpenVINO {env.get('openvino', 'not installed')} CPU capabilities: {caps} | "
            f"ONNX Runtime {env.get('onnxruntime')}")


def _pct(cpu_s: float, seconds: float) -> str:
    return f"{100 * cpu_s / seconds:.1f}%" if seconds else "-"


def format_model(name: str, m: dict[str, Any]) -> str:
    lines = [f"== {name}{' (int8)' if m.get('int8') else ''} ==".ljust(100, "=")]
    for e in (m.get("engines") or ({"-": m["engine"]} if m.get("engine") else {})).values():
        rt = f"{e.get('label', '?')} {e.get('precision', '')}".strip()
        lines.append(f"engine   [{rt}] decode+preprocess of 1 image (1 thread): {e['preprocess_ms']:.1f} ms   "
                     f"batch-1 inference alone: {e['batch1_ms']:.1f} ms")
        sweep = "  ".join(f"b{b}: {ips:.1f}" for b, ips in e["throughput"].items())
        lines.append(f"engine   [{rt}] pipelined img/s ({e['workers']} decode threads): {sweep}   "
                     f"best {e['best_ips']:.1f} at b{e['best_batch']}")
        if e.get("other_cpu", 0.0) > NOISE_WARN:
            lines.append(f"WARNING  other processes used {100 * e['other_cpu']:.0f}% CPU on average during the "
                         "engine runs: these numbers are noisy")
    head = (f"{'server':8} {'conc':>5} {'img/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} "
            f"{'batch':>6} {'wrk cpu':>7} {'srv cpu':>7} {'other':>7} {'drain s':>7}  runtime")
    rows = []
    for kind in ("service", "service_baseline", "naive"):
        served = (m.get(kind) or {}).get("runtime", "")
        for p in (m.get(kind) or {}).get("points", []):
            errs = sum(p["errors"].values())
            batch = p["extra"].get("mean_batch")
            label = {"service": "service", "service_baseline": "svc-base", "naive": "naive"}[kind]
            rows.append(
                f"{label:8} {p['concurrency']:5d} {p['rps']:8.1f} {p['p50_ms']:8.1f} {p['p99_ms']:8.1f} {errs:7d} "
                f"{'-' if batch is None else f'{batch:.1f}':>6} {_pct(p['wrk_cpu_s'], p['seconds']):>7} "
                f"{_pct(p['server_cpu_s'], p['seconds']):>7} {_pct(p['other_cpu_s'], p['seconds']):>7} "
                f"{p['extra'].get('drain_s', float('nan')):7.1f}  {served}"
            )
    if rows:
        lines += [head, *rows]
    other = noise(m)
    if other > NOISE_WARN:
        lines.append(f"WARNING  other processes used {100 * other:.0f}% CPU on average during the load runs: "
                     "these numbers are noisy, rerun on a quiet machine")
    c = m.get("checks", {})
    if "throughput" in c:
        t = c["throughput"]
        lines.append(f"check    service c={t['concurrency']} / best engine ({t.get('engine_runtime', '?')}) = "
                     f"{t['service_ips']:.1f} / {t['engine_best_ips']:.1f} = {t['ratio']:.2f} (target >= "
                     f"{t['target']:.2f})  "
                     f"{'PASS' if t['pass'] else 'FAIL'}")
    if "latency" in c:
        la = c["latency"]
        lines.append(f"check    service p50 at c=1 = {la['service_p50_ms']:.1f} ms vs preprocess + batch-1 + "
                     f"{la['slack_ms']:.0f} ms = {la['preprocess_ms']:.1f} + {la['batch1_ms']:.1f} + "
                     f"{la['slack_ms']:.0f} = {la['budget_ms']:.1f} ms  {'PASS' if la['pass'] else 'FAIL'}")
    if "vs_naive" in c:
        v = c["vs_naive"]
        lines.append(f"info     service / naive throughput at c={v['concurrency']}: {v['speedup']:.2f}x")
    if "vs_baseline_runtime" in c:
        b = c["vs_baseline_runtime"]
        verdict = (f"(target >= {b['target']:.1f} on AMX)  {'PASS' if b['pass'] else 'FAIL'}" if "target" in b
                   else f"(the >= {AMX_SPEEDUP_TARGET:.0f}x target applies to AMX CPUs; this one has none)")
        lines.append(f"{'check' if 'target' in b else 'info':8} default service ({b['service']}) / {b['baseline']} "
                     f"service at c={b['concurrency']}: {b['speedup']:.2f}x {verdict}")
    return "\n".join(lines)


def format_summary(models: dict[str, dict[str, Any]]) -> str:
    lines = [f"{'model':16} {'runtime':22} {'best engine':22} {'engine img/s':>12} {'svc img/s':>10} {'ratio':>6} "
             f"{'target':>6}  {'p50 c=1':>8} {'budget':>8}  {'vs naive':>8}  {'vs ORT svc':>10}  result"]
    for name, m in models.items():
        c = m.get("checks", {})
        t, la, v, b = c.get("throughput"), c.get("latency"), c.get("vs_naive"), c.get("vs_baseline_runtime")
        ok = all(x["pass"] for x in (t, la, b) if x and "pass" in x)
        served = f"{(m.get('service') or {}).get('runtime', '?')} {(m.get('service') or {}).get('precision', '')}"
        lines.append(
            f"{name:16} {served.strip():22} {(t or {}).get('engine_runtime', '-'):22} "
            f"{t['engine_best_ips'] if t else float('nan'):12.1f} "
            f"{t['service_ips'] if t else float('nan'):10.1f} {t['ratio'] if t else float('nan'):6.2f} "
            f"{t['target'] if t else float('nan'):6.2f}  {la['service_p50_ms'] if la else float('nan'):8.1f} "
            f"{la['budget_ms'] if la else float('nan'):8.1f}  "
            f"{(str(round(v['speedup'], 2)) + 'x') if v else '-':>8}  "
            f"{(str(round(b['speedup'], 2)) + 'x') if b else '-':>10}  {'PASS' if ok and (t or la) else 'FAIL'}"
        )
    return "\n".join(lines)


def write_results(out: Path, result: dict[str, Any], stem: str, latest: str) -> Path:
    """``result`` as ``out/<stem>-<timestamp>.json`` and as ``out/<latest>``; the timestamped path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    text = json.dumps(result, indent=2)
    path.write_text(text)
    (out / latest).write_text(text)
    return path
