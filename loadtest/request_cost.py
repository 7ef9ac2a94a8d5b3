"""``python -m loadtest.request_cost``: the server's CPU per request, for each protocol and process mode.

A tiny model (default: ``timm:test_resnet``, random weights, exported to a temporary repository;
``--repo DIR --model NAME``: an existing one) keeps inference small, so protocol overhead shows beside it.
For each ``--modes`` value the service runs as a subprocess (``python -m service --processes N
--intra-op-threads 1``, from ``--server-root``: a git worktree of an older commit measures that commit),
and for each protocol a light asyncio client, ``--concurrency`` requests in flight, sends ``--warmup``
requests, waits for the server to go idle, then sends ``--requests`` more. The cost: user+system CPU
seconds of the server's whole process tree meanwhile (``/proc/PID/stat``, in clock ticks: use a few
hundred requests; the client's CPU is not counted) over the requests answered 200 (errors are reported,
never counted as answers); with ``--processes 2`` the front ends' and the engine's shares apart. Protocols:

  classify         POST /classify, the raw JPEG (Content-Type image/jpeg)
  v2-http-tensor   POST /v2/models/NAME/infer, one FP32 tensor of the model's input shape as a JSON list
  v2-grpc-tensor   KServe v2 gRPC (tritonclient.grpc.aio), the same tensor, binary
  v2-grpc-bytes    KServe v2 gRPC, a BYTES input holding the JPEG, top-5 classification output

The photo is scikit-image's ``coffee`` as JPEG quality 90. Prints a markdown table (CPU ms per request)
and, with ``--json PATH``, writes every figure with the server checkout's commit and the CPU model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loadtest import rawclient
from loadtest.images import sample_jpegs
from loadtest.server_process import HOST, Server, descendants, free_port, http_get, proc_cpu_s, wait_idle

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = ("classify", "v2-http-tensor", "v2-grpc-tensor", "v2-grpc-bytes")
ROLES = ("front", "engine", "other")
_TICK = os.sysconf("SC_CLK_TCK")
SETTLE_S = 0.05  # after the last answer, before the closing CPU reading: the server's bookkeeping

Call = Callable[[], Awaitable[str | None]]  # one request; None when answered 200, else what went wrong


def log(msg: str) -> None:
    print(f"[request-cost {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    return lambda s: [kind(x.strip()) for x in s.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.request_cost", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=Path, help="an existing model repository (default: export a tiny model)")
    ap.add_argument("--model", help="the model in --repo to serve (needed with --repo)")
    ap.add_argument("--modes", type=_csv(int), default=[1, 2], help="--processes values, comma-separated (1,2)")
    ap.add_argument("--protocols", type=_csv(str), default=list(PROTOCOLS),
                    help=f"comma-separated, default all: {','.join(PROTOCOLS)}")
    ap.add_argument("--requests", type=int, default=300, help="measured requests per protocol and mode")
    ap.add_argument("--warmup", type=int, default=30, help="requests sent first, not measured")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight at once")
    ap.add_argument("--server-root", type=Path, default=ROOT,
                    help="checkout to run `python -m service` (and the export) from, with this Python")
    ap.add_argument("--idle-s", type=float, default=1.0, help="seconds the idle server's CPU is read over")
    ap.add_argument("--ready-timeout", type=float, default=180.0)
    ap.add_argument("--log-dir", type=Path, help="keep the server logs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    if (args.repo is None) != (args.model is None):
        ap.error("--repo and --model go together")
    if not args.modes or min(args.modes) < 1 or min(args.requests, args.concurrency) < 1 or args.warmup < 0:
        ap.error("--modes, --requests and --concurrency must be >= 1, --warmup >= 0")
    if bad := set(args.protocols) - set(PROTOCOLS):
        ap.error(f"unknown protocols {sorted(bad)}: choose from {', '.join(PROTOCOLS)}")
    return args


def roles(root: int, pids: list[int], log_text: str) -> dict[int, str]:
    """Each process's part: ``front`` (uvicorn's "Started server process [PID]"; with --processes 1 the one
    process), ``engine`` ("engine started (pid PID)"; a log without that line: every child but the front
    ends), ``other`` (the supervisor, multiprocessing's resource tracker)."""
    fronts = {int(p) for p in re.findall(r"Started server process \[(\d+)\]", log_text)}
    engines = {int(p) for p in re.findall(r"engine started \(pid (\d+)\)", log_text)} or set(pids) - fronts
    return {p: "front" if p in fronts else "engine" if p in engines else "other" for p in [root, *pids]}


def cpu_delta(before: dict[int, float], after: dict[int, float], role_of: dict[int, str]) -> dict[str, float]:
    """CPU seconds each role spent between two readings of the tree, and ``total``. A process in one
    reading only (one died or was started meanwhile: a crash, a restart) makes the figure meaningless."""
    if before.keys() != after.keys():
        raise RuntimeError(f"the server's processes changed while measuring: {sorted(before)} -> {sorted(after)}")
    out = dict.fromkeys(ROLES, 0.0)
    for pid, cpu in after.items():
        out[role_of.get(pid, "other")] += cpu - before[pid]
    out["total"] = sum(out[r] for r in ROLES)
    return {k: round(v, 6) for k, v in out.items()}


def per_request_ms(cpu_s: dict[str, float], answered: int) -> dict[str, float]:
    return {k: round(1000 * v / answered, 4) if answered else math.nan for k, v in cpu_s.items()}


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def cpu_by_pid(root: int) -> dict[int, float]:
    """user + system CPU seconds of each live process of the tree, each its own (its threads')."""
    out = {}
    for pid in [root, *descendants(root)]:
        if (f := _stat(pid)) is not None:
            out[pid] = (int(f[11]) + int(f[12])) / _TICK
    return out


class ServiceProcess(Server):
    """``procs.Server`` run from a checkout, unbuffered, in its own session (a Ctrl-C reaches us, we stop it)."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path, cwd: Path) -> None:
        self.name, self.port, self.log = name, port, log
        self._log_file = log.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_started(self, processes: int, timeout: float) -> None:
        """Ready, and every front end's "Application startup complete." logged (one may answer before)."""
        t0 = time.monotonic()
        self.wait_ready("/health/ready", timeout)
        while self.log.read_text(errors="replace").count("Application startup complete.") < processes:
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"{self.name}: not {processes} front ends started; log:\n{self.tail()}")
            time.sleep(0.1)


