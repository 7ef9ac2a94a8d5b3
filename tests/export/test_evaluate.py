"""``python -m export.evaluate`` and the exporter's ``--eval-dir`` gate, on a model whose predictions mean
something (``photo_classifier``: it tells the scikit-image sample photos apart)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from export import evaluate, images, openvino
from modelrepo.config import get_params, read_config
from tests.export.helpers import ROOT, run_cli, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def labelled_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ImageFolder of jittered sample photos (a seed neither calibration nor training uses), photo_i/."""
    root = tmp_path_factory.mktemp("labelled")
    photos = images.sample_photos()
    for i, img in enumerate(images.check_variants(photos, per_photo=3, seed=99)):
        folder = root / f"photo_{i // 3}"
        folder.mkdir(exist_ok=True)
        img.save(folder / f"{i}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, photo_classifier: tuple[Path, Path],
          labelled_dir: Path) -> tuple[Path, str]:
    ckpt, labels = photo_classifier
    repo = tmp_path_factory.mktemp("repo")
    run = run_cli("--arch", "resnet18", "--weights", str(ckpt), "--labels", str(labels), "--repo", str(repo),
                  "--name", "photos", "--precision", "int8", "--format", "pytorch", "--eval-dir", str(labelled_dir),
                  "--max-top1-drop", "5")
    assert run.rc == 0, run.err
    return repo, run.out


def test_export_gates_int8_on_the_labelled_set(gated: tuple[Path, str], labelled_dir: Path) -> None:
    repo, out = gated
    assert "INT8 top-1 agreement with FP32:" in out and "(recorded; --eval-dir gates)" in out
    assert "INT8 top-1 on the labelled set:" in out and "(gate: at most 5)" in out
    params = get_params(read_config(repo / "photos_int8"))
    n = len(list(labelled_dir.rglob("*.jpg")))
    assert params["export.eval_images"] == str(n) and params["export.eval_max_top1_drop"] == "5"
    assert float(params["export.int8_eval_drop"]) <= 5
    assert float(params["export.eval_fp32_top1"]) >= 0.5  # far above chance (0.1): it knows its photos


def test_evaluate_reports_every_runtime_and_precision(gated: tuple[Path, str], labelled_dir: Path,
                                                       tmp_path: Path) -> None:
    repo, _ = gated
    out_json = tmp_path / "scores.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "export.evaluate", str(labelled_dir), "--repo", str(repo), "--model",
                        "photos", "--json", str(out_json), "--batch", "4"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "evaluating:" in p.stderr  # the progress bar
    result = json.loads(out_json.read_text())
    rows = {(r["model"], r["runtime"], r["precision"]): r for r in result["rows"]}
    expected = {("photos", "onnxruntime", "fp32"), ("photos_int8", "onnxruntime", "int8"),
                ("photos_pt", "pytorch", "fp32")}
    if openvino.available():
        expected |= {("photos", "openvino", "fp32"), ("photos_int8", "openvino", "int8")}
        if openvino.bf16_capable():
            expected.add(("photos", "openvino", "bf16"))
    assert set(rows) == expected
    assert result["reference"] == "photos onnxruntime fp32" and result["rows"][0]["model"] == "photos"
    n = len(list(labelled_dir.rglob("*.jpg")))
    ref = rows[("photos", "onnxruntime", "fp32")]
    assert all(r["images"] == n for r in rows.values()) and ref["top1"] >= 0.5 and ref["top5"] >= ref["top1"]
    assert rows[("photos_pt", "pytorch", "fp32")]["top1_agreement"] == 1.0  # FP32 everywhere: the same answers
    fp32_exact = [r for k, r in rows.items() if k[2] == "fp32"]
    assert all(r["top1"] == ref["top1"] for r in fp32_exact)
    for line in ("photos_int8", "photos_pt", "agree: top-1 agreement with photos onnxruntime fp32"):
        assert line in p.stdout


def test_undecodable_files_are_left_out_and_named(gated: tuple[Path, str], labelled_dir: Path,
                                                  tmp_path: Path) -> None:
    repo, _ = gated
    data = tmp_path / "data"
    (data / "photo_0").mkdir(parents=True)
    (data / "photo_0" / "broken.jpg").write_bytes(b"not a jpeg")
    first = sorted((labelled_dir / "photo_0").iterdir())[0]
    (data / "photo_0" / "ok.jpg").write_bytes(first.read_bytes())
    lines: list[str] = []
    args = evaluate.build_parser().parse_args([str(data), "--repo", str(repo), "--model", "photos", "--no-progress"])
    result = evaluate.run(args, lines.append)
    assert [r["images"] for r in result["rows"]] == [1] * len(result["rows"])  # type: ignore[index]
    assert len(result["skipped"]) == 1 and "broken.jpg: bad_image" in result["skipped"][0]  # type: ignore[index]


