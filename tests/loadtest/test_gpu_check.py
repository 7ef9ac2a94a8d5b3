"""The GPU check's dry run: every step of `make gpu-check` (export, engine, decode, HTTP with 1 and 2
processes, JSON/table) on the CPU with resnet18; only CUDA itself is left for the lent GPU machine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loadtest import gpu_check, gpu_prepare

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("wrk") is None, reason="needs Debian's wrk (apt-get install wrk)")]


def test_dry_run_measures_every_step(tmp_path: Path) -> None:
    prep = tmp_path / "prep"
    gpu_prepare.corpus(prep / "corpus")  # no .debs: the machine's own wrk
    out = tmp_path / "out"
    gpu_check.run(out, prep, dry_run=True)
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["machine"]["device"] == "cpu"
    assert set(data["engine_img_s"]["eager"]) == {"4", "8"}
    assert all(v > 0 for v in data["engine_img_s"]["eager"].values())
    assert data["decode"]["decode_img_s"] > 0 and data["decode"]["pipeline_img_s"] > 0
    runs = {(r["processes"], r["concurrency"]): r for r in data["http"]}
    assert set(runs) == {(1, 4), (1, 8), (2, 4), (2, 8)}
    for r in runs.values():
        assert r["ok"] > 0 and r["errors"]["status"] == 0, r
    table = (out / "gpu_check.md").read_text()
    assert "| service over HTTP, 2 front ends + 1 engine | c=8 |" in table and "pipeline limit" in table


def test_the_device_command_installs_what_the_prepare_step_downloads() -> None:
    assert "--target /tmp/site .gpucheck/whl/*.whl" in gpu_prepare.DEVICE_COMMAND
    assert "loadtest.gpu_check run --prep .gpucheck --out $OUT" in gpu_prepare.DEVICE_COMMAND
    pins = gpu_prepare.pinned(gpu_prepare.WHEELS)
    assert len(pins) == len(gpu_prepare.WHEELS) and all("==" in p for p in pins)
