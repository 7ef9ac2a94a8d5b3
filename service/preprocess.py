"""Decode + resize + crop + normalise, matching torchvision's reference eval transforms.

``Resize(resize_shorter)`` (antialiased, PIL) -> ``CenterCrop(crop)`` -> ``ToTensor`` -> ``Normalize``.
Two shortcuts keep the same result while doing less work:

* the resize is computed only for the crop window (``Image.resize(box=...)``), which is what the
  full resize followed by a centre crop produces, without resampling pixels that are cut away;
* large JPEGs are decoded at a reduced DCT scale (``Image.draft``) while the decoded image still has
  at least ``DRAFT_MARGIN`` times the pixels the resize needs, which keeps the tensor within the
  parity tolerance (tests/service/test_preprocess.py measures it on real photos).

Everything here is blocking CPU work: callers run it in a worker thread (Pillow releases the GIL).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import BadImage, PayloadTooLarge
from service.repository import Preprocess

# We enforce our own pixel limit (before decoding); Pillow's global one would raise a different error.
Image.MAX_IMAGE_PIXELS = None

DRAFT_MARGIN = 2.0
_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the pixel count before anything is decoded."""
    if not data:
        raise BadImage("empty image: the request part or body has no bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise BadImage(
            "cannot identify the image format: send a JPEG, PNG, WebP, BMP or GIF file"
        ) from e
    w, h = img.size
    if w * h > max_pixels:
        raise PayloadTooLarge(
            f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}: "
            "downscale it before sending (or raise --max-image-pixels)"
        )
    if w < 1 or h < 1:
        raise BadImage(f"image has an empty size {w}x{h}")
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.float32)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr8 = np.clip(arr * (255.0 / hi) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def decode(data: bytes, pp: Preprocess, max_pixels: int) -> Image.Image:
    """Decode to an upright RGB image, reduced in the DCT domain when that is safe."""
    img = open_image(data, max_pixels)
    try:
        if img.format == "JPEG":
            w, h = img.size
            # Ask for an image whose shorter side stays >= DRAFT_MARGIN * resize (EXIF rotation
            # does not change the shorter side).
            need = DRAFT_MARGIN * pp.resize_shorter
            short = min(w, h)
            if short > need:
                scale = need / short
                img.draft("RGB", (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))
        img.load()
        img = ImageOps.exif_transpose(img) or img
        return _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"image could not be decoded (truncated or corrupt?): {e}") from e


def crop_box(w: int, h: int, pp: Preprocess) -> tuple[float, float, float, float]:
    """The region of the original image that Resize(shorter)+CenterCrop(crop) keeps."""
    size = pp.resize_shorter
    # torchvision: the shorter side becomes `size`, the longer int(size * long / short).
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    top = int(round((nh - pp.crop) / 2.0))
    left = int(round((nw - pp.crop) / 2.0))
    sx, sy = w / nw, h / nh
    return (left * sx, top * sy, (left + pp.crop) * sx, (top + pp.crop) * sy)


def resize_crop(img: Image.Image, pp: Preprocess) -> Image.Image:
    w, h = img.size
    box = crop_box(w, h, pp)
    resample = _RESAMPLE.get(pp.interpolation, Image.Resampling.BILINEAR)
    return img.resize((pp.crop, pp.crop), resample, box=box)


class Normalizer:
    """uint8 HWC -> float32 CHW, ``(x/255 - mean)/std`` folded into one multiply-add."""

    def __init__(self, pp: Preprocess) -> None:
        std = np.asarray(pp.std, dtype=np.float32)
        mean = np.asarray(pp.mean, dtype=np.float32)
        self.scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
        self.shift = (-mean / std).reshape(3, 1, 1)

    def __call__(self, img: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        chw = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
        if out is None:
            out = np.empty(chw.shape, dtype=np.float32)
        np.multiply(chw, self.scale, out=out, casting="unsafe")
        out += self.shift
        return out


def preprocess(data: bytes, pp: Preprocess, max_pixels: int, normalizer: Normalizer | None = None) -> np.ndarray:
    """Image bytes -> float32 ``(3, crop, crop)`` tensor ready for the model."""
    img = resize_crop(decode(data, pp, max_pixels), pp)
    return (normalizer or Normalizer(pp))(img)


def preprocess_pil(img: Image.Image, pp: Preprocess) -> np.ndarray:
    """Same pipeline for an already-decoded image (calibration sets, tests)."""
    img = ImageOps.exif_transpose(img) or img
    return Normalizer(pp)(resize_crop(_to_rgb(img), pp))
