"""``loadtest.request_cost``'s pure parts: which process is which, the CPU arithmetic, the table, the
client driver (on fake calls). No server is started and nothing is timed."""

from __future__ import annotations

import asyncio
import math

import pytest

from loadtest import request_cost as rc

LOG = """\
2026-12-07 00:18:18,425 INFO service [-] serving on 127.0.0.1:18080 with 2 front ends and one engine process
2026-12-07 00:18:18,516 INFO service [-] engine started (pid 21504)
2026-12-07 00:18:18,518 INFO service [-] front-end-0 started (pid 21505)
2026-12-07 00:18:19,329 INFO uvicorn.error [-] Started server process [21505]
2026-12-07 00:18:19,409 INFO uvicorn.error [-] Started server process [21506]
"""


def test_roles_come_from_the_log_and_the_rest_is_other() -> None:
    got = rc.roles(21500, [21503, 21504, 21505, 21506], LOG)
    assert got == {21500: "other", 21503: "other", 21504: "engine", 21505: "front", 21506: "front"}


def test_without_the_engine_line_every_child_but_the_front_ends_is_the_engine() -> None:
    log = "\n".join(line for line in LOG.splitlines() if "engine started" not in line)
    got = rc.roles(21500, [21504, 21505, 21506], log)
    assert got == {21500: "other", 21504: "engine", 21505: "front", 21506: "front"}


def test_one_process_is_its_own_front_end() -> None:
    assert rc.roles(7, [], "INFO uvicorn.error [-] Started server process [7]\n") == {7: "front"}


def test_cpu_delta_sums_each_role_and_the_total() -> None:
    role_of = {1: "other", 2: "engine", 3: "front", 4: "front"}
    before = {1: 0.5, 2: 10.0, 3: 1.0, 4: 2.0}
    after = {1: 0.51, 2: 10.3, 3: 1.2, 4: 2.25}
    got = rc.cpu_delta(before, after, role_of)
    assert got == pytest.approx({"other": 0.01, "engine": 0.3, "front": 0.45, "total": 0.76})
    assert rc.per_request_ms(got, 200) == pytest.approx({"other": 0.05, "engine": 1.5, "front": 2.25,
                                                         "total": 3.8})


def test_no_answers_cost_nothing_per_request_but_nan() -> None:
    assert all(math.isnan(v) for v in rc.per_request_ms({"total": 1.0, "front": 0.5}, 0).values())


def test_a_process_that_came_or_went_spoils_the_reading() -> None:
    with pytest.raises(RuntimeError, match="changed"):
        rc.cpu_delta({1: 0.0, 2: 0.0}, {1: 0.1, 3: 0.0}, {1: "front"})


def _result(total: float, front: float, engine: float, errors: int = 0) -> dict[str, object]:
    return {"errors": errors, "cpu_ms_per_request": {"total": total, "front": front, "engine": engine}}


def test_table_has_a_total_per_mode_and_the_split_for_several_processes() -> None:
    modes = {
        1: {"protocols": {"classify": _result(2.0, 2.0, 0.0), "v2-grpc-bytes": _result(1.5, 1.5, 0.0, errors=3)}},
        2: {"protocols": {"classify": _result(3.256, 2.0, 1.0)}},
    }
    lines = rc.format_table(modes, ["classify", "v2-grpc-bytes"]).splitlines()
    assert lines[0] == ("| protocol | --processes 1: total | --processes 2: total | --processes 2: front ends "
                        "| --processes 2: engine |")
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| classify | 2.00 | 3.26 | 2.00 | 1.00 |"
    assert lines[3] == "| v2-grpc-bytes | 1.50 (3 errors) | - | - | - |"


def test_cpu_model_reads_the_first_model_name() -> None:
    text = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\nprocessor\t: 1\nmodel name\t: Some CPU @ 2.0GHz\n"
    assert rc.cpu_model(text) == "Some CPU @ 2.0GHz"
    assert rc.cpu_model("processor\t: 0\n") == "unknown"


async def test_drive_sends_exactly_the_total_and_keeps_a_few_errors() -> None:
    sent: list[int] = []

    def slot(i: int) -> rc.Call:
        async def call() -> str | None:
            sent.append(i)
            await asyncio.sleep(0)  # an answer takes a turn of the loop: the other slots send meanwhile
            return "HTTP 503: busy" if len(sent) % 4 == 0 else None

        return call

    tally = await rc.drive([slot(i) for i in range(3)], 30)
    assert len(sent) == 30 and set(sent) == {0, 1, 2}
    assert (tally.ok, tally.errors) == (23, 7)
    assert tally.samples == ["HTTP 503: busy"] * 5


@pytest.mark.parametrize("argv", [["--repo", "x"], ["--model", "m"], ["--modes", "0"], ["--protocols", "soap"],
                                  ["--requests", "0"]])
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        rc.parse_args(argv)


def test_defaults() -> None:
    args = rc.parse_args([])
    assert (args.modes, args.requests, args.warmup, args.concurrency) == ([1, 2], 300, 30, 4)
    assert args.protocols == list(rc.PROTOCOLS)