def test_evaluate_errors_are_one_line(gated: tuple[Path, str], tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    repo, _ = gated
    (tmp_path / "kitten").mkdir()
    Image = pytest.importorskip("PIL.Image")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "kitten" / "a.png")
    assert evaluate.main([str(tmp_path), "--repo", str(repo), "--model", "nope"]) == 1
    assert "no model 'nope'" in capsys.readouterr().err
    assert evaluate.main([str(tmp_path), "--repo", str(repo), "--model", "photos"]) == 1
    err = capsys.readouterr().err
    assert "1 unknown label(s): 'kitten': not a class of the model" in err and "labels.txt" in err
    assert evaluate.main([str(tmp_path / "kitten"), "--repo", str(repo), "--model", "photos"]) == 1
    assert "has images directly in it" in capsys.readouterr().err


def test_a_badly_calibrated_int8_model_fails_the_labelled_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photo_classifier: tuple[Path, Path], labelled_dir: Path,
) -> None:
    """Calibrated on inputs 100x too small, the INT8 model saturates: its labelled top-1 falls, the export fails.
    (The NNCF path shares the gate; tests/export/test_int8.py calibrates both methods badly.)"""
    real = images.calibration_set
    monkeypatch.setattr(images, "calibration_set", lambda pp, d, limit=256: real(pp, d, limit) * np.float32(0.01))
    ckpt, labels = photo_classifier
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", str(ckpt), "--labels", str(labels), "--repo", str(repo),
                  "--precision", "int8", "--no-bf16-gate", "--eval-dir", str(labelled_dir))
    assert run.rc == 1, run.out
    assert f"INT8 gate failed on {labelled_dir} (at most 1 top-1 points lost) for every format tried" in run.err
    assert "u8s8-rr: " in run.err and "u8u8: " in run.err and "(gate: at most 1) -> FAIL" in run.err
    assert snapshot(repo) == set()


@pytest.mark.parametrize(("argv", "rc", "message"), [
    (("--weights", "random", "--precision", "int8", "--eval-dir", "{dir}"), 1, "random weights have none"),
    (("--weights", "random", "--max-top1-drop", "1"), 2, "needs --eval-dir"),
    (("--weights", "random", "--eval-dir", "{dir}", "--no-bf16-gate"), 2, "neither runs here"),
])
def test_eval_gate_usage_errors(tmp_path: Path, labelled_dir: Path, argv: tuple[str, ...], rc: int,
                                message: str) -> None:
    args = [a.replace("{dir}", str(labelled_dir)) for a in argv]
    run = run_cli("--arch", "resnet18", "--repo", str(tmp_path / "repo"), *args)
    assert run.rc == rc and message in run.err, run.err
    assert snapshot(tmp_path / "repo") == set()


@pytest.mark.skipif(not (openvino.available() and openvino.bf16_capable()), reason="needs OpenVINO BF16 on this CPU")
def test_a_bf16_model_that_loses_labelled_top1_is_pinned_to_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, photo_classifier: tuple[Path, Path], labelled_dir: Path,
) -> None:
    """The BF16 gate judged on --eval-dir: a BF16 run that loses top-1 there pins the model to FP32."""
    from export import bf16

    real = openvino.ov_runner

    def broken_bf16(model: Path, precision: str | None = None, threads: int = openvino.THREADS):  # type: ignore[no-untyped-def]
        run = real(model, precision, threads)
        return (lambda x: -run(x)) if precision == "bf16" else run  # the least likely class first

    monkeypatch.setattr(bf16.openvino, "ov_runner", broken_bf16)
    ckpt, labels = photo_classifier
    repo = tmp_path / "repo"
    run = run_cli("--arch", "resnet18", "--weights", str(ckpt), "--labels", str(labels), "--repo", str(repo),
                  "--name", "photos", "--eval-dir", str(labelled_dir))
    assert run.rc == 0, run.err
    assert "OpenVINO BF16 (photos) top-1 on the labelled set:" in run.out and "BF16 gate failed" in run.out
    params = get_params(read_config(repo / "photos"))
    assert params["export.bf16_gate"] == "failed" and params[openvino.PRECISION_PARAM] == "f32"
    assert float(params["export.bf16_eval_drop"]) > 1.0 and float(params["export.bf16_eval_top1"]) < 0.2
