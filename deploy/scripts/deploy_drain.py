"""Step 10 of `make deploy-test` (`deploy_test.py`), the drain check: `compose stop api` while four clients
keep classifying. Readiness must turn 503 while requests keep being answered (none dropped mid-request or
failed; a connection refused, or reset in the accept queue after the signal, counts as never accepted),
and the process must then exit 0 with no error in its log.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error

from deploy_common import docker_bin, http, run
from deploy_stack import Stack


def _classify_until(api: str, photo: bytes, stopping: threading.Event, stop_at: list[float],
                    answers: dict[str, int]) -> None:
    """One client: classify in a loop until ``stopping``, counting each answer (or failure) by kind."""
    while not stopping.is_set():
        started = time.monotonic()
        try:
            status, _ = http(f"{api}/classify", photo, {"Content-Type": "image/jpeg"}, timeout=30)
            key = str(status)
        except urllib.error.URLError as e:
            key = "refused" if isinstance(e.reason, ConnectionRefusedError) else f"error: {e.reason!r}"
        except (ConnectionError, OSError) as e:
            key = f"error: {e!r}"
        if key.startswith("error") and "Reset" in key and stop_at and started > stop_at[0]:
            # sent after SIGTERM and caught in the accept queue as the listener closed: never
            # accepted, so refused too (the shutdown delay is there for load balancers to stop first)
            key = "reset after the signal"
        answers[key] = answers.get(key, 0) + 1
        if key in ("refused", "reset after the signal"):
            time.sleep(0.1)


def _stop_under_load(stack: Stack, api: str, photo: bytes) -> tuple[list[int], dict[str, int]]:
    """`compose stop api` under 4 clients, polling readiness until it returns; returns the readiness
    answers seen while stopping and the clients' answers by kind."""
    ready: list[int] = []
    answers: dict[str, int] = {}
    stopping = threading.Event()
    stop_at: list[float] = []
    load = [threading.Thread(target=_classify_until, args=(api, photo, stopping, stop_at, answers))
            for _ in range(4)]
    for th in load:
        th.start()
    time.sleep(1.0)
    stop = threading.Thread(target=lambda: stack("stop", "api", timeout=120))
    t = time.monotonic()
    stop_at.append(t)
    stop.start()
    while stop.is_alive():
        try:
            status, _ = http(f"{api}/health/ready", timeout=2)
            ready.append(status)
        except OSError:
            pass
        time.sleep(0.2)
    stop.join()
    stopping.set()
    for th in load:
        th.join()
    print(f"compose stop api under 4 clients: {time.monotonic() - t:.1f} s; readiness answers while stopping: "
          f"{sorted(set(ready))}; classify answers: {answers}")
    return ready, answers


def _check_clean_exit(stack: Stack) -> None:
    """The stopped api exited 0 and logged no error (JSON records at ERROR or above, or a traceback)."""
    cid = stack.container("api")
    code = run([docker_bin(), "inspect", "-f", "{{.State.ExitCode}}", cid], capture=True, quiet=True).stdout.strip()
    assert code == "0", f"api exited with {code}"
    bad = []
    for line in stack.logs("api").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            if "Traceback" in line or "ERROR" in line:
                bad.append(line)
            continue
        if str(rec.get("level", "")).upper() in {"ERROR", "CRITICAL"}:
            bad.append(line)
    assert not bad, "errors in the api log:\n" + "\n".join(bad[:20])


def check_drain(stack: Stack, api: str, photo: bytes) -> None:
    """`compose stop api` under traffic: readiness turns 503 while requests keep being answered (none
    dropped mid-request or failed), then the process exits 0 with no error in its log."""
    ready, answers = _stop_under_load(stack, api, photo)
    assert 503 in ready, "readiness never answered 503 while the service drained"
    assert answers.get("200", 0) > 0
    dropped = {k: v for k, v in answers.items() if k not in ("200", "503", "refused", "reset after the signal")}
    assert not dropped, f"requests failed or were dropped while draining: {dropped}"
    _check_clean_exit(stack)
    print("drained: exit code 0, no error in the log")
