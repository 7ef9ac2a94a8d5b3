"""Real images for parity checks, INT8 calibration and agreement gates.

Everything goes through the service's own ``preprocess_pil`` so exported models are checked on
exactly the tensors they will serve. Without a ``--calib-dir``, INT8 calibration uses photos that
packages ship and that the accuracy suite (tests/accuracy) never tests on: scikit-image's astronaut,
textures, microscopy and text images and scikit-learn's two sample photos, plus crops/flips of them.
The agreement gates' check set is made of *other* variants (colour jitter, rotations, different crops)
of the scikit-image sample photos, so a gate is never measured on calibration images.
"""

from __future__ import annotations

import importlib.util
import logging
import random
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from export.errors import ExportError
from modelrepo.image_preprocess import preprocess_pil
from modelrepo.preprocess import Preprocess

logger = logging.getLogger(__name__)

# RGB photos that ship inside scikit-image (no download needed).
SAMPLE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry",
                 "retina", "colorwheel", "camera", "page")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
#: default INT8 calibration photos: none is one of the accuracy suite's labelled photos
CALIBRATION_SKIMAGE = ("astronaut", "brick", "grass", "gravel", "coins", "clock", "moon", "text", "page", "cell",
                       "colorwheel", "hubble_deep_field", "retina", "immunohistochemistry")
CALIBRATION_SKLEARN = ("china.jpg", "flower.jpg")  # scikit-learn's sample images (an NNCF dependency)
CALIBRATION_SOURCE = "package-photos:" + ",".join(
    [*CALIBRATION_SKIMAGE, *(n.removesuffix(".jpg") for n in CALIBRATION_SKLEARN)])


def sample_photos(names: Iterable[str] = SAMPLE_PHOTOS) -> list[Image.Image]:
    """The scikit-image sample photos as RGB PIL images (grayscale ones converted)."""
    try:
        import skimage.data
    except ImportError as e:
        raise ExportError("scikit-image is needed for the built-in check photos: pip install scikit-image") from e
    out = []
    for name in names:
        try:
            arr = getattr(skimage.data, name)()
        except Exception as e:  # some sample images need a download: skip those
            logger.debug("skipping skimage.data.%s: %s", name, e)
            continue
        img = Image.fromarray(np.asarray(arr))
        out.append(img.convert("RGB"))
    if not out:
        raise ExportError("no scikit-image sample photos could be loaded")
    return out


def sklearn_photos(names: Iterable[str] = CALIBRATION_SKLEARN) -> list[Image.Image]:
    """scikit-learn's sample photos, read from its package folder (importing scikit-learn takes seconds)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError("scikit-learn is needed for the default INT8 calibration photos: pip install scikit-learn "
                          "(or pass --calib-dir)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "images"
    out = []
    for name in names:
        with Image.open(folder / name) as im:
            out.append(im.convert("RGB"))
    return out


def calibration_photos() -> list[Image.Image]:
    """The default INT8 calibration photos (``CALIBRATION_SOURCE``), as RGB images."""
    return sample_photos(CALIBRATION_SKIMAGE) + sklearn_photos()


def _crop(img: Image.Image, rng: random.Random, lo: float) -> Image.Image:
    w, h = img.size
    s = rng.uniform(lo, 1.0)
    cw, ch = max(8, int(w * s)), max(8, int(h * s))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    return img.crop((x, y, x + cw, y + ch))


def calibration_variants(photos: list[Image.Image], per_photo: int = 6, seed: int = 0) -> list[Image.Image]:
    """Each photo, its mirror image and random crops (of either)."""
    rng = random.Random(seed)
    out = []
    for img in photos:
        out += [img, ImageOps.mirror(img)]
        for _ in range(max(0, per_photo - 2)):
            v = _crop(img, rng, 0.5)
            out.append(ImageOps.mirror(v) if rng.random() < 0.5 else v)
    return out


def check_variants(photos: list[Image.Image], per_photo: int = 25, seed: int = 1234) -> list[Image.Image]:
    """Variants never used for calibration: colour jitter, rotation, flips and crops combined.

    25 per photo (250 in all): a real network is decided (top-1 ahead by 0.2) on about a third of them, and
    the gate (``modelrepo.checkset``) needs those to be many: on 100 images one changed answer moved
    EfficientNet-Lite0's INT8 score by 3 points, across the 98 % gate."""
    rng = random.Random(seed)
    out = []
    for img in photos:
        for _ in range(per_photo):
            v = _crop(img, rng, 0.35)
            v = ImageEnhance.Brightness(v).enhance(rng.uniform(0.6, 1.4))
            v = ImageEnhance.Contrast(v).enhance(rng.uniform(0.6, 1.4))
            v = ImageEnhance.Color(v).enhance(rng.uniform(0.3, 1.7))
            v = v.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BILINEAR, expand=False)
            if rng.random() < 0.5:
                v = ImageOps.flip(v)
            out.append(v)
    return out


def images_from_dir(path: Path, limit: int | None = None) -> list[Image.Image]:
    """Images found (recursively) under ``path``, sorted by name."""
    if not path.is_dir():
        raise ExportError(f"--calib-dir {path} is not a directory")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if limit:
        files = files[:limit]
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                out.append(im.convert("RGB"))
        except OSError as e:
            logger.warning("skipping unreadable calibration image %s: %s", f, e)
    if not out:
        raise ExportError(f"--calib-dir {path} holds no readable images ({', '.join(IMAGE_SUFFIXES)})")
    return out


def to_batch(images: list[Image.Image], pp: Preprocess) -> np.ndarray:
    """Preprocess with the service pipeline into one float32 [N,3,crop,crop] array."""
    return np.stack([preprocess_pil(img, pp) for img in images]).astype(np.float32, copy=False)


def calibration_set(pp: Preprocess, calib_dir: Path | None, limit: int = 256) -> np.ndarray:
    if calib_dir is not None:
        imgs = images_from_dir(calib_dir, limit)
        logger.info("calibrating on %d images from %s", len(imgs), calib_dir)
    else:
        imgs = calibration_variants(calibration_photos())
        logger.warning(
            "no --calib-dir: calibrating on %d package photos (scikit-image, scikit-learn) and crops/flips of them; "
            "pass --calib-dir with a few hundred images from your own data for a better INT8 model",
            len(imgs),
        )
    return to_batch(imgs, pp)


def check_set(pp: Preprocess) -> np.ndarray:
    """The agreement check set (never used for calibration)."""
    return to_batch(check_variants(sample_photos()), pp)
