"""One export run: load -> ONNX -> parity gate -> BF16 gate -> (OpenVINO IR | INT8 | FP16 | TensorRT) -> commit."""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

import numpy as np
import torch

from export import bf16, images
from export.context import ConfigFn, ExportContext, ExportResult
from export.errors import ExportError, UsageError
from export.eval_gate import DEFAULT_MAX_DROP, EvalGate
from export.gate_check import write_gate_check
from export.models import RANDOM, LoadedModel, default_model_name, imagenet_categories, load_model
from export.onnx_export import MIN_OPSET, convert_fp16, export_onnx
from export.options import DEFAULT_INT8_METHOD, FORMATS, INT8_FORMATS, INT8_METHODS, PRECISIONS, ExportOptions
from export.parity import (
    ParityReport,
    Reference,
    check_parity,
    ort_runner,
    parity_inputs,
    torch_runner,
)
from export.repo_writer import (
    ConfigSpec,
    build_config,
    choose_version,
    preferred_batches,
    staging,
    valid_name,
)

logger = logging.getLogger(__name__)

MIN_AGREEMENT = {"int8": 0.98, "fp16": 0.99}
PARITY_PHOTOS = 4  # real photos in the parity batch
FORMAT_PARAM = {"onnxruntime_onnx": "onnx", "tensorrt_plan": "tensorrt-plan", "openvino": "openvino-ir",
                "pytorch_libtorch": "torchscript"}


def _validate(opts: ExportOptions) -> None:
    if opts.max_batch_size < 1:
        raise UsageError(f"--max-batch-size must be >= 1, got {opts.max_batch_size}")
    if opts.precision not in PRECISIONS:
        raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {opts.precision!r}")
    if opts.format not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {opts.format!r}")
    if opts.int8_method is not None and opts.int8_method not in INT8_METHODS:
        raise UsageError(f"--int8-method must be one of {', '.join(INT8_METHODS)}, got {opts.int8_method!r}")
    if opts.int8_method is not None and (opts.precision != "int8" or opts.trt):
        raise UsageError("--int8-method is only used with --precision int8 without --trt "
                         "(TensorRT calibrates its own INT8 engine)")
    if opts.int8_format is not None and (opts.precision != "int8" or opts.trt or int8_method(opts) != "ort-qdq"):
        raise UsageError("--int8-format picks the format of --precision int8 --int8-method ort-qdq (NNCF writes "
                         "7-bit weights, TensorRT calibrates its own engine)")
    if opts.int8_format is not None and opts.int8_format not in INT8_FORMATS:
        raise UsageError(f"--int8-format must be one of {', '.join(INT8_FORMATS)}, got {opts.int8_format!r}")
    if opts.opset < MIN_OPSET:
        raise UsageError(f"--opset must be >= {MIN_OPSET}, got {opts.opset}")
    if opts.calib_dir is not None and opts.precision != "int8":
        raise UsageError("--calib-dir is only used with --precision int8")
    if opts.min_agreement is not None and not 0.0 <= opts.min_agreement <= 1.0:
        raise UsageError(f"--min-agreement is a fraction in [0, 1], got {opts.min_agreement}")
    if opts.max_top1_drop is not None and (opts.eval_dir is None or not 0.0 <= opts.max_top1_drop <= 100.0):
        raise UsageError("--max-top1-drop is a number of top-1 percentage points in [0, 100] and needs --eval-dir")
    if opts.eval_dir is not None and opts.trt:
        raise UsageError("--eval-dir gates CPU INT8 and BF16 exports, not TensorRT plans (--trt)")


def int8_method(opts: ExportOptions) -> str:
    return opts.int8_method or DEFAULT_INT8_METHOD


