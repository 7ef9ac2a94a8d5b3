"""``make gpu-check`` step 2, on the lent GPU machine (``--dry-run``: the same on a CPU, tiny sizes).

One prepared run (issue 8), every number into ``OUT/gpu_check.json``, a table into
``OUT/gpu_check.md`` and everything printed into ``OUT/gpu_check.log``:

1. export resnet50 (random weights) to TorchScript with the project's exporter (parity-gated);
2. the in-process **engine limit**: the PyTorch runtime, FP16 channels_last, batch 64/128/256, with
   CUDA graphs and plain eager, from device tensors (logits copied to the host, as the service does);
3. the **GPU decode rate** (nvJPEG batch decode + resize/crop/normalise) and the **pipeline limit**
   (decode + infer, the service's batch step without HTTP);
4. the **service over HTTP** from JPEG bytes (5 real photos in turn) at concurrency 64 and 256, with
   one process and with N front ends feeding one engine process (``--processes N``, the split: one
   CUDA context, one batcher), load from Debian's ``wrk`` (C, carried as a .deb) on spare cores. The
   targets (issue 16): >= 10,000 img/s at c=256 with p99 <= 100 ms and >= 0.8x the pipeline limit.

Each step writes its results as soon as it has them: a run cut short still reports what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Plan:
    device: str
    arch: str
    max_batch: int
    batches: list[int]
    concurrency: list[int]
    processes: list[int]
    seconds: float
    instances: int
    budget_s: float  # stop starting new steps past this


GPU = Plan("cuda", "resnet50", 256, [64, 128, 256], [64, 256], [1, 4, 8], 10.0, 2, 330.0)
DRY = Plan("cpu", "resnet18", 8, [4, 8], [4, 8], [1, 2], 3.0, 1, 600.0)


@dataclass
class Report:
    out: Path
    started: float = field(default_factory=time.monotonic)
    data: dict[str, Any] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.started:6.1f}s] {msg}"
        print(line, flush=True)
        with (self.out / "gpu_check.log").open("a") as f:
            f.write(line + "\n")

    def save(self, key: str, value: Any) -> None:
        self.data[key] = value
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=2, default=str))

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def machine(plan: Plan) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "cpu_cores": os.cpu_count(), "device": plan.device}
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    if plan.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                 "compute_capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count}
    return info


def setup_wrk(prep: Path, rep: Report) -> None:
    """Put the carried Debian wrk (and its LuaJIT) on PATH; else the machine's own wrk."""
    debs = sorted((prep / "deb").glob("*.deb"))
    if debs and shutil.which("dpkg"):
        root = Path(tempfile.mkdtemp(prefix="wrk-"))
        for deb in debs:
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        libs = ":".join(str(p) for p in (root / "usr/lib").glob("*-linux-gnu"))
        # the carried libraries for wrk alone (never for Python: its ssl must keep the system's)
        wrapper = root / "bin" / "wrk"
        wrapper.parent.mkdir()
        wrapper.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH="{libs}" exec "{root}/usr/bin/wrk" "$@"\n')
        wrapper.chmod(0o755)
        os.environ["PATH"] = f"{wrapper.parent}:{os.environ['PATH']}"
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("no wrk: run `python -m loadtest.gpu_prepare` first (it fetches the .deb)")
    check = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    rep.log(f"load generator: {wrk} ({' '.join((check.stdout + check.stderr).splitlines()[:2])})")


def export_model(plan: Plan, repo: Path, rep: Report) -> Path:
    argv = [sys.executable, "-m", "export", "--arch", plan.arch, "--weights", "random", "--repo", str(repo),
            "--format", "pytorch", "--max-batch-size", str(plan.max_batch), "--preferred-batch",
            *map(str, plan.batches), "--no-bf16-gate", "--no-simplify"]
    rep.log("export: " + " ".join(argv[1:]))
    t0 = time.monotonic()
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    for line in (run.stdout + run.stderr).splitlines():
        if "parity" in line or "wrote" in line or "Error" in line or "error" in line:
            rep.log("  " + line)
    if run.returncode != 0:
        rep.log(run.stdout[-3000:] + run.stderr[-3000:])
        raise SystemExit(f"export failed ({run.returncode})")
    rep.save("export_s", round(time.monotonic() - t0, 1))
    return repo / f"{plan.arch}_pt"


