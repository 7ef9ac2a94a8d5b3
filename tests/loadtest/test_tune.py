"""The capacity tuner (loadtest/tune): the search, the pruning and the tuner against a deterministic
queueing model (no server, no clock: exact answers), the files it writes, and one bounded real run."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from loadtest.tune.costs import Costs
from loadtest.tune.search import Probe, Search, bracket
from loadtest.tune.simulated import SimulatedServer
from loadtest.tune.space import Candidate, first_candidates, gate_problem
from loadtest.tune.tuner import CONFIRM_SHARES, Tuner

TARGET = 150.0


def sim_for(c: Candidate) -> SimulatedServer:
    """A machine where batching pays (20 ms + 8 ms an image) and two instances pay a little more."""
    if c.default:
        return SimulatedServer(lambda b: 20 + 8 * b, max_batch=1)
    return SimulatedServer(lambda b: 20 + 8 * b, max_batch=c.max_batch_size or 1, instances=c.instances or 1)


def true_capacity(server: SimulatedServer, target: float, seconds: float = 30.0) -> float:
    """The highest rate on a 0.5 req/s grid whose run meets the target: the answer the search must find."""
    rates = np.arange(0.5, 200.0, 0.5)
    ok = [r for r in rates if server.probe(float(r), seconds).passes(target)]
    return float(max(ok))


def test_the_search_brackets_the_capacity_within_its_precision() -> None:
    server = SimulatedServer(lambda b: 20 + 8 * b, max_batch=8)
    search = bracket(lambda r: server.probe(r), TARGET, start=10.0, precision=0.1, max_probes=12)
    truth = true_capacity(server, TARGET)
    assert search.capacity > 0
    assert server.probe(search.capacity).passes(TARGET)
    assert search.capacity <= truth + 0.5  # never claims more than the machine carries
    assert search.capacity >= truth / 1.1 - 0.5  # and is within the precision of it
    assert len(search.probes) < 12  # a bracket, not a sweep of the 400-point grid


def test_the_search_walks_down_when_the_start_is_too_fast() -> None:
    server = SimulatedServer(lambda b: 100.0, max_batch=1)  # 10 req/s at most
    search = bracket(lambda r: server.probe(r), 1000.0, start=80.0)
    assert 0 < search.capacity < 10
    assert search.probes[0].rate == 80.0 and not search.probes[0].passes(1000.0)


def test_a_pass_above_a_fail_is_noise_not_capacity() -> None:
    def probe(rate: float, p99: float) -> Probe:
        return Probe(rate, 10.0, 100, 100, p99)

    s = Search(TARGET, [probe(10, 50), probe(20, 400), probe(30, 100)])
    assert s.capacity == 10


def test_errors_and_a_backlog_fail_a_run_whatever_its_p99() -> None:
    assert Probe(100, 10, 1000, 991, 50.0).passes(TARGET)  # under 1 % errors passes ...
    assert not Probe(100, 10, 1000, 990, 50.0).passes(TARGET)  # ... 1 % does not
    behind = Probe(10, 10, 100, 100, 50.0, answered_in_time=80)
    assert "fell behind" in behind.why_not(TARGET)


def costs(model: str, runtime: str, pre: float, per_batch: dict[int, float]) -> Costs:
    return Costs(model, runtime, pre, per_batch)


def test_costs_prune_what_cannot_win_and_what_cannot_meet_the_target() -> None:
    measured = [
        costs("m", "fast", 3.0, {1: 10.0, 2: 14.0, 4: 22.0, 8: 40.0, 16: 90.0}),
        costs("m", "slow", 3.0, {1: 50.0, 2: 100.0, 4: 200.0}),
        costs("m_int8", "fast", 3.0, {1: 200.0}),
    ]
    starts, pruned = first_candidates(measured, TARGET, cores=2)
    assert [(s.candidate.model, s.candidate.runtime) for s in starts] == [("m", "fast")]
    assert starts[0].candidate.max_batch_size == 8  # 3 + 2 * 40 fits 150 ms; 3 + 2 * 90 does not
    assert any("m_int8 on fast" in p and "batch of 1" in p for p in pruned)
    assert any("m on slow" in p and "predicted" in p for p in pruned)


def test_the_fitting_batch_leaves_room_for_decode_and_one_batch_ahead() -> None:
    c = costs("m", "r", 10.0, {1: 20.0, 2: 30.0, 4: 50.0, 8: 80.0})
    assert c.fitting_batch(111.0) == 4  # 10 + 2 * 50 = 110 fits; 10 + 2 * 80 does not
    assert c.fitting_batch(40.0) is None


def test_an_ungated_or_failed_variant_is_never_tuned() -> None:
    assert gate_problem({}, "fp32") == ""
    assert "no accuracy gate" in gate_problem({}, "int8")
    assert "failed" in gate_problem({"export.gate_min": "0.98", "export.gate_score": "0.90"}, "int8")
    assert gate_problem({"export.gate_min": "0.98", "export.gate_score": "0.99"}, "int8") == ""


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulated_serve(clock: FakeClock, slower_on_confirm: float = 1.0
                    ) -> Callable[[Candidate], contextlib.AbstractContextManager[Callable[[float, float], Probe]]]:
    @contextlib.contextmanager
    def serve(c: Candidate) -> Iterator[Callable[[float, float], Probe]]:
        server = sim_for(c)
        clock.now += 10.0  # a start

        def run(rate: float, seconds: float) -> Probe:
            clock.now += seconds
            s = server
            if seconds >= 60 and slower_on_confirm != 1.0:  # the confirmation run meets a busier machine
                s = replace(server, cost_ms=lambda b: server.cost_ms(b) * slower_on_confirm)
            return s.probe(rate, seconds)

        yield run

    return serve


def start(model: str = "m", b: int = 8) -> list:
    from loadtest.tune.space import Start

    return [Start(Candidate(model, "rt", max_batch_size=b, max_queue_delay_ms=0.0, preferred=(), instances=1), 40.0)]


def test_the_tuner_finds_the_better_configuration_and_confirms_it() -> None:
    clock = FakeClock()
    # runs long enough for a steady p99 (a short run's p99 is a handful of requests: see the next test)
    tuner = Tuner(TARGET, simulated_serve(clock), budget_s=7200, confirm_s=60, say=lambda m: None, clock=clock,
                  min_requests=4000, probe_s=(30.0, 60.0))
    out = tuner.tune("m", 5.0, start(), {"m": 16})
    assert out.default.capacity > 0
    assert out.best.capacity > 1.5 * out.default.capacity  # batching pays on this machine
    assert not out.best.candidate.default
    assert {t.stage for t in out.tried} >= {"default", "runtime+precision", "parallelism", "batching", "processes"}
    assert out.confirmations[0].rate == pytest.approx(CONFIRM_SHARES[0] * out.best.capacity)
    assert out.confirmed_rps == out.confirmations[0].rate


def test_a_failed_confirmation_reports_the_lower_figure() -> None:
    clock = FakeClock()
    tuner = Tuner(TARGET, simulated_serve(clock, slower_on_confirm=1.25), budget_s=7200, confirm_s=60,
                  say=lambda m: None, clock=clock, min_requests=4000, probe_s=(30.0, 60.0))
    out = tuner.tune("m", 5.0, start(), {"m": 16})
    shares = [p.rate / out.best.capacity for p in out.confirmations]
    assert shares == pytest.approx(CONFIRM_SHARES[: len(shares)])  # down the ladder, in order
    assert not out.confirmations[0].passes(TARGET)
    passed = [p for p in out.confirmations if p.passes(TARGET)]
    assert passed == out.confirmations[-1:]  # it stops at the first pass
    assert out.confirmed_rps == passed[0].rate < CONFIRM_SHARES[0] * out.best.capacity


def test_no_confirmed_capacity_when_every_share_misses() -> None:
    from loadtest.tune.output import summary

    clock = FakeClock()
    tuner = Tuner(TARGET, simulated_serve(clock, slower_on_confirm=4.0), budget_s=3600, confirm_s=60,
                  say=lambda m: None, clock=clock)
    out = tuner.tune("m", 5.0, start(), {"m": 16})
    assert len(out.confirmations) == len(CONFIRM_SHARES)
    assert out.confirmed_rps == 0.0
    assert "NOT confirmed" in summary(out)


def test_the_budget_stops_the_search_and_keeps_the_confirmation() -> None:
    clock = FakeClock()
    tuner = Tuner(TARGET, simulated_serve(clock), budget_s=400, confirm_s=60, say=lambda m: None, clock=clock)
    out = tuner.tune("m", 5.0, start(), {"m": 16})
    assert any(t.note == "not tried: time budget spent" for t in out.tried)
    assert out.confirmations  # the reserve kept the confirmation in the budget
    assert clock.now <= 400 + 60 + 10 + tuner.probe_s[1]  # one run may finish past the check


def test_a_candidate_applies_to_config_pbtxt() -> None:
    from modelrepo.config import get_params, parse_config

    cfg = parse_config('name: "m" max_batch_size: 32 dynamic_batching { preferred_batch_size: 8 '
                       'max_queue_delay_microseconds: 2000 }')
    c = Candidate("m", "openvino", max_batch_size=16, max_queue_delay_ms=0.0, preferred=(16,), instances=2,
                  threads=1, streams=2, processes=2)
    out = c.apply(cfg)
    assert out.max_batch_size == 16 and list(out.dynamic_batching.preferred_batch_size) == [16]
    assert out.dynamic_batching.max_queue_delay_microseconds == 0
    assert [g.count for g in out.instance_group] == [2]
    assert get_params(out)["openvino.num_streams"] == "2"
    assert c.flags() == ["--runtime", "openvino", "--intra-op-threads", "1", "--processes", "2"]
    assert cfg.max_batch_size == 32  # the original is untouched


def confirmed_outcome() -> tuple:
    clock = FakeClock()
    tuner = Tuner(TARGET, simulated_serve(clock), budget_s=7200, confirm_s=60, say=lambda m: None, clock=clock,
                  min_requests=4000, probe_s=(30.0, 60.0))
    return tuner.tune("m", 5.0, start(), {"m": 16}), clock


def test_write_keeps_the_old_config_and_writes_what_was_measured(tmp_path: Path) -> None:
    from loadtest.tune.output import write_config_file
    from modelrepo.config import get_params, parse_config, read_config

    out, _ = confirmed_outcome()
    (tmp_path / "m").mkdir()
    original = 'name: "m" max_batch_size: 16 dynamic_batching { max_queue_delay_microseconds: 2000 }'
    (tmp_path / "m" / "config.pbtxt").write_text(original)
    best = out.best.candidate
    new, kept = write_config_file(tmp_path, best, out, "test cpu")
    assert parse_config(kept.read_text()) == parse_config(original)
    cfg = read_config(tmp_path / "m")
    assert cfg.max_batch_size == best.apply(parse_config(original)).max_batch_size
    assert get_params(cfg)["tune.flags"] == " ".join(best.flags())
    assert float(get_params(cfg)["tune.confirmed_rps"]) == pytest.approx(out.confirmed_rps, abs=0.05)


def test_the_scaling_files_carry_the_confirmed_capacity(tmp_path: Path) -> None:
    """The locust profile parses, through locust's own parser with this project's options, to the values
    written; the kustomization renders the HPA with the in-flight target (Little's law) in it."""
    from loadtest.tune.output import write_scaling

    out, _ = confirmed_outcome()
    values = write_scaling(out, tmp_path / "scaling")
    confirm = out.confirmations[-1]
    assert values["inflight_per_pod"] == max(1, round(confirm.rate * confirm.mean_ms / 1000))

    # locust monkey-patches the interpreter (gevent) when imported: parse in a process of its own
    parse = ("import json, sys, loadtest.gate; from locust.argument_parser import get_parser; "
             "o = get_parser().parse_args(['--config', sys.argv[1]]); "
             "print(json.dumps([o.steps, o.capacity_p99_ms, o.slo_p99_ms, o.slo_fail_ratio]))")
    proc = subprocess.run([sys.executable, "-c", parse, str(tmp_path / "scaling" / "locust.conf")],
                          capture_output=True, text=True, timeout=120, check=True)
    steps, capacity_p99, slo_p99, fail_ratio = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [float(r) for r in steps.split(",")] == values["steps"]
    assert capacity_p99 == slo_p99 == TARGET and fail_ratio == 0.01
    assert max(values["steps"]) > out.confirmed_rps > min(values["steps"])

    from tests.deploy.conftest import render

    hpa = next(o for o in render(tmp_path / "scaling") if o["kind"] == "HorizontalPodAutoscaler")
    pods = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    assert pods["pods"]["metric"]["name"] == "inference_inflight_requests"
    assert pods["pods"]["target"]["averageValue"] == str(values["inflight_per_pod"])


@pytest.mark.slow
def test_a_bounded_real_tuning_run(model_repo: Path, tmp_path: Path) -> None:
    """resnet18 (random weights), the default and one other configuration, runs of a second or two: the
    command measures costs, searches both on real servers, confirms, and writes its table, JSON and PNG.
    Nothing here depends on how fast this machine is: the target is loose and only the shape is checked."""
    out_dir = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "loadtest.tune", "--repo", str(model_repo), "--model", "resnet18", "--p99-ms", "5000",
         "--max-candidates", "2", "--max-probes", "2", "--probe-seconds", "1", "2", "--confirm-s", "2",
         "--budget-min", "4", "--runtimes", "onnxruntime", "--out", str(out_dir)],
        capture_output=True, text=True, timeout=400)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    result = json.loads((out_dir / "tune-resnet18-latest.json").read_text())
    searched = [t for t in result["tried"] if t["probes"]]
    assert [t["stage"] for t in searched] == ["default", "runtime+precision"], proc.stderr[-3000:]
    for t in searched:
        for p in t["probes"]:
            assert p["sent"] > 0 and 0 <= p["ok"] <= p["sent"]
    assert result["costs"] and result["costs"][0]["batch_ms"]["1"] > 0
    assert result["confirmations"], "the chosen configuration was not run again"
    assert (proc.returncode == 0) == (result["confirmed_rps"] > 0)
    assert "| stage | configuration |" in proc.stdout
    png = next(out_dir.glob("tune-resnet18-*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (model_repo / "resnet18" / "config.pbtxt").is_file()
    assert not list((model_repo / "resnet18").glob("config.pbtxt.before-tune-*"))  # no --write: untouched