def _preflight(opts: ExportOptions, names: dict[str, str]) -> str | None:
    """Fail fast, before minutes of work, when a requested backend is missing; the BF16 gate's skip reason."""
    if "trt" in names:
        from modelrepo.tensorrt_build import require

        require()  # no GPU / TensorRT
    if "ov" in names:
        from export import openvino

        openvino.require("--format openvino")
    if "int8" in names and int8_method(opts) == "nncf":
        from export import openvino

        openvino.require_nncf("--int8-method nncf")
    reason = bf16.skip_reason(opts.bf16_gate)
    if reason:
        logger.info("BF16 gate %s", reason)
    return reason


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
    if opts.format == "openvino":
        names["ov"] = f"{name}_ov"
    if opts.format == "pytorch":
        names["pt"] = f"{name}_pt"
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
            "export.exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    )
    if loaded.transform_input is not None:
        params["model.transform_input"] = str(loaded.transform_input).lower()
    if loaded.random_init is not None:
        params["source.random_init"] = loaded.random_init
    params.update(loaded.provenance)
    return params


def config_fn(loaded: LoadedModel, opts: ExportOptions) -> ConfigFn:
    """``config(name, precision, extra, platform=..., gpu=..., backend=...)`` -> the model's ConfigSpec."""
    crop = loaded.preprocess.crop
    preferred = tuple(preferred_batches(opts.preferred, opts.max_batch_size))

    def config(model_name: str, precision: str, extra: dict[str, str], platform: str = "onnxruntime_onnx",
               gpu: bool = False, backend: str = "") -> ConfigSpec:
        platform = "" if backend else platform
        params = base_params(loaded, opts, precision) | {"export.format": FORMAT_PARAM[backend or platform]} | extra
        return ConfigSpec(model_name, platform, (3, crop, crop), loaded.num_classes, opts.max_batch_size,
                          preferred, params, gpu, backend)

    return config


def run_export(opts: ExportOptions) -> ExportResult:
    _validate(opts)
    name = valid_name(opts.name or default_model_name(opts.arch))
    names = target_names(name, opts)
    bf16_skip = _preflight(opts, names)
    if opts.eval_dir is not None and "int8" not in names and bf16_skip is not None:
        raise UsageError(f"--eval-dir gates an INT8 model (--precision int8) or the BF16 gate, and neither runs "
                         f"here (BF16 gate {bf16_skip})")
    labels = read_labels_file(opts.labels_file)
    version = choose_version(opts.repo, list(names.values()), opts.version)
    loaded = load_model(opts.arch, opts.weights, labels, opts.transform_input, opts.fallback_random)
    evaluation = _eval_gate(opts, loaded)
    pp = loaded.preprocess
    shape = (3, pp.crop, pp.crop)
    config = config_fn(loaded, opts)
    result = ExportResult()

    with staging(opts.repo) as st:
        main = st.model(names["fp32"], version)
        onnx_path = export_onnx(loaded.model, main.version_dir / "model.onnx", shape, opts.opset, opts.simplify)
        photos = images.to_batch(images.sample_photos()[:PARITY_PHOTOS], pp)
        inputs = parity_inputs(photos, shape)
        result.parity_max_abs_diff = _onnx_parity(loaded, onnx_path, inputs, opts.atol, names["fp32"])
        ref = Reference(onnx_path, pp)
        ctx = ExportContext(opts, loaded, st, version, config, ref, bf16_skip, result,
                            evaluation.bind(ref.runner) if evaluation else None)
        fp32_extra = {"export.parity_max_abs_diff": f"{result.parity_max_abs_diff:.3g}"}
        fp32_extra |= _bf16(ctx, onnx_path, names["fp32"], main.version_dir)
        main.write(build_config(config(names["fp32"], "fp32", fp32_extra)), loaded.labels)

        if "ov" in names:
            _openvino_ir(ctx, names["ov"], inputs)
        if "pt" in names:
            _torchscript(ctx, names["pt"], names["fp32"], inputs)
        if "int8" in names:
            result.agreements["int8"] = _int8(ctx, names["int8"])
        if "fp16" in names:
            result.agreements["fp16"] = _fp16(ctx, names["fp16"])
        if "trt" in names:
            from export.tensorrt import export_trt

            result.agreements["trt"] = export_trt(st, names["trt"], version, onnx_path, opts, pp, config,
                                                  loaded.labels)
        result.written = st.commit()
    return result


