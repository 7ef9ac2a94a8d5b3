"""PyTorch -> ONNX: export with a dynamic batch axis, check, infer shapes, simplify, FP16 variant."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from export.errors import ExportError
from modelrepo.config import INPUT_NAME, OUTPUT_NAME

logger = logging.getLogger(__name__)

MIN_OPSET = 17


def export_onnx(
    model: nn.Module,
    path: Path,
    input_shape: tuple[int, int, int],
    opset: int = MIN_OPSET,
    simplify: bool = True,
) -> Path:
    """Export ``model`` (eval mode) to ``path``: input ``input`` [N,C,H,W] -> output ``logits`` [N,K]."""
    if opset < MIN_OPSET:
        raise ExportError(f"--opset {opset} is too old: use {MIN_OPSET} or newer")
    model.eval()
    dummy = torch.randn(2, *input_shape)
    t0 = time.perf_counter()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter: torch's dynamo exporter needs onnxscript, which the
        # export extra does not install, and gives nothing here for plain CNNs.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
        )
    logger.info("exported %s (opset %d) in %.1fs", path.name, opset, time.perf_counter() - t0)
    check_onnx(path)
    if simplify:
        simplify_onnx(path)
    return path


def check_onnx(path: Path) -> onnx.ModelProto:
    """``onnx.checker`` (full check) plus shape inference; saves the inferred shapes."""
    t0 = time.perf_counter()
    try:
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"the exported ONNX model {path.name} is invalid: {e}") from e
    _check_io(model, path)
    onnx.save(model, str(path))
    logger.info("checked %s (onnx.checker full_check + shape inference) in %.1fs", path.name,
                time.perf_counter() - t0)
    return model


def _check_io(model: onnx.ModelProto, path: Path) -> None:
    ins = [i.name for i in model.graph.input]
    outs = [o.name for o in model.graph.output]
    if ins != [INPUT_NAME] or outs != [OUTPUT_NAME]:
        raise ExportError(f"{path.name}: expected input {INPUT_NAME!r} / output {OUTPUT_NAME!r}, got {ins} / {outs}")
    for vi in (model.graph.input[0], model.graph.output[0]):
        dim0 = vi.type.tensor_type.shape.dim[0]
        if dim0.HasField("dim_value"):
            raise ExportError(f"{path.name}: {vi.name} has a fixed batch size {dim0.dim_value}, expected dynamic")


def simplify_onnx(path: Path) -> bool:
    """Simplify in place with onnxslim; on failure warn and keep the unsimplified model."""
    t0 = time.perf_counter()
    try:
        import onnxslim

        original = onnx.load(str(path))
        nodes_before = len(original.graph.node)
        slim = onnxslim.slim(original)
        if not isinstance(slim, onnx.ModelProto):
            raise TypeError(f"onnxslim returned {type(slim).__name__}")
        onnx.checker.check_model(slim, full_check=True)
        _check_io(slim, path)
    except Exception as e:  # onnxslim is an optional nicety: never lose the export to it
        logger.warning("onnxslim could not simplify %s (%s: %s); keeping the unsimplified model",
                       path.name, type(e).__name__, e)
        return False
    onnx.save(slim, str(path))
    logger.info("simplified %s with onnxslim in %.1fs (%d -> %d nodes)", path.name,
                time.perf_counter() - t0, nodes_before, len(slim.graph.node))
    return True


def convert_fp16(src: Path, dst: Path) -> Path:
    """FP16 weights and compute, FP32 input/output (``keep_io_types``) so clients send the same tensor."""
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel
    except ImportError as e:
        raise ExportError(
            "--fp16 needs onnxruntime.transformers.float16 (ships with onnxruntime), which is missing"
        ) from e
    t0 = time.perf_counter()
    model = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
    model.topological_sort()  # keep_io_types appends the input Cast at the end of the graph
    onnx.save(model.model, str(dst))
    check_onnx(dst)
    logger.info("converted %s to FP16 in %.1fs", dst.name, time.perf_counter() - t0)
    return dst