@contextlib.contextmanager
def serving(root: Path, repo: Path, model: str, processes: int, args: argparse.Namespace,
            logs: Path) -> Iterator[tuple[ServiceProcess, int]]:
    port, gport = free_port(), free_port()
    while gport == port:
        gport = free_port()
    argv = [sys.executable, "-m", "service", "--model-repo", str(repo), "--models", model, "--default-model", model,
            "--host", HOST, "--port", str(port), "--grpc-port", str(gport), "--intra-op-threads", "1",
            "--processes", str(processes), "--cache-size", "0", "--log-level", "INFO"]
    log(f"--processes {processes}: starting the service from {root} (HTTP {port}, gRPC {gport})")
    srv = ServiceProcess(f"p{processes}", argv, port, logs / f"service-p{processes}-{port}.log", root)
    started: dict[int, str] = {}
    try:
        srv.wait_started(processes, args.ready_timeout)
        started = {p: f[19] for p in [srv.pid, *descendants(srv.pid)] if (f := _stat(p))}
        yield srv, gport
    finally:
        code = srv.stop(grace=30)
        for pid, start in started.items():  # a child the supervisor left behind (same PID, same start)
            if (f := _stat(pid)) is not None and f[19] == start and f[0] != "Z":
                log(f"killing leftover server process {pid}")
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        log(f"--processes {processes}: stopped (exit {code})")


@dataclass
class Tally:
    ok: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)  # the first few errors, as they were told


async def drive(calls: list[Call], total: int) -> Tally:
    """``total`` requests, ``len(calls)`` in flight at once, each slot sending its next when answered."""
    tally, left = Tally(), total

    async def slot(call: Call) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            error = await call()
            tally.ok += error is None
            if error is not None:
                tally.errors += 1
                tally.samples += [error][:5 - len(tally.samples)]

    await asyncio.gather(*(slot(c) for c in calls))
    return tally


def http_call(port: int, request: bytes, conns: list[rawclient.Connection]) -> Call:
    conn = rawclient.Connection(HOST, port)
    conns.append(conn)

    async def call() -> str | None:
        a = await conn.send(request)
        return None if a.status == 200 else f"HTTP {a.status or a.error}: {a.body[:300]!r}"

    return call


def grpc_call(client: Any, model: str, inputs: list[Any], outputs: list[Any], out_name: str) -> Call:
    async def call() -> str | None:
        try:
            result = await client.infer(model, inputs, outputs=outputs)
        except Exception as e:  # noqa: BLE001 - an error answer, reported
            return f"gRPC {type(e).__name__}: {str(e)[:300]}"
        return None if result.get_output(out_name) is not None else f"gRPC answer without output {out_name!r}"

    return call


@dataclass
class ModelIO:  # the model's input (name, dims after the batch) and output, from GET /v2/models/NAME
    name: str
    input: str
    dims: list[int]
    output: str