def _eval_gate(opts: ExportOptions, loaded: LoadedModel) -> EvalGate | None:
    if opts.eval_dir is None:
        return None
    if loaded.weights == RANDOM:
        raise ExportError("--eval-dir measures accuracy, and random weights have none: export real weights "
                          "(a checkpoint or a pretrained tag), or drop --eval-dir")
    max_drop = DEFAULT_MAX_DROP if opts.max_top1_drop is None else opts.max_top1_drop
    return EvalGate(opts.eval_dir, loaded.labels, loaded.labels == imagenet_categories(), loaded.preprocess, max_drop)


def _onnx_parity(loaded: LoadedModel, onnx_path: Path, inputs: dict[str, np.ndarray], atol: float,
                 name: str) -> float:
    t0 = time.perf_counter()
    report = check_parity(torch_runner(loaded.model), ort_runner(onnx_path), inputs, atol)
    _require_parity(report, "ONNX Runtime", "PyTorch", name, "parity gate", t0)
    return report.max_abs_diff


def _require_parity(report: ParityReport, candidate: str, reference: str, name: str, gate: str,
                    t0: float) -> None:
    """Print the parity table; a failed gate fails the export (the staging area is then discarded)."""
    print(f"{candidate} vs {reference} ({name}):\n{report.table()}", flush=True)
    logger.info("%s took %.1fs", gate, time.perf_counter() - t0)
    if not report.passed:
        raise ExportError(
            f"{gate} failed: {candidate} differs from {reference} by up to {report.max_abs_diff:.2e} "
            f"(tolerance {report.atol:g}, relative {report.rtol:g}) or in the top-5 (see the table above); "
            "nothing was written"
        )


def _bf16(ctx: ExportContext, model: Path, name: str, version_dir: Path) -> dict[str, str]:
    """The BF16 gate's config parameters for the FP32 ``model`` (.onnx or .xml), and its check set's: the
    service re-runs it where OpenVINO computes the model in BF16 (not when the gate pinned it to FP32)."""
    if ctx.bf16_skip is not None:
        res = bf16.Bf16Result(ctx.bf16_skip)
    else:
        res = bf16.bf16_gate(model, name, ctx.ref, ctx.loaded.weights == RANDOM, ctx.evaluation)
        if res.agreement is not None:
            ctx.result.agreements[f"bf16:{name}"] = res.agreement
    ctx.result.bf16_gates[name] = res.gate
    if res.pinned:
        return res.params()  # served exactly, nothing to check
    runners = [] if res.runner is None else [res.runner]
    return res.params() | write_gate_check(version_dir, ctx.ref, bf16.MIN_AGREEMENT, runners, ctx.opts.max_batch_size)


def _openvino_ir(ctx: ExportContext, name: str, inputs: dict[str, np.ndarray]) -> None:
    """``NAME_ov``: the FP32 model as OpenVINO IR, gated (OpenVINO f32 vs ONNX Runtime) like the ONNX one."""
    from export import openvino

    m = ctx.st.model(name, ctx.version)
    xml = openvino.convert_ir(ctx.ref.fp32, m.version_dir / openvino.IR_FILE)
    t0 = time.perf_counter()
    report = openvino.gate_ir(xml, ctx.ref.runner, inputs, ctx.opts.atol)
    _require_parity(report, "OpenVINO (CPU, f32)", "ONNX Runtime", name, "OpenVINO IR parity gate", t0)
    extra = {"export.parity_max_abs_diff": f"{report.max_abs_diff:.3g}", "export.parity_reference": "onnxruntime",
             "export.openvino_version": openvino.version()}
    extra |= _bf16(ctx, xml, name, m.version_dir)
    m.write(build_config(ctx.config(name, "fp32", extra, backend="openvino")), ctx.loaded.labels)


