"""``python -m loadtest.preprocess_bench``: decode + preprocess ms/img, the previous pipeline vs ``preprocess``.

``old`` is the pipeline of the previous commit, reimplemented here (``old_preprocess``): Pillow decode
with ``Image.draft``, ``ImageOps.exif_transpose`` on the whole decoded image (a whole-image copy even
when nothing turns), the crop box from the reduced size. ``new`` is ``modelrepo.image_preprocess.preprocess``:
the same decode, the EXIF orientation applied to the small crop, the crop box from the full size.
Images: the scikit-image sample photos as the load tests post them (JPEG quality 90), at their native
size and upscaled (4x by default: the DCT-scaled decode), each also stored with EXIF orientation 6
(how phones store portrait photos).

One pool worker thread, as /classify runs it, the last few tensors kept alive (as the batcher's
queue keeps them); the two pipelines alternate in blocks of ``--block`` images so both see the same
machine; a cell is the median over all images. ``cpu`` is the thread's CPU time (less sensitive to
other processes than the wall clock), ``faults`` its minor page faults per image. ``old/new`` above 1:
the new path is faster. ``|d|``: the mean |difference| between the two tensors (normalised units).

Prints a table and writes ``loadtest/results/preprocess-<timestamp>.json`` (git ignores it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from loadtest.images import QUALITY, sample_jpegs
from modelrepo.image_preprocess import _RESAMPLE, DRAFT_MARGIN, Normalizer, _to_rgb, crop_box, open_image, preprocess
from modelrepo.preprocess import Preprocess

RESULTS = Path(__file__).with_name("results")
MAX_PIXELS = 10**9
KEEP_ALIVE = 8  # tensors the worker keeps referenced, as queued requests do
Pipeline = Callable[[bytes, Preprocess, Normalizer], np.ndarray]


def old_preprocess(data: bytes, pp: Preprocess, norm: Normalizer) -> np.ndarray:
    """``preprocess`` as of commit 3584f92 (``git show 3584f92:service/preprocess.py``), inline."""
    img = open_image(data, MAX_PIXELS)
    w, h = img.size
    if img.format == "JPEG" and min(w, h) > DRAFT_MARGIN * pp.resize_shorter:
        r = DRAFT_MARGIN * pp.resize_shorter / min(w, h)
        img.draft("RGB", (max(1, int(w * r + 0.999)), max(1, int(h * r + 0.999))))
    img.load()
    img = _to_rgb(ImageOps.exif_transpose(img) or img)
    resample = _RESAMPLE.get(pp.interpolation, Image.Resampling.BILINEAR)
    return norm(img.resize((pp.crop, pp.crop), resample, box=crop_box(*img.size, pp)))


def new_preprocess(data: bytes, pp: Preprocess, norm: Normalizer) -> np.ndarray:
    return preprocess(data, pp, MAX_PIXELS, norm)


PIPELINES: dict[str, Pipeline] = {"old": old_preprocess, "new": new_preprocess}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m loadtest.preprocess_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50, help="timed runs per image and pipeline (median)")
    ap.add_argument("--block", type=int, default=10, help="images per pipeline before switching to the other")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 4], help="upscale factors of the photos")
    ap.add_argument("--orientations", type=int, nargs="+", default=[1, 6], choices=range(1, 9),
                    help="EXIF orientations to store the photos with (1: upright, 6: turned 90° as phones do)")
    ap.add_argument("--resize", type=int, default=256, help="preprocess.resize_shorter")
    ap.add_argument("--crop", type=int, default=224, help="preprocess.crop")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    return ap.parse_args(argv)


def variant(data: bytes, scale: int, orientation: int) -> bytes:
    """The photo ``scale`` times larger (bicubic), tagged with an EXIF ``orientation`` (pixels not turned)."""
    if scale == 1 and orientation == 1:
        return data
    img = Image.open(io.BytesIO(data))
    big = img.resize((img.width * scale, img.height * scale), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    buf = io.BytesIO()
    big.save(buf, format="JPEG", quality=QUALITY, exif=exif.tobytes())
    return buf.getvalue()


def _block(fn: Pipeline, data: bytes, pp: Preprocess, norm: Normalizer, n: int) -> list[tuple[float, float, int]]:
    """``n`` images on the calling thread: ``(wall ms, cpu ms, minor faults)`` each."""
    alive: deque[np.ndarray] = deque(maxlen=KEEP_ALIVE)
    out = []
    for _ in range(n):
        f0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        alive.append(fn(data, pp, norm))
        c1, t1 = time.thread_time_ns(), time.perf_counter_ns()
        out.append(((t1 - t0) / 1e6, (c1 - c0) / 1e6, resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - f0))
    return out


def measure(data: bytes, pp: Preprocess, repeats: int, block: int) -> dict[str, dict[str, float]]:
    """Medians per pipeline over ``repeats`` images, in alternating blocks on one pool worker thread."""
    norm = Normalizer(pp)
    runs: dict[str, list[tuple[float, float, int]]] = {k: [] for k in PIPELINES}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="preprocess") as pool:
        for fn in PIPELINES.values():  # warm-up
            pool.submit(_block, fn, data, pp, norm, 3).result()
        while len(runs["old"]) < repeats:
            for k, fn in PIPELINES.items():
                runs[k] += pool.submit(_block, fn, data, pp, norm, block + 1).result()[1:]  # first: switch-over
    return {
        k: {
            "ms": statistics.median(r[0] for r in runs[k][:repeats]),
            "cpu_ms": statistics.median(r[1] for r in runs[k][:repeats]),
            "faults": statistics.mean(r[2] for r in runs[k][:repeats]),
        }
        for k in PIPELINES
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'image':<20} {'size':>10} {'old ms':>7} {'new ms':>7} {'old/new':>7}  {'old cpu':>7} {'new cpu':>7} "
            f"{'old/new':>7}  {'faults old/new':>14}  {'|d|':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        o, n = r["old"], r["new"]
        faults = f"{o['faults']:.0f}/{n['faults']:.0f}"
        lines.append(f"{r['image']:<20} {r['size']:>10} {o['ms']:7.2f} {n['ms']:7.2f} {r['ratio']:6.2f}x  "
                     f"{o['cpu_ms']:7.2f} {n['cpu_ms']:7.2f} {r['cpu_ratio']:6.2f}x  {faults:>14}  "
                     f"{r['mean_abs_diff']:6.4f}")
    g = statistics.geometric_mean
    lines.append(f"{'geomean':<20} {'':>10} {'':>7} {'':>7} {g([r['ratio'] for r in rows]):6.2f}x  {'':>7} {'':>7} "
                 f"{g([r['cpu_ratio'] for r in rows]):6.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pp = Preprocess(resize_shorter=args.resize, crop=args.crop)
    norm = Normalizer(pp)
    rows: list[dict[str, Any]] = []
    for orientation in args.orientations:
        for scale in args.scales:
            for name, blob in sample_jpegs().items():
                label = name + (f" x{scale}" if scale != 1 else "") + (f" o{orientation}" if orientation != 1 else "")
                data = variant(blob, scale, orientation)
                w, h = Image.open(io.BytesIO(data)).size
                print(f"measuring {label} ({w}x{h})", file=sys.stderr, flush=True)
                res = measure(data, pp, args.repeats, args.block)
                diff = np.abs(old_preprocess(data, pp, norm) - new_preprocess(data, pp, norm)).mean()
                rows.append({"image": label, "scale": scale, "orientation": orientation, "size": f"{w}x{h}",
                             "bytes": len(data), **res, "ratio": res["old"]["ms"] / res["new"]["ms"],
                             "cpu_ratio": res["old"]["cpu_ms"] / res["new"]["cpu_ms"], "mean_abs_diff": float(diff)})
    print(f"decode+preprocess, one worker thread, median of {args.repeats}; old = previous commit, new = preprocess")
    print(table(rows))
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": platform.machine(), "cpus": os.cpu_count(),
              "python": platform.python_version(), "preprocess": {"resize_shorter": pp.resize_shorter, "crop": pp.crop},
              "repeats": args.repeats, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"preprocess-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