def model_io(port: int, model: str) -> ModelIO:
    status, body = http_get(port, f"/v2/models/{model}", timeout=10)
    inp, out = (json.loads(body)["inputs"][0], json.loads(body)["outputs"][0]) if status == 200 else ({}, {})
    if inp.get("datatype") != "FP32":
        raise RuntimeError(f"GET /v2/models/{model}: {status} {body[:300]!r}: this benchmark sends FP32 tensors")
    return ModelIO(model, inp["name"], [int(d) for d in inp["shape"][1:]], out["name"])


def calls_for(protocol: str, io: ModelIO, port: int, grpc: Any, jpeg: bytes, n: int,
              conns: list[rawclient.Connection]) -> list[Call]:
    import tritonclient.grpc.aio as tga

    host = f"{HOST}:{port}"
    if protocol == "classify":
        req = rawclient.build("POST", f"/classify?model={io.name}", host, {"Content-Type": "image/jpeg"}, jpeg)
        return [http_call(port, req, conns) for _ in range(n)]
    x = np.random.default_rng(0).standard_normal((1, *io.dims)).round(4)  # 4 decimals: a sensible JSON client
    if protocol == "v2-http-tensor":
        body = json.dumps({"inputs": [{"name": io.input, "datatype": "FP32", "shape": list(x.shape),
                                       "data": x.ravel().tolist()}]}).encode()
        req = rawclient.build("POST", f"/v2/models/{io.name}/infer", host, {"Content-Type": "application/json"}, body)
        return [http_call(port, req, conns) for _ in range(n)]
    if protocol == "v2-grpc-tensor":
        inp = tga.InferInput(io.input, list(x.shape), "FP32")
        inp.set_data_from_numpy(x.astype(np.float32))
        outs = [tga.InferRequestedOutput(io.output)]
    else:  # v2-grpc-bytes: one encoded image per row, the top-5 as "score:index:label" strings
        inp = tga.InferInput(io.input, [1], "BYTES")
        inp.set_data_from_numpy(np.array([jpeg], dtype=object))
        outs = [tga.InferRequestedOutput(io.output, class_count=5)]
    return [grpc_call(grpc, io.name, [inp], outs, io.output) for _ in range(n)]


async def measure(srv: ServiceProcess, role_of: dict[int, str], calls: list[Call],
                  args: argparse.Namespace) -> dict[str, Any]:
    if args.warmup:
        warm = await drive(calls, args.warmup)
        if warm.errors:
            log(f"  warm-up: {warm.errors} errors, e.g. {warm.samples[0]}")
    await asyncio.to_thread(wait_idle, srv.pid)
    before, t0 = cpu_by_pid(srv.pid), time.monotonic()
    tally = await drive(calls, args.requests)
    wall = time.monotonic() - t0
    await asyncio.sleep(SETTLE_S)
    cpu = cpu_delta(before, cpu_by_pid(srv.pid), role_of)
    return {"answered_200": tally.ok, "errors": tally.errors, "error_samples": tally.samples, "wall_s": wall,
            "requests_per_s": args.requests / wall, "cpu_s": cpu, "cpu_ms_per_request": per_request_ms(cpu, tally.ok)}


async def measure_protocols(srv: ServiceProcess, gport: int, role_of: dict[int, str], jpeg: bytes,
                            args: argparse.Namespace, model: str) -> dict[str, Any]:
    import tritonclient.grpc.aio as tga

    io = model_io(srv.port, model)
    out: dict[str, Any] = {}
    async with tga.InferenceServerClient(f"{HOST}:{gport}") as grpc:
        for protocol in args.protocols:
            conns: list[rawclient.Connection] = []
            try:
                calls = calls_for(protocol, io, srv.port, grpc, jpeg, args.concurrency, conns)
                out[protocol] = r = await measure(srv, role_of, calls, args)
            finally:
                for c in conns:
                    c.close()
            ms = r["cpu_ms_per_request"]
            log(f"  {protocol}: {ms['total']:.2f} CPU ms/request ({ms['front']:.2f} front, {ms['engine']:.2f} "
                f"engine), {r['answered_200']} answered 200, {r['errors']} errors, {r['requests_per_s']:.0f} req/s"
                + "".join(f"\n    error: {e}" for e in r["error_samples"]))
    return out