def _torchscript(ctx: ExportContext, name: str, base: str, inputs: dict[str, np.ndarray]) -> None:
    """``NAME_pt``: the model traced to TorchScript, gated against the eager model like the ONNX one."""
    from export import torchscript

    m = ctx.st.model(name, ctx.version)
    path = torchscript.trace(ctx.loaded.model, m.version_dir / torchscript.TS_FILE,
                             (3, ctx.loaded.preprocess.crop, ctx.loaded.preprocess.crop))
    t0 = time.perf_counter()
    report = check_parity(torch_runner(ctx.loaded.model), torchscript.ts_runner(path), inputs, ctx.opts.atol)
    _require_parity(report, "TorchScript", "PyTorch", name, "TorchScript parity gate", t0)
    extra = {"export.parity_max_abs_diff": f"{report.max_abs_diff:.3g}", "export.parity_reference": "pytorch",
             "serve.variant_of": base}
    m.write(build_config(ctx.config(name, "fp32", extra, platform="pytorch_libtorch")), ctx.loaded.labels)


def gate_threshold(opts: ExportOptions, precision: str) -> float:
    return MIN_AGREEMENT[precision] if opts.min_agreement is None else opts.min_agreement


def _int8(ctx: ExportContext, name: str) -> float:
    from export.int8_step import int8_step

    opts, method = ctx.opts, int8_method(ctx.opts)
    threshold = gate_threshold(opts, "int8")
    m = ctx.st.model(name, ctx.version)
    chosen, extra = int8_step(ctx, m.version_dir, method, threshold)
    res = chosen.res
    enforced = "recorded; --eval-dir gates" if ctx.evaluation else f"gate {100 * threshold:.1f}%"
    print(f"INT8 top-1 agreement with FP32: {100 * res.agreement.top1:.1f}%; score {100 * res.agreement.score:.1f}% "
          f"({enforced}); format {chosen.fmt}; size {res.int8_bytes / 1e6:.1f} MB vs {res.fp32_bytes / 1e6:.1f} MB "
          f"({method})", flush=True)
    if method == "nncf":
        from export import openvino

        extra["export.openvino_version"] = openvino.version()
    extra["export.int8_calibration"] = str(opts.calib_dir) if opts.calib_dir else images.CALIBRATION_SOURCE
    extra |= write_gate_check(m.version_dir, ctx.ref, threshold, chosen.runners, opts.max_batch_size)
    backend = "openvino" if method == "nncf" else ""
    m.write(build_config(ctx.config(name, "int8", extra, backend=backend)), ctx.loaded.labels)
    return res.agreement.score


def _fp16(ctx: ExportContext, name: str) -> float:
    from export.int8_step import served_runners

    m = ctx.st.model(name, ctx.version)
    fp16 = convert_fp16(ctx.ref.fp32, m.version_dir / "model.onnx")
    threshold = gate_threshold(ctx.opts, "fp16")
    got = ctx.ref.score(ort_runner(fp16))
    print(f"FP16 vs FP32: {got.summary()} (gate {100 * threshold:.1f}%)", flush=True)
    if got.score < threshold:
        raise ExportError(f"FP16 gate failed: {got.summary()}, below {100 * threshold:.1f}%; nothing was written")
    extra = {"export.fp16_agreement": f"{got.top1:.4f}", "export.fp16_score": f"{got.score:.4f}"}
    extra |= write_gate_check(m.version_dir, ctx.ref, threshold, served_runners(fp16), ctx.opts.max_batch_size)
    m.write(build_config(ctx.config(name, "fp16", extra)), ctx.loaded.labels)
    return got.score
