"""Run Debian's ``wrk`` with loadtest/wrk_post.lua and measure what it cost (latency, CPU)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtest.server_process import machine_busy_s, proc_cpu_s

LUA = Path(__file__).with_name("wrk_post.lua")
INSTALL_HINT = "wrk is not installed: `sudo apt-get update && sudo apt-get install -y wrk` (Debian/Ubuntu)"


def find_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(INSTALL_HINT)
    return path


@dataclass
class LoadPoint:
    """One closed-loop load run: ``concurrency`` connections posting as fast as answers come back."""

    concurrency: int
    seconds: float
    requests: int
    ok: int
    errors: dict[str, int]
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    wrk_cpu_s: float  # user+sys of the load generator
    server_cpu_s: float  # user+sys of the server process
    machine_busy_s: float  # all cores, everything (other users of the machine included)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def other_cpu_s(self) -> float:
        """CPU that neither wrk nor the server used: noise from the rest of the machine."""
        return max(0.0, self.machine_busy_s - self.wrk_cpu_s - self.server_cpu_s)

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "other_cpu_s": self.other_cpu_s}


def run_wrk(url: str, body: Path, concurrency: int, seconds: float, server_pid: int,
            timeout_s: float = 30.0, threads: int = 1, bodies: list[Path] | None = None) -> LoadPoint:
    """``wrk -tT -cN -dDs --latency`` posting ``body`` (or each of ``bodies`` in turn); CPU times of wrk
    (wait4 rusage) and the server."""
    wrk = find_wrk()
    argv = [wrk, f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", f"--timeout={timeout_s:g}s",
            "--latency", "-s", str(LUA), url, "--", str(body), "image/jpeg"]
    env = {**os.environ, "WRK_BODY_FILES": ":".join(map(str, bodies or []))}
    with tempfile.TemporaryFile() as out:
        srv0, busy0 = proc_cpu_s(server_pid), machine_busy_s()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        # wait4 gives the rusage of exactly this child (not of every child reaped so far).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        srv1, busy1 = proc_cpu_s(server_pid), machine_busy_s()
        out.seek(0)
        text = out.read().decode(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {' '.join(argv)}\n{text}")
    r = json.loads(line[len("WRK_JSON "):])
    secs = r["duration_us"] / 1e6
    errors = {k: int(v) for k, v in r["errors"].items()}
    # "status" counts non-2xx/3xx answers; the others are socket errors (no answer at all).
    ok = r["requests"] - errors["status"]
    return LoadPoint(
        concurrency=concurrency, seconds=secs, requests=r["requests"], ok=ok, errors=errors,
        rps=ok / secs if secs else 0.0,
        p50_ms=r["p50_us"] / 1000, p90_ms=r["p90_us"] / 1000, p99_ms=r["p99_us"] / 1000,
        mean_ms=r["mean_us"] / 1000, max_ms=r["max_us"] / 1000,
        wrk_cpu_s=usage.ru_utime + usage.ru_stime, server_cpu_s=srv1 - srv0, machine_busy_s=busy1 - busy0,
    )
