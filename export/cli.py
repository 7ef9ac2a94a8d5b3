"""``python -m export``: the thin command line over ``export.pipeline``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from export.errors import ExportError
from export.models import ARCHS, TIMM_EXAMPLES, default_model_name, param_count, resolve_arch
from export.onnx_export import MIN_OPSET
from export.options import DEFAULT_INT8_METHOD, FORMATS, INT8_FORMATS, INT8_METHODS, PRECISIONS, ExportOptions
from export.pipeline import run_export
from export.repo_writer import DEFAULT_PREFERRED
from modelrepo.errors import RepositoryError

logger = logging.getLogger("export")


def list_archs(out: Callable[[str], None] = print) -> None:
    """Print the architectures with input size and parameter count (and where DEFAULT comes from offline)."""
    out(f"{'architecture':<22} {'input':>9} {'resize':>6} {'params':>8}")
    for name in [*ARCHS, *TIMM_EXAMPLES]:
        spec = resolve_arch(name)
        try:
            params = f"{param_count(spec) / 1e6:>7.1f}M"
        except ExportError as e:  # a packaged architecture whose model code is not installed
            params, note = "      ?", f"  {e}"
        else:
            note = f"  DEFAULT offline: {spec.packaged.package}" if spec.packaged else ""
        out(f"{name:<22} {spec.crop:>4}x{spec.crop:<4} {spec.resize_shorter:>6} {params}{note}")
    out("timm:NAME              any timm CNN by name (input size and mean/std from timm's data config)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Export a torchvision/timm CNN to ONNX (and OpenVINO IR / INT8 / FP16 / TensorRT) into a "
        "Triton-layout model repository, gated by parity checks.",
    )
    p.add_argument("--list", action="store_true", help="list architectures with input size and parameters")
    p.add_argument("--arch", help=f"{', '.join(ARCHS)}, or timm:NAME")
    p.add_argument("--weights", help="torchvision tag (DEFAULT, IMAGENET1K_V1, ...), checkpoint path, or random")
    p.add_argument("--repo", type=Path, help="model repository folder (created if missing)")
    p.add_argument("--name", help="model name (default: the architecture, ':' -> '_')")
    p.add_argument("--version", type=int, help="version folder (default: the next free one)")
    p.add_argument("--labels", type=Path, help="class names, one per line, in logit order")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--preferred-batch", type=int, nargs="+", default=None,
                   help=f"preferred batch sizes (default {' '.join(map(str, DEFAULT_PREFERRED))}, capped at max)")
    p.add_argument("--opset", type=int, default=MIN_OPSET)
    p.add_argument("--simplify", action=argparse.BooleanOptionalAction, default=True,
                   help="simplify with onnxslim (default on)")
    p.add_argument("--fp16", action="store_true", help="also write an FP16 model NAME_fp16")
    p.add_argument("--format", choices=FORMATS, default="onnx",
                   help="openvino: also write NAME_ov, an OpenVINO IR (backend openvino), gated against ONNX Runtime; "
                   "pytorch: also write NAME_pt, TorchScript (platform pytorch_libtorch), gated against eager PyTorch")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="int8: also write NAME_int8 (see --int8-method); with --trt: engine precision")
    p.add_argument("--int8-method", choices=INT8_METHODS, default=None,
                   help=f"INT8 quantizer: ort-qdq (ONNX Runtime static quantization, a QDQ ONNX model that ONNX "
                   f"Runtime and OpenVINO serve) or nncf (NNCF, an OpenVINO IR); default {DEFAULT_INT8_METHOD}")
    p.add_argument("--int8-format", choices=INT8_FORMATS, default=None,
                   help="ort-qdq's INT8 format: auto (default) keeps the first that passes the gate of u8s8-rr (7-bit "
                   "weights) and u8u8, which compute the same on every x86 CPU; u8s8 (8-bit weights) needs VNNI or "
                   "AMX and saturates on CPUs without (the service's load-time check refuses it there)")
    p.add_argument("--calib-dir", type=Path, help="INT8 calibration images (default: scikit-image samples)")
    p.add_argument("--min-agreement", type=float, default=None,
                   help="top-1 agreement gate for INT8/FP16/TensorRT (default 0.98 int8, 0.99 fp16)")
    p.add_argument("--bf16-gate", action=argparse.BooleanOptionalAction, default=None,
                   help="check that OpenVINO may run the FP32 model in BF16 (its default on CPUs with BF16), "
                   "pinning it to f32 in its config if not (default: on when openvino is installed)")
    p.add_argument("--eval-dir", type=Path,
                   help="labelled images (ImageFolder DIR/<class>/<image> or a CSV of file,label): gate the INT8 model "
                   "and the BF16 gate on top-1 there instead of on top-1 agreement (python -m export.evaluate)")
    p.add_argument("--max-top1-drop", type=float, default=None,
                   help="with --eval-dir: top-1 percentage points the INT8 / BF16 model may lose (default 1.0)")
    p.add_argument("--trt", action="store_true", help="also build a TensorRT plan NAME_trt (needs a GPU)")
    p.add_argument("--trt-cache", action="store_true",
                   help="export nothing; build this GPU's TensorRT engine into the engine cache of the exported "
                   "model NAME (--repo, --name or --arch, --version: latest), the engine the service would build "
                   "on first start; if NAME_trt has that version, also add the plan to it for this GPU kind")
    p.add_argument("--transform-input", action=argparse.BooleanOptionalAction, default=None,
                   help="inception_v3/googlenet: torchvision's transform_input (default: on for ImageNet tags)")
    p.add_argument("--fallback-random", action="store_true",
                   help="when the pretrained weights cannot be downloaded, export random weights (loud warning)")
    p.add_argument("--atol", type=float, default=1e-3, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def _options(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ExportOptions:
    missing = [f"--{n}" for n in ("arch", "weights", "repo") if getattr(args, n) is None]
    if missing:
        parser.error(f"{', '.join(missing)} required (or --list)")
    if args.arch not in ARCHS and not args.arch.startswith("timm:"):
        parser.error(f"unknown architecture {args.arch!r}; valid: {', '.join(ARCHS)}, or timm:NAME")
    return ExportOptions(
        arch=args.arch, weights=args.weights, repo=args.repo, name=args.name, version=args.version,
        labels_file=args.labels, max_batch_size=args.max_batch_size, preferred=args.preferred_batch,
        opset=args.opset, simplify=args.simplify, fp16=args.fp16, precision=args.precision,
        calib_dir=args.calib_dir, trt=args.trt, fallback_random=args.fallback_random,
        min_agreement=args.min_agreement, transform_input=args.transform_input, atol=args.atol,
        format=args.format, int8_method=args.int8_method, int8_format=args.int8_format, bf16_gate=args.bf16_gate,
        eval_dir=args.eval_dir, max_top1_drop=args.max_top1_drop,
    )


def _cache_name(args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    if args.repo is None or (args.name is None and args.arch is None):
        parser.error("--trt-cache needs --repo and --name (or --arch)")
    return str(args.name or default_model_name(args.arch))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.trt_cache:
            cache_name = _cache_name(args, parser)
        elif not args.list:
            opts = _options(args, parser)
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    # Our progress at INFO; libraries (onnxruntime.quantization logs every node at INFO) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        if args.list:
            list_archs()
            return 0
        if args.trt_cache:
            from export.tensorrt import build_cache

            written = build_cache(args.repo, cache_name, args.version, args.min_agreement)
        else:
            written = run_export(opts).written
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except RepositoryError as e:  # the repository format's own errors (e.g. TensorRT missing, a bad config)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. --repo is a file, or the disk is full: the staging area is already gone
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    for path in written:
        print(f"wrote {path}")
    return 0
