"""Which INT8 format holds on which CPU: every candidate's gate score here and on an emulated AVX2-only CPU.

    python -m loadtest.int8_formats --arch efficientnet_lite0 --weights DEFAULT --emulate-avx2
    python -m loadtest.int8_formats --arch resnet50 --weights random --json docs/bench/int8_formats.json

For one model: the FP32 ONNX export, then each ONNX Runtime QDQ format (``export.quantize``) and, with
OpenVINO and NNCF installed, NNCF with 8-bit and with 7-bit weights. Each is scored against FP32 ONNX
Runtime on the exporter's check set (``modelrepo.checkset``: the gate's measure) and timed here at batch 8
on 2 threads (images/s, and the ratio to FP32 measured in the same run).

``--emulate-avx2`` also runs every candidate under QEMU's user-mode emulator as an AMD EPYC (Zen 1: AVX2,
FMA, no AVX-512, no VNNI; Debian's ``qemu-user``), so ONNX Runtime and OpenVINO pick the kernels they pick
on such a CPU, saturating ``vpmaddubsw`` included, whatever CPU this is. Emulation is slow (minutes per
candidate; ``--emulated-images`` bounds it) and says nothing of speed there: only of the numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

QEMU = "qemu-x86_64"
EMULATED_CPU = "EPYC"  # QEMU's AMD EPYC (Zen 1) model: AVX2 + FMA, no AVX-512, no VNNI, no BF16
Runner = Callable[[np.ndarray], np.ndarray]


def _runner(model: Path, threads: int, runtime: str = "") -> Runner:
    if model.suffix == ".xml" or runtime == "openvino":
        from export.openvino import ov_runner

        return ov_runner(model, None, threads)
    from export.parity import ort_runner

    return ort_runner(model, threads)


def _logits(model: Path, x: np.ndarray, threads: int) -> np.ndarray:
    run = _runner(model, threads)
    return np.concatenate([run(x[i : i + 8]) for i in range(0, len(x), 8)])


def _speed(model: Path, x: np.ndarray, seconds: float, runtime: str = "") -> float:
    run, batch = _runner(model, 2, runtime), x[:8]
    run(batch)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run(batch)
        n += len(batch)
    return n / (time.perf_counter() - t0)


def _emulated(model: Path, x: np.ndarray, work: Path) -> np.ndarray:
    """``model``'s logits on ``x`` computed under ``qemu-x86_64 -cpu EPYC`` (this module's --logits mode)."""
    inputs, out = work / "emu_inputs.npy", work / f"{model.stem}_emu.npy"
    np.save(inputs, x)
    cmd = [QEMU, "-cpu", EMULATED_CPU, sys.executable, "-m", "loadtest.int8_formats", "--logits", str(model),
           str(inputs), str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    print(f"  emulated AVX2 run of {model.name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return np.load(out)


def _candidates(fp32: Path, calib: np.ndarray, work: Path) -> dict[str, tuple[Path, bool]]:
    """name -> (model file, whether the format is exact on every x86 CPU by construction)."""
    from export import openvino
    from export.quantize import INT8_FORMATS, Quantizer

    out: dict[str, tuple[Path, bool]] = {}
    q = Quantizer(fp32, calib, work)
    try:
        for fmt in INT8_FORMATS.values():
            print(f"quantizing {fmt.name} ...", flush=True)
            out[fmt.name] = (q.quantize(fmt, work / f"{fmt.name}.onnx"), fmt.portable)
    finally:
        q.close()
    if openvino.available():
        import nncf
        import openvino as ov
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        for name, fix, portable in (("nncf-8bit", OverflowFix.DISABLE, False), ("nncf-7bit", OverflowFix.ENABLE, True)):
            print(f"quantizing {name} ...", flush=True)
            params = AdvancedQuantizationParameters(
                overflow_fix=fix, activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
            data = nncf.Dataset([calib[i : i + 1] for i in range(len(calib))])
            model = nncf.quantize(ov.convert_model(str(fp32)), data, subset_size=len(calib),
                                  advanced_parameters=params)
            xml = work / f"{name}.xml"
            ov.save_model(model, str(xml), compress_to_fp16=False)
            out[name] = (xml, portable)
    return out


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from export import images
    from export.models import load_model
    from export.onnx_export import export_onnx
    from modelrepo.checkset import agreement
    from modelrepo.cpu import this_cpu

    loaded = load_model(args.arch, args.weights, None, None, args.weights == "DEFAULT")
    pp = loaded.preprocess
    fp32 = export_onnx(loaded.model, work / "fp32.onnx", (3, pp.crop, pp.crop), 17, True)
    check = images.check_set(pp)
    ref = _logits(fp32, check, 2)
    sub = np.linspace(0, len(check) - 1, min(args.emulated_images, len(check))).round().astype(int)
    from export import openvino

    runtimes = ["onnxruntime", *(["openvino"] if openvino.available() else [])]
    fp32_speed = {rt: _speed(fp32, check, args.seconds, rt) for rt in runtimes}
    rows: dict[str, Any] = {"fp32": {"img_s": fp32_speed}}
    for name, (model, portable) in _candidates(fp32, images.calibration_set(pp, None), work).items():
        logits = _logits(model, check, 2)
        here = agreement(ref, logits)
        speeds = {rt: _speed(model, check, args.seconds, rt) for rt in runtimes
                  if model.suffix == ".onnx" or rt == "openvino"}
        row: dict[str, Any] = {"portable": portable, "here": here.__dict__ | {"score": here.score}, "img_s": speeds,
                               "vs_fp32": {rt: v / fp32_speed[rt] for rt, v in speeds.items()}}
        if args.emulate_avx2:
            emu, same = agreement(ref[sub], _emulated(model, check[sub], work)), agreement(ref[sub], logits[sub])
            row["avx2"] = emu.__dict__ | {"score": emu.score}
            row["here_on_emulated_images"] = same.__dict__ | {"score": same.score}
        rows[name] = row
        print(f"{name}: {row}", flush=True)
    return {"arch": args.arch, "weights": loaded.weights, "cpu": this_cpu().describe(), "check_images": len(check),
            "emulated_images": len(sub) if args.emulate_avx2 else 0, "rows": rows}


def _speed_cell(row: dict[str, Any], rt: str) -> str:
    v = row["img_s"].get(rt)
    return "-" if v is None else f"{v:.1f} ({row.get('vs_fp32', {}).get(rt, 1.0):.2f}x)"


def table(res: dict[str, Any]) -> str:
    """Markdown: each format's score and top-1 agreement here (and emulated), its speed on each runtime."""
    n_emu = res["emulated_images"]
    emulated = f", emulated AVX2 (QEMU -cpu {EMULATED_CPU}) on {n_emu} of them" if n_emu else ""
    rts = list(res["rows"]["fp32"]["img_s"])
    lines = [f"{res['arch']} ({res['weights']}) on {res['cpu']}; check set {res['check_images']} images{emulated}; "
             "img/s at batch 8 on 2 threads (x FP32 on the same runtime)", "",
             "| format | exact on every x86 CPU | score here | top-1 agreement here | top-1 here -> AVX2 (same images) "
             "| "
             + " | ".join(f"img/s {rt}" for rt in rts) + " |",
             "| --- " * (5 + len(rts)) + "|"]
    for name, r in res["rows"].items():
        emu, here, same = r.get("avx2"), r.get("here"), r.get("here_on_emulated_images")
        moved = f"{100 * same['top1']:.1f}% -> {100 * emu['top1']:.1f}%" if emu and same else ""
        cells = [name, "" if name == "fp32" else ("yes" if r["portable"] else "no"),
                 f"{100 * here['score']:.1f}%" if here else "", f"{100 * here['top1']:.1f}%" if here else "", moved,
                 *(_speed_cell(r, rt) for rt in rts)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _logits_mode(model: str, inputs: str, out: str) -> int:
    np.save(out, _logits(Path(model), np.load(inputs), 1))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.int8_formats", description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--weights", default="random", help="random | DEFAULT | a checkpoint path")
    p.add_argument("--emulate-avx2", action="store_true",
                   help=f"also run each candidate under {QEMU} -cpu {EMULATED_CPU}")
    p.add_argument("--emulated-images", type=int, default=64, help="check images run under emulation (default 64)")
    p.add_argument("--seconds", type=float, default=3.0, help="timing per candidate (default 3 s)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--logits", nargs=3, metavar=("MODEL", "INPUTS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.logits:
        return _logits_mode(*args.logits)
    if args.emulate_avx2 and shutil.which(QEMU) is None:
        p.error(f"--emulate-avx2 needs {QEMU}: apt-get install qemu-user")
    with tempfile.TemporaryDirectory() as tmp:
        res = measure(args, Path(tmp))
    print(table(res))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
