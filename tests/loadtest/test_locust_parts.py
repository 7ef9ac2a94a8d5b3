"""The locust scenarios' pieces without a server: body checks, the SLO gate, the capacity answer, plots.

Nothing here imports locust: it monkey-patches the whole process for gevent at import, which the rest
of the test session must not get. Locust itself runs in a subprocess (``test_locust_smoke.py``).
"""

from __future__ import annotations

import csv
import json
from argparse import Namespace
from pathlib import Path

import pytest

from loadtest import corpus, judge, slo

ROOT = Path(__file__).resolve().parents[2]


def _prediction(index: int, label: str, score: float) -> dict[str, object]:
    return {"index": index, "label": label, "score": score}


def _body(*results: list[dict[str, object]], model: str = "resnet18") -> str:
    return json.dumps({"model": model, "version": "1",
                       "results": [{"filename": None, "predictions": r} for r in results]})


def test_a_wrong_200_is_caught() -> None:
    scenario = judge.Scenario(num_classes={"resnet18": 10})

    def check_body(text: str, images: int, top_k: int) -> str | None:
        return judge.check_body(scenario, text, images, top_k)

    good = [_prediction(3, "cat", 0.6), _prediction(1, "dog", 0.3)]
    assert check_body(_body(good), images=1, top_k=2) is None
    assert "results for 2" in str(check_body(_body(good), images=2, top_k=2))
    assert "predictions" in str(check_body(_body(good), images=1, top_k=3))
    assert "outside" in str(check_body(_body([_prediction(12, "x", 0.5)]), images=1, top_k=1))
    assert "descending" in str(check_body(
        _body([_prediction(1, "dog", 0.2), _prediction(3, "cat", 0.6)]), images=1, top_k=2))
    # without --labels, an index keeps the label it was first seen with
    assert "labelled" in str(check_body(_body([_prediction(3, "tabby", 0.6)]), images=1, top_k=1))
    scenario.labels = [f"class{i}" for i in range(10)]
    assert "label set" in str(check_body(_body([_prediction(3, "cat", 0.6)]), images=1, top_k=1))
    assert check_body(_body([_prediction(3, "class3", 0.6)]), images=1, top_k=1) is None
    scenario.model = "resnet50"
    assert "asked for" in str(check_body(_body([_prediction(3, "class3", 0.6)]), images=1, top_k=1))
    assert "not a classification" in str(check_body("<html>", images=1, top_k=1))


def test_invalid_bodies_expect_their_documented_4xx() -> None:
    bad, text = corpus.invalid_bodies()
    assert judge.expected([bad]) == (400, "bad_image")
    assert judge.expected([text]) == (415, "unsupported_media_type")
    photo = corpus.Body("a.jpg", b"...", "image/jpeg")
    assert judge.expected([photo, text]) == (400, "bad_image")  # a bad part of a multipart request
    assert judge.expected([photo, photo]) == (200, "")
    assert judge.error_code('{"error": {"code": "bad_image", "message": "x"}}') == "bad_image"


def test_photos_come_in_several_sizes_and_formats(tmp_path: Path) -> None:
    bodies = corpus.sample_photos()
    assert {b.ctype for b in bodies} == {"image/jpeg", "image/png", "image/webp"}
    jpegs = {b.name: len(b.data) for b in bodies if b.ctype == "image/jpeg"}
    assert jpegs["coffee-small.jpg"] * 10 < jpegs["coffee-large.jpg"]
    assert {b.kind for b in bodies} == {"jpeg small", "jpeg medium", "jpeg large", "png", "webp"}
    (tmp_path / "x.png").write_bytes(bodies[3].data)
    (tmp_path / "notes.md").write_text("not an image")
    assert [(b.name, b.ctype) for b in corpus.folder_photos(tmp_path)] == [("x.png", "image/png")]


def test_backoff_honours_retry_after() -> None:
    assert 2.0 <= judge.backoff_s("2", cap=5.0) <= 2.4
    assert 5.0 <= judge.backoff_s("60", cap=5.0) <= 6.0
    assert 1.0 <= judge.backoff_s("soon", cap=5.0) <= 1.2


