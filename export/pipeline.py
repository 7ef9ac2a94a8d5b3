"""One export run: load -> ONNX -> parity gate -> (INT8 | FP16 | TensorRT) -> atomic commit."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from export import images
from export.errors import ExportError, UsageError
from export.models import RANDOM, LoadedModel, default_model_name, load_model
from export.onnx_export import MIN_OPSET, convert_fp16, export_onnx
from export.parity import FP32_ATOL, check_parity, ort_runner, parity_inputs, top1_agreement, torch_runner
from export.repo_writer import (
    ConfigSpec,
    Staging,
    build_config,
    choose_version,
    preferred_batches,
    staging,
    valid_name,
)
from service.repository import Preprocess

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
MIN_AGREEMENT = {"int8": 0.98, "fp16": 0.99}
PARITY_PHOTOS = 4  # real photos in the parity batch
ConfigFn = Callable[..., ConfigSpec]


@dataclass
class ExportOptions:
    arch: str
    weights: str
    repo: Path
    name: str | None = None
    version: int | None = None
    labels_file: Path | None = None
    max_batch_size: int = 32
    preferred: list[int] | None = None
    opset: int = MIN_OPSET
    simplify: bool = True
    fp16: bool = False
    precision: str = "fp32"
    calib_dir: Path | None = None
    trt: bool = False
    fallback_random: bool = False
    min_agreement: float | None = None
    transform_input: bool | None = None
    atol: float = FP32_ATOL


@dataclass
class ExportResult:
    written: list[Path] = field(default_factory=list)
    parity_max_abs_diff: float = 0.0
    agreements: dict[str, float] = field(default_factory=dict)


def _validate(opts: ExportOptions) -> None:
    if opts.max_batch_size < 1:
        raise UsageError(f"--max-batch-size must be >= 1, got {opts.max_batch_size}")
    if opts.precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    if opts.opset < MIN_OPSET:
        raise UsageError(f"--opset must be >= {MIN_OPSET}, got {opts.opset}")
    if opts.calib_dir is not None and opts.precision != "int8":
        raise UsageError("--calib-dir is only used with --precision int8")
    if opts.min_agreement is not None and not 0.0 <= opts.min_agreement <= 1.0:
        raise UsageError(f"--min-agreement is a fraction in [0, 1], got {opts.min_agreement}")


def read_labels_file(path: Path | None) -> list[str] | None:
    if path is None:
        return None
    if not path.is_file():
        raise ExportError(f"--labels {path} does not exist")
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not labels:
        raise ExportError(f"--labels {path} is empty: it needs one class name per line")
    return labels


def target_names(name: str, opts: ExportOptions) -> dict[str, str]:
    """Model names this run writes, by role."""
    names = {"fp32": name}
    if opts.trt:
        names["trt"] = f"{name}_trt"
    elif opts.precision == "int8":
        names["int8"] = f"{name}_int8"
    if opts.fp16 or (opts.precision == "fp16" and not opts.trt):
        names["fp16"] = f"{name}_fp16"
    return {k: valid_name(v) for k, v in names.items()}


def base_params(loaded: LoadedModel, opts: ExportOptions, precision: str) -> dict[str, str]:
    params = loaded.preprocess.to_params()
    params.update(
        {
            "source.arch": opts.arch,
            "source.weights": loaded.weights,
            "source.num_classes": str(loaded.num_classes),
            "export.opset": str(opts.opset),
            "export.precision": precision,
            "export.torch_version": torch.__version__,
            "export.exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    if loaded.transform_input is not None:
        params["model.transform_input"] = str(loaded.transform_input).lower()
    return params


def run_export(opts: ExportOptions) -> ExportResult:
    _validate(opts)
    name = valid_name(opts.name or default_model_name(opts.arch))
    names = target_names(name, opts)
    if opts.trt:
        from export.tensorrt import require

        require()  # fail fast, before minutes of work, when there is no GPU / TensorRT
    labels = read_labels_file(opts.labels_file)
    version = choose_version(opts.repo, list(names.values()), opts.version)
    loaded = load_model(opts.arch, opts.weights, labels, opts.transform_input, opts.fallback_random)
    pp = loaded.preprocess
    shape = (3, pp.crop, pp.crop)
    preferred = tuple(preferred_batches(opts.preferred, opts.max_batch_size))
    result = ExportResult()

    def config(model_name: str, precision: str, extra: dict[str, str], platform: str = "onnxruntime_onnx",
               gpu: bool = False) -> ConfigSpec:
        params = base_params(loaded, opts, precision) | extra
        return ConfigSpec(model_name, platform, shape, loaded.num_classes, opts.max_batch_size, preferred,
                          params, gpu)

    with staging(opts.repo) as st:
        main = st.model(names["fp32"], version)
        onnx_path = export_onnx(loaded.model, main.version_dir / "model.onnx", shape, opts.opset, opts.simplify)
        photos = images.to_batch(images.sample_photos()[:PARITY_PHOTOS], pp)
        t0 = time.perf_counter()
        report = check_parity(torch_runner(loaded.model), ort_runner(onnx_path),
                              parity_inputs(photos, shape), opts.atol)
        print(f"ONNX Runtime vs PyTorch ({names['fp32']}):\n{report.table()}", flush=True)
        logger.info("parity gate took %.1fs", time.perf_counter() - t0)
        if not report.passed:
            raise ExportError(
                f"parity gate failed: ONNX Runtime differs from PyTorch by up to {report.max_abs_diff:.2e} "
                f"(tolerance {opts.atol:g}, relative {report.rtol:g}) or in the top-5 (see the table above); "
                "nothing was written"
            )
        result.parity_max_abs_diff = report.max_abs_diff
        fp32_extra = {"export.parity_max_abs_diff": f"{report.max_abs_diff:.3g}"}
        main.write(build_config(config(names["fp32"], "fp32", fp32_extra)), loaded.labels)

        if "int8" in names:
            result.agreements["int8"] = _int8(st, names["int8"], version, onnx_path, opts, pp, config,
                                              loaded.labels, loaded.weights)
        if "fp16" in names:
            result.agreements["fp16"] = _fp16(st, names["fp16"], version, onnx_path, opts, pp, config,
                                              loaded.labels)
        if "trt" in names:
            from export.tensorrt import export_trt

            result.agreements["trt"] = export_trt(
                st, names["trt"], version, onnx_path, opts, pp, config, loaded.labels
            )
        result.written = st.commit()
    return result


def gate_threshold(opts: ExportOptions, precision: str) -> float:
    return MIN_AGREEMENT[precision] if opts.min_agreement is None else opts.min_agreement


def _int8(st: Staging, name: str, version: int, fp32: Path, opts: ExportOptions, pp: Preprocess,
          config: ConfigFn, labels: list[str], weights: str) -> float:
    from export.quantize import gate_int8, quantize_int8

    m = st.model(name, version)
    calib = images.calibration_set(pp, opts.calib_dir)
    int8 = quantize_int8(fp32, m.version_dir / "model.onnx", calib)
    threshold = gate_threshold(opts, "int8")
    res = gate_int8(fp32, int8, images.check_set(pp), threshold)
    print(f"INT8 top-1 agreement with FP32: {100 * res.agreement:.1f}% (gate {100 * threshold:.1f}%); "
          f"size {res.int8_bytes / 1e6:.1f} MB vs {res.fp32_bytes / 1e6:.1f} MB", flush=True)
    if not res.passed:
        hint = (
            "with random weights predictions are meaningless, so agreement is too: pass --min-agreement 0 "
            "to accept it (the value is recorded as export.int8_agreement)"
            if weights == RANDOM
            else "calibrate on images like the ones you serve (--calib-dir) or lower --min-agreement"
        )
        raise ExportError(
            f"INT8 gate failed: top-1 agreement with FP32 is {100 * res.agreement:.1f}% < "
            f"{100 * threshold:.1f}%; {hint}; nothing was written"
        )
    extra = {"export.int8_agreement": f"{res.agreement:.4f}", "export.int8_calibration": (
        str(opts.calib_dir) if opts.calib_dir else "skimage-sample-photos")}
    m.write(build_config(config(name, "int8", extra)), labels)
    return res.agreement


def _fp16(st: Staging, name: str, version: int, fp32: Path, opts: ExportOptions, pp: Preprocess,
          config: ConfigFn, labels: list[str]) -> float:
    m = st.model(name, version)
    fp16 = convert_fp16(fp32, m.version_dir / "model.onnx")
    threshold = gate_threshold(opts, "fp16")
    agreement = top1_agreement(ort_runner(fp32), ort_runner(fp16), images.check_set(pp))
    print(f"FP16 top-1 agreement with FP32: {100 * agreement:.1f}% (gate {100 * threshold:.1f}%)", flush=True)
    if agreement < threshold:
        raise ExportError(f"FP16 gate failed: top-1 agreement with FP32 is {100 * agreement:.1f}% < "
                          f"{100 * threshold:.1f}%; nothing was written")
    m.write(build_config(config(name, "fp16", {"export.fp16_agreement": f"{agreement:.4f}"})), labels)
    return agreement
