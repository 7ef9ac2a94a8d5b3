"""Cap a process's CPU with a cgroup quota: a slow CPU reproduced on a fast one (``--cpu-quota``).

``cap(pid, per_core)`` makes a child cgroup, gives it ``per_core`` x the machine's cores of CPU time
per period (a quota of 0.25 per core on 2 cores: half a core in all, every period) and moves ``pid``
and its descendants there; leaving the context moves whatever is left back to the parent and removes
the cgroup. Threads and processes the capped process starts afterwards stay inside.

cgroup v2 (``cpu.max``) where the unified hierarchy has the cpu controller, else cgroup v1
(``cpu.cfs_quota_us``). Needs root (or a delegated cgroup). A quota throttles in bursts: the group runs
at full speed until its share of the period is spent, then waits for the next period. That is what a
container with a CPU limit sees (Kubernetes' period is 100 ms, the kernel's default); ``period_ms``
shorter makes it closer to a uniformly slower CPU.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loadtest.server_process import descendants

_MOUNTS = Path("/proc/mounts")


@dataclass(frozen=True)
class CpuCgroup:
    """A cgroup with a CPU quota: its directory and how it is spelled (cgroup v1 or v2)."""

    path: Path
    v2: bool

    def set_quota(self, cores: float, period_us: int) -> None:
        quota_us = max(1000, round(cores * period_us))
        if self.v2:
            (self.path / "cpu.max").write_text(f"{quota_us} {period_us}\n")
        else:
            (self.path / "cpu.cfs_period_us").write_text(f"{period_us}\n")
            (self.path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")

    def add(self, pid: int) -> None:
        """Move ``pid`` (all its threads) and its live descendants here."""
        for p in [pid, *descendants(pid)]:
            with contextlib.suppress(ProcessLookupError):  # a child that has just exited
                (self.path / "cgroup.procs").write_text(f"{p}\n")

    def throttled_s(self) -> float:
        """Seconds the group was held back by its quota so far (cpu.stat)."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        if "throttled_usec" in stat:
            return int(stat["throttled_usec"]) / 1e6
        return int(stat.get("throttled_time", 0)) / 1e9

    def remove(self) -> None:
        """Move what is left to the parent, then remove the directory (retried while exiting tasks go)."""
        parent = self.path.parent / "cgroup.procs"
        for _ in range(50):
            with contextlib.suppress(OSError):
                for p in (self.path / "cgroup.procs").read_text().split():
                    with contextlib.suppress(OSError):
                        parent.write_text(f"{p}\n")
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)  # an exiting task is still counted for a moment: retry, bounded
        raise OSError(f"could not remove cgroup {self.path}: tasks still in it")


def cpu_root() -> tuple[Path, bool]:
    """The mounted hierarchy that has the cpu controller: (its directory, whether it is cgroup v2)."""
    v1: Path | None = None
    v2: Path | None = None
    for line in _MOUNTS.read_text().splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        if parts[2] == "cgroup2" and v2 is None:
            v2 = Path(parts[1])
        elif parts[2] == "cgroup" and "cpu" in parts[3].split(",") and v1 is None:
            v1 = Path(parts[1])
    if v2 is not None and "cpu" in _read(v2 / "cgroup.controllers").split():
        return v2, True
    if v1 is not None:
        return v1, False
    raise OSError("no cgroup hierarchy with the cpu controller is mounted (see /proc/mounts)")


def unusable() -> str | None:
    """Why ``cap`` cannot work here (None when it can): not root, or no writable cpu controller."""
    try:
        root, _ = cpu_root()
    except OSError as e:
        return str(e)
    if not os.access(root, os.W_OK):
        return f"{root} is not writable: a CPU quota needs root (or a delegated cgroup)"
    return None


def per_core_for(target_rps: float, rps: float, cores_used: float) -> float:
    """The quota per core that should bring a server that serves ``rps`` on ``cores_used`` cores down to
    about ``target_rps`` (1.0: it is that slow already)."""
    cores = cores_used * target_rps / rps if rps > 0 else 1.0
    return min(1.0, max(0.005, cores / (os.cpu_count() or 1)))


def smooth_period_ms(per_core: float, slice_ms: float = 2.0) -> float:
    """The shortest period (at least 10 ms) that still gives the group ``slice_ms`` of CPU each time:
    throttling in short bursts, more like a uniformly slow CPU than the default 100 ms."""
    return max(10.0, slice_ms / (per_core * (os.cpu_count() or 1)))


def settle(group: CpuCgroup, per_core: float, measure: Callable[[], float], target_rps: float,
           tries: int = 3, tolerance: float = 0.2) -> tuple[float, float]:
    """Rescale ``group``'s quota until ``measure()`` (the rate the capped process serves now) is within
    ``tolerance`` of ``target_rps``, at most ``tries`` times. A quota's effect is not proportional to it
    (throttling in bursts costs more than the CPU it withholds), so ``per_core_for``'s guess alone landed
    at 0.3-0.7x the target. Returns (the quota per core, the rate measured at it)."""
    rps = measure()
    for _ in range(tries):
        if rps > 0 and abs(rps / target_rps - 1) <= tolerance:
            break
        per_core = min(1.0, max(0.005, per_core * (target_rps / rps if rps > 0 else 2.0)))
        group.set_quota(per_core * (os.cpu_count() or 1), round(smooth_period_ms(per_core) * 1000))
        rps = measure()
    return per_core, rps


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def make(name: str) -> CpuCgroup:
    root, v2 = cpu_root()
    if v2 and "cpu" not in _read(root / "cgroup.subtree_control").split():
        (root / "cgroup.subtree_control").write_text("+cpu\n")
    path = root / name
    path.mkdir()
    return CpuCgroup(path, v2)


@contextlib.contextmanager
def cap(pid: int, per_core: float, period_ms: float = 100.0) -> Iterator[CpuCgroup]:
    """Hold ``pid`` (and its descendants) to ``per_core`` of every core while the context lasts."""
    if not 0 < per_core <= 1:
        raise ValueError(f"a CPU quota per core must be in (0, 1], got {per_core}")
    try:
        group = make(f"imgserve-cpucap-{os.getpid()}-{pid}")
    except OSError as e:
        raise OSError(f"cannot make a cgroup for the CPU quota ({e}): run as root, or on a machine whose "
                      "cgroup cpu controller is writable") from e
    try:
        group.set_quota(per_core * (os.cpu_count() or 1), round(period_ms * 1000))
        group.add(pid)
        yield group
    finally:
        group.remove()
