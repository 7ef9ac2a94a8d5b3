"""Server subprocesses on a free loopback port: start, wait for readiness, CPU time, stop by PID."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"
_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # the fields after "pid (comm) ": state, ppid, ...


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (a --processes supervisor's front ends and engine)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (f := _stat(int(d.name))) is not None:
            children.setdefault(int(f[1]), []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def proc_cpu_s(pid: int) -> float:
    """user + system CPU seconds of a live process (all its threads) and of its live descendants,
    from /proc/<pid>/stat (utime and stime are fields 14 and 15)."""
    total = 0.0
    for i, p in enumerate([pid, *descendants(pid)]):
        f = _stat(p)
        if f is None:
            if i == 0:
                return float("nan")
            continue
        total += (int(f[11]) + int(f[12])) / _TICK
    return total


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait), from /proc/stat."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(p) for p in parts]
    busy = sum(ticks[:8]) - ticks[3] - ticks[4]  # user nice system idle iowait irq softirq steal
    return busy / _TICK


def wait_idle(pid: int, timeout: float = 120.0, window: float = 0.3, busy_cores: float = 0.05) -> float:
    """Wait until process ``pid`` uses under ``busy_cores`` CPU over ``window`` s; seconds waited.

    A server may still be working on requests whose load generator has gone (closed connections
    are not noticed by every server): the next measurement must not start before that is done.
    """
    t0 = time.monotonic()
    last = proc_cpu_s(pid)
    while time.monotonic() - t0 < timeout:
        time.sleep(window)
        now = proc_cpu_s(pid)
        if not now - last > busy_cores * window:  # also stops on NaN (process gone)
            break
        last = now
    return time.monotonic() - t0


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    """A server subprocess; ``stop()`` sends SIGTERM to its PID, then SIGKILL after ``grace`` s."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path) -> None:
        self.name = name
        self.port = port
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cpu_s(self) -> float:
        return proc_cpu_s(self.pid)

    def wait_ready(self, path: str, timeout: float) -> float:
        """Poll ``path`` until it answers 200; seconds it took. Raises if the process dies or time runs out."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if http_get(self.port, path)[0] == 200:
                    return time.monotonic() - t0
            time.sleep(0.25)
        raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s; log:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, grace: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()
        return self.proc.returncode


@contextlib.contextmanager
def running(name: str, argv: list[str], port: int, log: Path, ready_path: str, timeout: float) -> Iterator[Server]:
    server = Server(name, argv, port, log)
    try:
        server.wait_ready(ready_path, timeout)
        yield server
    finally:
        server.stop()


def service_argv(repo: Path, model: str, port: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "service", "--model-repo", str(repo), "--models", model,
            "--default-model", model, "--host", HOST, "--port", str(port), "--log-level", "WARNING",
            *([] if "--grpc-port" in extra else ["--grpc-port", "0"]), *extra]


def naive_argv(repo: Path, model: str, port: int) -> list[str]:
    return [sys.executable, "-m", "loadtest.naive_server", "--repo", str(repo), "--model", model,
            "--host", HOST, "--port", str(port)]