def measure_mode(root: Path, repo: Path, model: str, processes: int, jpeg: bytes, args: argparse.Namespace,
                 logs: Path) -> dict[str, Any]:
    with serving(root, repo, model, processes, args, logs) as (srv, gport):
        role_of = roles(srv.pid, descendants(srv.pid), srv.log.read_text(errors="replace"))
        log(f"--processes {processes}: processes {role_of}")
        wait_idle(srv.pid)
        c0 = proc_cpu_s(srv.pid)
        time.sleep(args.idle_s)
        idle = 1000 * (proc_cpu_s(srv.pid) - c0) / args.idle_s
        protocols = asyncio.run(measure_protocols(srv, gport, role_of, jpeg, args, model))
        return {"processes": processes, "server_cwd": os.readlink(f"/proc/{srv.pid}/cwd"),
                "pids": {r: sorted(p for p, x in role_of.items() if x == r) for r in ROLES},
                "idle_cpu_ms_per_s": idle, "protocols": protocols}


def format_table(modes: dict[int, dict[str, Any]], protocols: list[str]) -> str:
    """Rows: protocols; columns: CPU ms/request per mode, and the front ends' and engine's for N > 1."""
    cols = [(m, k) for m in modes for k in (("total", "front", "engine") if m > 1 else ("total",))]
    head = ["protocol", *(f"--processes {m}: {'front ends' if k == 'front' else k}" for m, k in cols)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in protocols:
        cells = [p]
        for m, key in cols:
            r = modes[m]["protocols"].get(p)
            errors = f" ({r['errors']} errors)" if r and r["errors"] and key == "total" else ""
            cells.append("-" if r is None else f"{r['cpu_ms_per_request'][key]:.2f}{errors}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model(cpuinfo: str) -> str:
    """The first "model name" of /proc/cpuinfo's text."""
    names = [x.split(":", 1)[1].strip() for x in cpuinfo.splitlines() if x.startswith("model name")]
    return names[0] if names else "unknown"


def git(root: Path, *argv: str) -> str:
    return subprocess.run(["git", "--no-optional-locks", "-C", str(root), *argv], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def commit_of(root: Path) -> str:
    """The server checkout's short commit; ``+dirty`` when service/, modelrepo/ or export/ has changes."""
    dirty = git(root, "status", "--porcelain", "--", "service", "modelrepo", "export")
    return (git(root, "rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if dirty else "")


def export_tiny(root: Path, workdir: Path) -> tuple[Path, str]:
    repo = workdir / "repo"
    cmd = [sys.executable, "-m", "export", "--arch", "timm:test_resnet", "--weights", "random", "--repo", str(repo),
           "--name", "tiny", "--max-batch-size", "8"]
    log(f"exporting timm:test_resnet (random weights) to {repo} ...")
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=1200)
    if r.returncode != 0:
        raise RuntimeError(f"export failed ({r.returncode}):\n" + "\n".join((r.stdout + r.stderr).splitlines()[-30:]))
    log(f"exported in {time.monotonic() - t0:.1f} s")
    return repo, "tiny"


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    root = args.server_root.resolve()
    logs = args.log_dir.resolve() if args.log_dir else tmp
    logs.mkdir(parents=True, exist_ok=True)
    jpeg = sample_jpegs()["coffee.jpg"]
    repo, model = (args.repo.resolve(), args.model) if args.repo else export_tiny(root, tmp)
    modes = {m: measure_mode(root, repo, model, m, jpeg, args, logs) for m in args.modes}
    return {"commit": commit_of(root), "server_root": str(root), "cores": os.cpu_count(),
            "cpu_model": cpu_model(Path("/proc/cpuinfo").read_text()), "model": model,
            "repo": str(repo) if args.repo else "(temporary export of timm:test_resnet)",
            "protocols": args.protocols, "requests": args.requests, "warmup": args.warmup,
            "concurrency": args.concurrency, "jpeg_bytes": len(jpeg), "modes": {str(m): v for m, v in modes.items()}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the finally that stops servers
    with tempfile.TemporaryDirectory(prefix="request-cost-") as tmp:
        doc = run(args, Path(tmp))
    modes = {int(m): v for m, v in doc["modes"].items()}
    print(f"\nServer CPU ms per request answered 200 (user+sys of every server process, /proc), "
          f"{args.requests} requests per cell at concurrency {args.concurrency} after {args.warmup} warm-up; "
          f"model {doc['model']}; commit {doc['commit']}; CPU: {doc['cpu_model']} ({doc['cores']} cores)\n")
    print(format_table(modes, args.protocols))
    idle = ", ".join(f"--processes {m}: {v['idle_cpu_ms_per_s']:.1f}" for m, v in modes.items())
    print(f"\nidle server CPU, ms per second: {idle}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {args.json}")
    errors = sum(r["errors"] for v in modes.values() for r in v["protocols"].values())
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