def test_percentiles_follow_locusts_rule() -> None:
    assert slo.percentile({50: 198, 100: 2}, 0.99) == 100  # as locust's tables would print it
    assert slo.percentile({10: 1, 20: 1, 30: 1, 40: 1, 400: 1}, 0.5) == 30
    assert slo.percentile({}, 0.99) is None


def test_slo_gate_checks_each_threshold() -> None:
    result = {"requests": 100, "fail_ratio": 0.02, "p95_ms": 180, "p99_ms": 300, "rps": 40.0}
    opts = Namespace(slo_fail_ratio=0.01, slo_p95_ms=200.0, slo_p99_ms=250.0, slo_min_rps=30.0)
    checks = slo.evaluate(result, opts)
    assert {k: c["pass"] for k, c in checks.items()} == {"fail_ratio": False, "p95_ms": True, "p99_ms": False,
                                                          "rps": True}
    assert slo.evaluate(result, Namespace(slo_fail_ratio=None, slo_p95_ms=None, slo_p99_ms=None,
                                           slo_min_rps=None)) == {}
    empty = {**result, "requests": 0, "p95_ms": None, "p99_ms": None, "rps": 0.0}
    assert not slo.evaluate(empty, Namespace(slo_fail_ratio=0.5, slo_p95_ms=None, slo_p99_ms=None,
                                              slo_min_rps=None))["requests"]["pass"]


def _snapshot(n: int, times: dict[int, int], t: float, failures: int = 0, shed: int = 0) -> slo.Snapshot:
    return slo.Snapshot(n, failures, shed, times, t)


def test_capacity_is_the_highest_rate_within_the_slo() -> None:
    a = _snapshot(0, {}, 0.0)
    steps = [
        slo.step_result(20, a, _snapshot(200, {50: 198, 100: 2}, 10.0), slo_ms=250),
        slo.step_result(40, a, _snapshot(400, {80: 396, 200: 4}, 10.0), slo_ms=250),
        slo.step_result(60, a, _snapshot(450, {300: 450}, 10.0, shed=50), slo_ms=250),  # p99 and shed over
        slo.step_result(80, a, _snapshot(790, {100: 790}, 10.0), slo_ms=250),  # after a failing step
    ]
    assert [s["pass"] for s in steps] == [True, True, False, True]
    assert steps[1]["p99_ms"] == 200 and steps[1]["achieved_rps"] == 40.0
    answer = slo.capacity(steps, 250)
    assert answer["capacity_rps"] == 40 and answer["at"]["p99_ms"] == 200
    slow = slo.step_result(40, a, _snapshot(300, {80: 300}, 10.0), slo_ms=250)  # 30 of 40 req/s arrived
    assert not slow["pass"]
    assert slo.capacity([], 250)["capacity_rps"] is None


def test_ramp_stages() -> None:
    assert slo.parse_stages("10:5,30:10") == [(10.0, 5.0), (30.0, 10.0)]
    with pytest.raises(ValueError):
        slo.parse_stages("0:5")


def test_bench_plot_from_the_committed_json(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from loadtest import plot

    bench = json.loads((ROOT / "docs/bench/2026-11-27-amd-epyc-zen5-2vcpu.json").read_text())
    out = plot.bench_png(bench, tmp_path / "bench.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000


def test_history_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from loadtest import plot

    path = tmp_path / "h_stats_history.csv"
    head = ["Timestamp", "User Count", "Type", "Name", "Requests/s", "Failures/s", "50%", "95%", "99%"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for t in range(20):
            p99 = 400 if 8 <= t < 12 else 40
            w.writerow([1000 + t, 10, "", "Aggregated", 10, 0, 20, p99 / 2, p99])
            w.writerow([1000 + t, 10, "SHED", "/classify", 3 if 8 <= t < 12 else 0, 0, 1, 1, 1])
            w.writerow([1000 + t, 10, "SERVER", "queue", 10, 0, 1, 5, 9])
    out = plot.history_png(path, tmp_path / "h.png")
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 20_000


def test_bench_plot_flag_draws_without_measuring(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    from loadtest.bench import main

    out = tmp_path / "bench.png"
    assert main(["--plot", str(ROOT / "docs/bench/2026-11-27-amd-epyc-zen5-2vcpu.json"), "--plot-out", str(out)]) == 0
    assert out.stat().st_size > 50_000 and str(out) in capsys.readouterr().out
