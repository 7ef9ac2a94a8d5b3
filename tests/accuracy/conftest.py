"""The accuracy suite's exports (EfficientNet-Lite0 with its packaged ImageNet weights) and its table.

One session exports, through ``python -m export`` in-process, everything the table's rows serve:
``efficientnet_lite0`` (ONNX) with ``_pt`` (TorchScript) and ``_int8`` (ONNX Runtime QDQ), and
``lite0_nncf_int8`` (NNCF, an OpenVINO IR). Both INT8 models are calibrated on the exporter's default
package photos, none of which is a test photo (``test_photos.py`` checks that), and gated on top-1 over
the labelled photos (``--eval-dir``). The table is printed at the end of the run and written to
``accuracy.md`` / ``accuracy.json`` in pytest's base temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.accuracy import harness
from tests.accuracy import photos as P
from tests.export.helpers import Run, run_cli

LITE0 = ("--arch", "efficientnet_lite0", "--weights", "DEFAULT", "--max-batch-size", "8", "--preferred-batch", "4", "8")
_TABLE: list[str] = []


@pytest.fixture(scope="session")
def found() -> list[P.Photo]:
    photos, missing = P.available()
    if missing:
        print("accuracy photos missing: " + "; ".join(missing))
    return photos


@pytest.fixture(scope="session")
def eval_dir(tmp_path_factory: pytest.TempPathFactory, found: list[P.Photo]) -> Path:
    return P.write_image_folder(tmp_path_factory.mktemp("eval"), found)


@pytest.fixture(scope="session")
def lite0_repo(tmp_path_factory: pytest.TempPathFactory, eval_dir: Path) -> tuple[Path, dict[str, Run]]:
    repo = tmp_path_factory.mktemp("lite0_repo")
    runs = {
        "qdq": run_cli(*LITE0, "--repo", str(repo), "--format", "pytorch", "--precision", "int8",
                       "--eval-dir", str(eval_dir), "--max-top1-drop", "1.0"),
        "nncf": run_cli(*LITE0, "--repo", str(repo), "--name", "lite0_nncf", "--precision", "int8",
                        "--int8-method", "nncf", "--eval-dir", str(eval_dir), "--no-bf16-gate"),
    }
    for name, run in runs.items():
        assert run.rc == 0, f"{name} export failed:\n{run.out}\n{run.err}"
    return repo, runs


@pytest.fixture(scope="session")
def table(lite0_repo: tuple[Path, dict[str, Run]], found: list[P.Photo],
          tmp_path_factory: pytest.TempPathFactory) -> dict[str, harness.Row]:
    from export.models import imagenet_categories

    repo, _ = lite0_repo
    items = harness.labelled_items(found)
    tmp = tmp_path_factory.mktemp("servers")
    rows = [harness.measure(spec, repo, tmp, items, imagenet_categories()) for spec in harness.ROWS]
    for row in rows:
        harness.compare(row, rows[0])
    md = harness.markdown(rows, len(found), len(items) - len(found))
    base = tmp_path_factory.getbasetemp()
    (base / "accuracy.md").write_text(md + "\n")
    (base / "accuracy.json").write_text(json.dumps(
        [{"row": r.spec.title, "model": r.spec.model, "runtime": r.served.get("runtime"),
          "precision": r.served.get("precision"), "hits": r.hits, "top1_agreement": r.agreement,
          "max_abs_dprob": r.max_dp, "flips": r.flips,
          "top1": {n: imagenet_categories()[r.top1(n)] for n in r.probs}} for r in rows], indent=2) + "\n")
    _TABLE[:] = [md, f"(also {base / 'accuracy.md'} and accuracy.json)"]
    return {r.spec.title: r for r in rows}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TABLE:
        terminalreporter.section("accuracy: EfficientNet-Lite0 through the HTTP service, per runtime and precision")
        for line in _TABLE:
            terminalreporter.write_line(line)
