"""ONNX -> TensorRT plan (``NAME_trt``, platform ``tensorrt_plan``), gated against ONNX Runtime.

Needs the TensorRT 10 Python package and a CUDA GPU; every TensorRT/CUDA import is lazy so this
module imports (and ``python -m export`` without ``--trt`` runs) on CPU-only machines.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from export import images
from export.errors import ExportError
from export.parity import Runner, ort_runner, top1_agreement
from modelrepo.config import FALLBACK_PARAM, INPUT_NAME, OUTPUT_NAME
from modelrepo.engine_cache import plan_param
from modelrepo.preprocess import Preprocess
from modelrepo.tensorrt_build import build_engine, compute_capability, require

if TYPE_CHECKING:
    from export.options import ExportOptions
    from export.repo_writer import ConfigSpec, Staging

logger = logging.getLogger(__name__)

MIN_AGREEMENT = {"fp32": 0.99, "fp16": 0.99, "bf16": 0.99, "int8": 0.98}
TIMING_CACHE = "timing.cache"


def trt_runner(plan_path: Path) -> Runner:
    """Run a plan with the TensorRT runtime, torch CUDA tensors as the I/O buffers."""
    trt = require()
    import torch

    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(plan_path.read_bytes())
    if engine is None:
        raise ExportError(f"TensorRT could not deserialize {plan_path}")
    context = engine.create_execution_context()
    stream = torch.cuda.Stream()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.cuda.stream(stream):
            inp = torch.from_numpy(np.ascontiguousarray(x)).to("cuda", non_blocking=False)
            context.set_input_shape(INPUT_NAME, tuple(inp.shape))
            out = torch.empty(tuple(context.get_tensor_shape(OUTPUT_NAME)), dtype=torch.float32, device="cuda")
            context.set_tensor_address(INPUT_NAME, int(inp.data_ptr()))
            context.set_tensor_address(OUTPUT_NAME, int(out.data_ptr()))
            if not context.execute_async_v3(stream.cuda_stream):
                raise ExportError("TensorRT inference failed while gating the engine")
        stream.synchronize()
        return np.asarray(out.cpu().numpy(), dtype=np.float32)

    return run


def export_trt(
    st: Staging,
    name: str,
    version: int,
    onnx_path: Path,
    opts: ExportOptions,
    pp: Preprocess,
    config: Callable[..., ConfigSpec],
    labels: list[str],
) -> float:
    """Build ``name`` (the plan) into the staging area and gate it against the ONNX model."""
    trt = require()
    from export.repo_writer import build_config

    m = st.model(name, version)
    precision = opts.precision
    shape = (3, pp.crop, pp.crop)
    preferred = config(name, precision, {}).preferred
    profile = (1, min(max(preferred), opts.max_batch_size), opts.max_batch_size)
    existing_cache = opts.repo / name / TIMING_CACHE
    timing = m.dir / TIMING_CACHE
    if existing_cache.is_file():
        timing.write_bytes(existing_cache.read_bytes())
    calib = images.calibration_set(pp, opts.calib_dir) if precision == "int8" else None
    cc = compute_capability()
    fname = plan_filename(cc)
    plan = build_engine(onnx_path, m.version_dir / fname, precision, shape, profile, timing, calib)
    agreement = _gate(onnx_path, plan, precision, pp, opts.min_agreement, min(8, opts.max_batch_size))
    extra = {
        "tensorrt.version": str(trt.__version__),
        "tensorrt.compute_capability": cc,
        "tensorrt.profile": ",".join(map(str, profile)),
        "export.trt_agreement": f"{agreement:.4f}",
        **plan_params(cc, str(trt.__version__), profile, agreement),
        # a plan only runs on the GPU kind it was built for: elsewhere the service serves this ONNX model
        FALLBACK_PARAM: onnx_path.parent.parent.name,
    }
    spec = config(name, precision, extra, platform="tensorrt_plan", gpu=True)
    # Triton picks the plan by GPU kind; `--trt-cache` on another GPU kind adds its plan to this map
    spec = dataclasses.replace(spec, cc_model_filenames={cc: fname}, default_model_filename=fname)
    m.write(build_config(spec), labels)
    return agreement


def plan_filename(cc: str) -> str:
    """``model.sm90.plan``: one plan per GPU kind in a version folder, named in ``cc_model_filenames``."""
    return f"model.sm{cc.replace('.', '')}.plan"


def plan_params(cc: str, trt_version: str, profile: tuple[int, int, int], agreement: float) -> dict[str, str]:
    """Per-plan provenance in the config (several GPU kinds may share one ``NAME_trt``)."""
    return {
        plan_param(cc, "version"): trt_version,
        plan_param(cc, "profile"): ",".join(map(str, profile)),
        plan_param(cc, "agreement"): f"{agreement:.4f}",
    }


def _gate(onnx_path: Path, plan: Path, precision: str, pp: Preprocess, min_agreement: float | None,
          batch: int) -> float:
    """Top-1 agreement of the plan with ONNX Runtime on the check images; ExportError below the gate."""
    threshold = MIN_AGREEMENT[precision] if min_agreement is None else min_agreement
    t0 = time.perf_counter()
    agreement = top1_agreement(ort_runner(onnx_path), trt_runner(plan), images.check_set(pp), batch=batch)
    print(f"TensorRT {precision} top-1 agreement with ONNX: {100 * agreement:.1f}% "
          f"(gate {100 * threshold:.1f}%)", flush=True)
    logger.info("TensorRT gate took %.1fs", time.perf_counter() - t0)
    if agreement < threshold:
        raise ExportError(f"TensorRT gate failed: top-1 agreement with ONNX is {100 * agreement:.1f}% < "
                          f"{100 * threshold:.1f}%; nothing was written")
    return agreement


def add_plan(model_dir: Path, version: int, plan_src: Path, cc: str, extra: dict[str, str]) -> Path:
    """Add ``plan_src`` as GPU kind ``cc``'s plan of ``model_dir/<version>``: one file + one ``cc_model_filenames``
    entry; the plans of other GPU kinds stay. The plan and the config are each replaced atomically."""
    from modelrepo.config import get_params, read_config, set_params

    vdir = model_dir / str(version)
    cfg = read_config(model_dir)
    if not cfg.cc_model_filenames:  # a plan exported before the map: keep it, under the cc it was built for
        old_cc = get_params(cfg).get("tensorrt.compute_capability", "")
        old = cfg.default_model_filename or "model.plan"
        if old_cc and "," not in old_cc and (vdir / old).is_file():
            cfg.cc_model_filenames[old_cc] = old
    fname = plan_filename(cc)
    tmp = vdir / f".{fname}.tmp"
    shutil.copyfile(plan_src, tmp)
    os.replace(tmp, vdir / fname)
    cfg.cc_model_filenames[cc] = fname
    if not cfg.default_model_filename:
        cfg.default_model_filename = fname
    set_params(cfg, {**extra, "tensorrt.compute_capability": ",".join(sorted(cfg.cc_model_filenames))})
    _write_config_atomic(model_dir, cfg)
    logger.info("added the plan for compute capability %s to %s", cc, vdir)
    return vdir / fname


def _write_config_atomic(model_dir: Path, cfg: Any) -> None:
    from modelrepo.config import CONFIG_FILE, format_config

    tmp = model_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(format_config(cfg))
    os.replace(tmp, model_dir / CONFIG_FILE)


def build_cache(repo: Path, name: str, version: int | None = None, min_agreement: float | None = None) -> list[Path]:
    """``--trt-cache``: build this GPU's engine into ``name``'s engine cache, the key the service asks for.

    The same ``engine_cache.get_or_build`` the service runs on first start (so it is built once, even
    while a service is starting on the same volume). If ``NAME_trt`` has the same version at the same
    precision, the plan is also gated and added to it for this GPU kind (``add_plan``).
    """
    from export.repo_writer import existing_versions, valid_name
    from modelrepo.config import get_params, read_config
    from modelrepo.engine_cache import engine_dir, engine_key, get_or_build
    from modelrepo.errors import RepositoryError

    trt = require()
    model_dir = repo / valid_name(name)
    try:
        cfg = read_config(model_dir)
    except RepositoryError as e:
        raise ExportError(f"--trt-cache: {e}") from e
    version = version or max(existing_versions(model_dir), default=0)
    onnx_path = model_dir / str(version) / "model.onnx"
    if not onnx_path.is_file():
        raise ExportError(f"--trt-cache: {onnx_path} does not exist: export the ONNX model first")
    dims = tuple(int(d) for d in cfg.input[0].dims)
    shape = (dims[0], dims[1], dims[2])
    try:
        key = engine_key(compute_capability(), str(trt.__version__), get_params(cfg), cfg.max_batch_size or 1, dims)
    except (RepositoryError, ValueError) as e:
        raise ExportError(f"--trt-cache: {model_dir.name}: {e}") from e
    if key.precision == "int8":
        raise ExportError("--trt-cache builds the engine the service asks for, and it has no INT8 calibration: "
                          "use `--trt --precision int8` for an INT8 plan")
    timing = engine_dir(onnx_path.parent) / f"{key.stem}.timing"

    def build(onnx: Path, out: Path) -> None:
        build_engine(onnx, out, key.precision, shape, key.profile, timing)

    plan = get_or_build(onnx_path, key, build, logger)
    written = [plan]
    trt_dir = repo / f"{name}_trt"
    if (trt_dir / str(version)).is_dir():
        written += _publish(trt_dir, version, onnx_path, plan, key, min_agreement)
    return written


def _publish(trt_dir: Path, version: int, onnx_path: Path, plan: Path, key: Any,
             min_agreement: float | None) -> list[Path]:
    """Gate the cached plan and add it to ``NAME_trt`` for this GPU kind, unless it has one or another precision."""
    from modelrepo.config import get_params, read_config

    cfg = read_config(trt_dir)
    params = get_params(cfg)
    cc = key.compute_capability
    if params.get("export.precision", "fp32") != key.precision:
        logger.info("not adding the %s engine to %s: its plans are %s", key.precision, trt_dir.name,
                    params.get("export.precision"))
        return []
    if cc in cfg.cc_model_filenames and (trt_dir / str(version) / cfg.cc_model_filenames[cc]).is_file():
        logger.info("%s version %d already has a plan for compute capability %s", trt_dir.name, version, cc)
        return []
    pp = Preprocess.from_params(params, [int(d) for d in cfg.input[0].dims])
    agreement = _gate(onnx_path, plan, key.precision, pp, min_agreement, min(8, key.max_batch))
    extra = plan_params(cc, key.trt_version, key.profile, agreement)
    return [add_plan(trt_dir, version, plan, cc, extra)]