def _rate(fn: Any, images: int, min_s: float, sync: Any) -> float:
    """Images per second of ``fn`` (which handles ``images`` per call), timed for at least ``min_s``."""
    fn()
    fn()
    sync()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        sync()  # each call ends on the host, as a batch in the service does
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_s:
            return n * images / dt


def _parallel_rate(steps: list[Any], payloads: list[Any], seconds: float) -> float:
    """Images per second of ``steps`` called back to back, each on its own thread (the service's instances)."""
    import threading

    for step in steps:
        step(payloads)
    done = [0] * len(steps)
    stop = time.perf_counter() + seconds

    def loop(i: int) -> None:
        while time.perf_counter() < stop:
            steps[i](payloads)
            done[i] += len(payloads)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(steps))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def engine_limits(plan: Plan, model_dir: Path, rep: Report) -> dict[str, dict[int, float]]:
    import torch

    from service.runtimes.base import LoadSpec
    from service.runtimes.pytorch import GRAPHS_PARAM, PyTorchRuntime

    sync = torch.cuda.synchronize if plan.device == "cuda" else (lambda: None)
    modes = ["cuda-graphs", "eager"] if plan.device == "cuda" else ["eager"]
    out: dict[str, dict[int, float]] = {}
    for mode in modes:
        rt = PyTorchRuntime()
        params = {GRAPHS_PARAM: "true" if mode == "cuda-graphs" else "false"}
        rt.load(LoadSpec(model_dir / "1" / "model.pt", params=params, device=plan.device, input_shape=(3, 224, 224)))
        t0 = time.monotonic()
        rt.warmup(list(range(1, plan.max_batch + 1)), (3, 224, 224))
        rep.log(f"engine {mode}: loaded {rt.label} {rt.precision}, warm-up {time.monotonic() - t0:.1f}s, "
                f"CUDA graphs in use: {rt.graphs_active}")
        out[mode] = {}
        for b in plan.batches:
            x = torch.randn((b, 3, 224, 224), device=plan.device).to(rt.dtype)
            rate = _rate(lambda x=x, rt=rt: rt.infer_tensor(x).float().cpu(), b, 2.0, sync)
            out[mode][b] = round(rate, 1)
            rep.log(f"engine {mode} {rt.precision} batch {b}: {rate:,.0f} img/s")
        rt.close()
        rep.save("engine_img_s", out)
    return out


def decode_limits(plan: Plan, model_dir: Path, corpus: list[Path], rep: Report) -> dict[str, float]:
    import torch

    from modelrepo.image_preprocess import Normalizer, preprocess
    from modelrepo.preprocess import Preprocess
    from service.engine.gpu_decode import JpegDecoder, device_step
    from service.runtimes.base import LoadSpec
    from service.runtimes.pytorch import PyTorchRuntime

    sync = torch.cuda.synchronize if plan.device == "cuda" else (lambda: None)
    pp = Preprocess.from_params({}, [3, 224, 224])
    decoder = JpegDecoder(pp, 40_000_000, lambda d: preprocess(d, pp, 40_000_000, Normalizer(pp)))
    blobs = [p.read_bytes() for p in corpus]
    b = plan.max_batch
    payloads = [decoder.pre(blobs[i % len(blobs)]) for i in range(b)]
    rt = PyTorchRuntime()
    rt.load(LoadSpec(model_dir / "1" / "model.pt", device=plan.device, input_shape=(3, 224, 224)))
    rt.warmup(list(range(1, b + 1)), (3, 224, 224))
    device = rt.torch_device
    out = {
        "decode_img_s": _rate(lambda: decoder.collate(payloads, device, rt.dtype), b, 2.0, sync),
        "pipeline_img_s": _rate(lambda: device_step(decoder, rt)(payloads), b, 2.0, sync),
        "pre_header_img_s": _rate(lambda: [decoder.pre(blobs[i % len(blobs)]) for i in range(64)], 64, 1.0, sync),
        "batch": b,
    }
    rt2 = PyTorchRuntime()
    rt2.load(LoadSpec(model_dir / "1" / "model.pt", device=plan.device, input_shape=(3, 224, 224)))
    rt2.warmup(list(range(1, b + 1)), (3, 224, 224))
    out["pipeline_2_instances_img_s"] = _parallel_rate([device_step(decoder, r) for r in (rt, rt2)], payloads, 3.0)
    out = {k: round(v, 1) if isinstance(v, float) else v for k, v in out.items()}
    rep.log(f"decode at batch {b}: {out['decode_img_s']:,.0f} img/s; decode + infer (pipeline limit): "
            f"{out['pipeline_img_s']:,.0f} img/s, with 2 instances on 2 streams "
            f"{out['pipeline_2_instances_img_s']:,.0f} img/s; JPEG header checks: "
            f"{out['pre_header_img_s']:,.0f} img/s/thread")
    rt.close()
    rt2.close()
    rep.save("decode", out)
    return out


