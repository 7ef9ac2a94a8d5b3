"""``python -m loadtest.grpc_bench``: KServe v2 over gRPC beside HTTP ``/classify``, one service, one run.

The same JPEG, classified top-5, by ``--concurrency`` closed loops of each protocol's asyncio client
(``tritonclient.grpc.aio`` with a BYTES input; ``httpx`` posting the raw JPEG), in alternating rounds
so drift lands on both. The clients run on this machine beside the server: on a small box the
client's own CPU is part of what each protocol costs. Prints a table with the gRPC / HTTP ratio and
writes ``loadtest/results/grpc-<timestamp>.json`` and ``grpc-latest.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from loadtest import report
from loadtest.images import sample_jpegs
from loadtest.server_process import free_port, running, service_argv

RESULTS = Path(__file__).with_name("results")


def log(msg: str) -> None:
    print(f"[grpc-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.grpc_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path("model_repo"))
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per round and protocol")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--image", choices=sorted(sample_jpegs()), default="coffee.jpg")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


async def closed_loops(call: Callable[[], Awaitable[bool]], clients: int, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    end = time.monotonic() + seconds

    async def loop() -> None:
        nonlocal errors
        while time.monotonic() < end:
            t = time.monotonic()
            ok = await call()
            lat.append(time.monotonic() - t)
            errors += not ok

    t0 = time.monotonic()
    await asyncio.gather(*(loop() for _ in range(clients)))
    wall = time.monotonic() - t0
    q = np.percentile(lat, [50, 99]) * 1000 if lat else [float("nan")] * 2
    return {"rps": (len(lat) - errors) / wall, "p50_ms": float(q[0]), "p99_ms": float(q[1]), "errors": errors,
            "requests": len(lat)}


async def measure(args: argparse.Namespace, http_url: str, grpc_url: str, data: bytes) -> dict[str, list[Any]]:
    import tritonclient.grpc.aio as tga

    out: dict[str, list[Any]] = {"grpc": [], "http": []}
    async with tga.InferenceServerClient(grpc_url) as g, httpx.AsyncClient(base_url=http_url, timeout=60) as h:
        inp = tga.InferInput("input", [1], "BYTES")
        inp.set_data_from_numpy(np.array([data], dtype=object))
        outs = [tga.InferRequestedOutput("logits", class_count=5)]

        async def via_grpc() -> bool:
            try:
                await g.infer(args.model, [inp], outputs=outs)
                return True
            except Exception:  # noqa: BLE001 - counted as an error
                return False

        async def via_http() -> bool:
            r = await h.post(f"/classify?model={args.model}&top_k=5", content=data,
                             headers={"Content-Type": "image/jpeg"})
            return r.status_code == 200

        await closed_loops(via_grpc, 4, 2.0)  # warm both paths
        await closed_loops(via_http, 4, 2.0)
        for r in range(args.rounds):
            for name, call in (("grpc", via_grpc), ("http", via_http)):
                res = await closed_loops(call, args.concurrency, args.duration)
                log(f"round {r + 1} {name}: {res['rps']:.1f} req/s p50 {res['p50_ms']:.1f} ms "
                    f"p99 {res['p99_ms']:.1f} ms errors {res['errors']}")
                out[name].append(res)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = sample_jpegs()[args.image]
    port, gport = free_port(), free_port()
    argv_ = service_argv(args.repo, args.model, port, ["--grpc-port", str(gport)])
    with tempfile.TemporaryDirectory(prefix="grpc-bench-") as tmp, \
            running("service", argv_, port, Path(tmp) / "service.log", "/health/ready", 600) as srv:
        runs = asyncio.run(measure(args, srv.url, f"127.0.0.1:{gport}", data))
    med = {p: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")}
           for p, rs in runs.items()}
    ratio = med["grpc"]["rps"] / med["http"]["rps"]
    print(f"\n{args.model}, c={args.concurrency}, median of {args.rounds} rounds of {args.duration:g} s\n")
    print("| protocol | req/s | p50 ms | p99 ms |\n|---|---|---|---|")
    for p in ("http", "grpc"):
        print(f"| {p} | {med[p]['rps']:.1f} | {med[p]['p50_ms']:.1f} | {med[p]['p99_ms']:.1f} |")
    print(f"\ngRPC / HTTP throughput: {ratio:.2f}x")
    path = report.write_results(args.out, {"model": args.model, "concurrency": args.concurrency, "median": med,
                                           "ratio": ratio, "runs": runs}, "grpc", "grpc-latest.json")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
