"""Real test photos (scikit-image's samples) as JPEG quality 90, the bytes every load test posts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = ("chelsea", "coffee", "astronaut")
QUALITY = 90


def sample_jpegs() -> dict[str, bytes]:
    """``{name: JPEG bytes}`` for the scikit-image sample photos (no network: they ship with it)."""
    from skimage import data

    out: dict[str, bytes] = {}
    for name in SAMPLES:
        arr = np.asarray(getattr(data, name)(), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).convert("RGB").save(buf, format="JPEG", quality=QUALITY)
        out[f"{name}.jpg"] = buf.getvalue()
    return out


def write_samples(folder: Path) -> dict[str, Path]:
    """Write the sample JPEGs into ``folder``; ``{name: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, blob in sample_jpegs().items():
        path = folder / name
        path.write_bytes(blob)
        paths[name] = path
    return paths
