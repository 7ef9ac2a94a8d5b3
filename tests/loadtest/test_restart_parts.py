"""The pure parts of ``python -m loadtest.restart``: what counts as the first 200 after a kill."""

from __future__ import annotations

import pytest

from loadtest.restart import Answers, parse_args


def test_the_first_200_is_of_a_request_sent_after_the_kill() -> None:
    a = Answers()
    a.add(9.0, 10.5, "200")  # in flight at the kill (t=10): it does not count
    a.add(10.1, 10.2, "503")
    a.add(11.0, 13.0, "200")
    a.add(12.0, 12.5, "200")  # sent later, answered first
    assert a.first_200_after(10.0) == 2.5
    assert a.first_200_after(12.6) is None
    assert a.between(10.0, 12.5) == {"503": 1, "200": 2}


def test_processes_1_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--processes", "1"])
    assert parse_args([]).processes == 2