def _start(plan: Plan, repo: Path, procs: int, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    from loadtest.server_process import free_port

    port = free_port()
    argv = [sys.executable, "-m", "service", "--model-repo", str(repo), "--models", f"{plan.arch}_pt",
            "--port", str(port), "--processes", str(procs), "--instances", str(plan.instances),
            "--workers", "4", "--max-queue-size", "4096", "--device", plan.device, "--grpc-port", "0"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    return proc, port


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, procs: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        # one process logs both; with --processes N the engine loads once and each front end starts
        if "startup complete: ready" in text and text.count("Application startup complete.") >= procs:
            return
        if proc.poll() is not None or "startup complete: not ready" in text:
            raise RuntimeError(f"service did not start:\n{text[-4000:]}")
        time.sleep(0.5)
    raise RuntimeError(f"service not ready in {timeout:.0f}s:\n{log.read_text(errors='replace')[-4000:]}")


def http_runs(plan: Plan, repo: Path, corpus: list[Path], rep: Report, pipeline: float) -> list[dict[str, Any]]:
    from loadtest.wrk import run_wrk

    rows: list[dict[str, Any]] = []
    for procs in plan.processes:
        if rep.elapsed() > plan.budget_s:
            rep.log(f"skipping {procs} processes: {rep.elapsed():.0f}s spent (budget {plan.budget_s:.0f}s)")
            continue
        log = rep.out / f"service-{procs}p.log"
        proc, port = _start(plan, repo, procs, log)
        try:
            t0 = time.monotonic()
            _wait_ready(proc, log, procs, 300)
            rep.log(f"service with {procs} process(es) x {plan.instances} instances ready in "
                    f"{time.monotonic() - t0:.1f}s")
            for c in plan.concurrency:
                point = run_wrk(f"http://127.0.0.1:{port}/classify", corpus[0], c, plan.seconds, proc.pid,
                                threads=min(4, max(1, c // 64)), bodies=corpus)
                row = {"processes": procs, "concurrency": c, "img_s": round(point.rps, 1),
                       "p50_ms": point.p50_ms, "p99_ms": point.p99_ms, "errors": point.errors,
                       "ok": point.ok, "requests": point.requests, "machine_busy_cores":
                       round(point.machine_busy_s / point.seconds, 1) if point.seconds else None,
                       "vs_pipeline": round(point.rps / pipeline, 3) if pipeline else None}
                rows.append(row)
                rep.log(f"HTTP {procs}p c={c}: {point.rps:,.0f} img/s, p50 {point.p50_ms:.1f} ms, "
                        f"p99 {point.p99_ms:.1f} ms, non-2xx/errors {point.errors}, "
                        f"{row['vs_pipeline']} x pipeline limit")
                rep.save("http", rows)
            rep.save(f"metrics_{procs}p", _gpu_metrics(port))
        except RuntimeError as e:
            rep.log(f"service with {procs} process(es) failed: {e}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
            _trim(log)
    return rows


def _trim(log: Path, keep: int = 1 << 20) -> None:
    """Keep a service log under the device tool's file limit: its first and last MiB."""
    if log.exists() and log.stat().st_size > 4 * keep:
        data = log.read_bytes()
        log.write_bytes(data[:keep] + b"\n[... trimmed ...]\n" + data[-keep:])


def _gpu_metrics(port: int) -> list[str]:
    """The service's gpu_* and batch-size lines from /metrics (NVML through nvidia-ml-py)."""
    from loadtest.server_process import http_get

    try:
        _, body = http_get(port, "/metrics", timeout=10)
    except OSError as e:
        return [f"error: {e}"]
    keep = ("gpu_", "inference_batch_size_sum", "inference_batch_size_count", "inference_images_total")
    return [ln for ln in body.decode().splitlines() if ln.startswith(keep)]


def table(rep: Report) -> str:
    d = rep.data
    m = d.get("machine", {})
    lines = [f"GPU check on {m.get('gpu', m.get('device'))} ({m.get('cpu_cores')} CPU cores), torch "
             f"{m.get('torch')}, resnet50 random weights, FP16, {d.get('plan', {}).get('instances')} instances", "",
             "| what | batch / load | img/s | p50 ms | p99 ms | note |", "|---|---|---|---|---|---|"]
    for mode, rates in d.get("engine_img_s", {}).items():
        for b, r in rates.items():
            lines.append(f"| engine limit, {mode} | batch {b} | {r:,.0f} | | | device tensors in, logits to host |")
    dec = d.get("decode", {})
    if dec:
        lines.append(f"| GPU JPEG decode + preprocess | batch {dec['batch']} | {dec['decode_img_s']:,.0f} | | | "
                     "5 photos, 300-640 px |")
        lines.append(f"| pipeline limit (decode + infer) | batch {dec['batch']} | {dec['pipeline_img_s']:,.0f} | | | "
                     "the service's batch step |")
        lines.append(f"| pipeline limit, 2 instances | batch {dec['batch']} | "
                     f"{dec.get('pipeline_2_instances_img_s', 0):,.0f} | | | two streams, two threads |")
    for r in d.get("http", []):
        errs = sum(r["errors"].values())
        how = "1 process" if r["processes"] == 1 else f"{r['processes']} front ends + 1 engine"
        lines.append(f"| service over HTTP, {how} | c={r['concurrency']} | {r['img_s']:,.0f} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['vs_pipeline']} x pipeline; errors {errs} |")
    return "\n".join(lines)


def run(out: Path, prep: Path, dry_run: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plan = DRY if dry_run else GPU
    rep = Report(out)
    rep.save("plan", asdict(plan))
    rep.save("machine", machine(plan))
    rep.log(f"machine: {rep.data['machine']}")
    setup_wrk(prep, rep)
    corpus = sorted((prep / "corpus").glob("*.jpg"))
    if not corpus:
        raise SystemExit(f"no JPEGs in {prep / 'corpus'}: run `python -m loadtest.gpu_prepare` first")
    repo = Path(tempfile.mkdtemp(prefix="gpucheck-repo-"))
    try:
        model_dir = export_model(plan, repo, rep)
        engine_limits(plan, model_dir, rep)
        dec = decode_limits(plan, model_dir, corpus, rep)
        if plan.device == "cuda":
            import torch

            torch.cuda.empty_cache()
        http_runs(plan, repo, corpus, rep, max(dec["pipeline_img_s"], dec["pipeline_2_instances_img_s"]))
    finally:
        (out / "gpu_check.md").write_text(table(rep) + "\n")
        rep.log("table:\n" + table(rep))
        shutil.rmtree(repo, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure (on the GPU machine; --dry-run on a CPU)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--prep", type=Path, default=ROOT / ".gpucheck")
    r.add_argument("--dry-run", action="store_true", help="CPU, resnet18, tiny sizes: everything but CUDA")
    args = p.parse_args(argv)
    run(args.out, args.prep, args.dry_run)


if __name__ == "__main__":
    main()
