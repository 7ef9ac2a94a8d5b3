"""Decode + resize + crop + normalise, matching torchvision's reference eval transforms.

``Resize(resize_shorter)`` (antialiased, PIL) -> ``CenterCrop(crop)`` -> ``ToTensor`` -> ``Normalize``,
on the image turned upright by its EXIF orientation (as ``ImageOps.exif_transpose`` turns it).
Three shortcuts keep the same result while doing less work:

* the resize is computed only for the crop window (``Image.resize(box=...)``), which is what the
  full resize followed by a centre crop produces, without resampling pixels that are cut away;
* large JPEGs are decoded at a reduced DCT scale (``Image.draft``) while the decoded image still has
  at least ``DRAFT_MARGIN`` times the pixels the resize needs, which keeps the tensor within the
  parity tolerance (tests/service/test_preprocess.py measures it on real photos);
* the EXIF orientation is applied to the small crop, not to the whole decoded image: the upright
  crop box is mapped into the stored image (``stored_box``), that region is resampled, and the
  ``crop`` x ``crop`` result is transposed (``_ORIENT``, a numpy view). Nothing copies the whole
  image (``exif_transpose`` copies it even when nothing turns). For orientations 5-8 the pixels
  differ from turning first by rounding only (the resample's two passes swap order).

Everything here is blocking CPU work: callers run it in a worker thread (Pillow and numpy release
the GIL). It lives with the repository format, below the service and the exporter, because both must
compute the same input for a model: the exporter's gates measure what the service will serve. An image
that cannot be used raises ``modelrepo.errors.ImageError``; the service answers it 400 or 413.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from modelrepo.errors import ImageTooLarge, UndecodableImage
from modelrepo.preprocess import Preprocess

# We enforce our own pixel limit (before decoding); Pillow's global one would raise a different error.
Image.MAX_IMAGE_PIXELS = None

DRAFT_MARGIN = 2.0
_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}
Box = tuple[float, float, float, float]

#: EXIF orientation -> the view of a stored HWC array that shows it upright (what exif_transpose applies)
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],  # ROTATE_270 (90° clockwise)
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],  # TRANSVERSE
    8: lambda a: a.transpose(1, 0, 2)[::-1],  # ROTATE_90 (90° counter-clockwise)
}
#: the same as Pillow transposes (``decode``'s whole upright image)
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class Stored(NamedTuple):
    """A decoded image as it is stored (not turned upright yet)."""

    img: Image.Image  # RGB, possibly reduced in the DCT domain
    orientation: int  # EXIF orientation, 1..8
    size: tuple[int, int]  # the full stored size (before any DCT reduction)
    scale: float  # the DCT scale ``img`` was decoded at (1, 1/2, 1/4 or 1/8)


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check the pixel count before anything is decoded."""
    if not data:
        raise UndecodableImage("empty image: the request part or body has no bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise UndecodableImage(
            "cannot identify the image format: send a JPEG, PNG, WebP, BMP or GIF file"
        ) from e
    except (OSError, SyntaxError, ValueError) as e:  # a header Pillow recognises but cannot read
        raise UndecodableImage(f"cannot read the image header (truncated or corrupt?): {e}") from e
    w, h = img.size
    if w * h > max_pixels:
        raise ImageTooLarge(
            f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}: "
            "downscale it before sending (or raise --max-image-pixels)"
        )
    if w < 1 or h < 1:
        raise UndecodableImage(f"image has an empty size {w}x{h}")
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


def _draft(img: Image.Image, pp: Preprocess) -> float:
    """Ask a JPEG for a DCT-reduced decode keeping its shorter side >= DRAFT_MARGIN * resize (EXIF
    rotation does not change the shorter side); the scale it will be decoded at (1.0: full size)."""
    w, h = img.size
    need = DRAFT_MARGIN * pp.resize_shorter
    short = min(w, h)
    if img.format != "JPEG" or short <= need:
        return 1.0
    r = need / short
    drafted = img.draft("RGB", (max(1, int(w * r + 0.999)), max(1, int(h * r + 0.999))))
    # drafted[1]: where the full image lies in the reduced one, (0, 0, w * scale, h * scale)
    return 1.0 if drafted is None else drafted[1][2] / w


def exif_orientation(img: Image.Image) -> int:
    """The orientation ``ImageOps.exif_transpose`` applies: ``getexif()``'s Orientation (Pillow
    falls back to an XMP ``tiff:Orientation`` when EXIF has none); 1 when absent or not 1..8."""
    value = img.getexif().get(ExifTags.Base.Orientation, 1)
    return value if isinstance(value, int) and value in _ORIENT else 1


def decode_stored(data: bytes, pp: Preprocess, max_pixels: int) -> Stored:
    """Decode to RGB as stored (DCT-reduced when that is safe), with its orientation; no whole-image copy."""
    img = open_image(data, max_pixels)
    size = img.size
    try:
        scale = _draft(img, pp)
        img.load()
        orientation = exif_orientation(img)
        return Stored(_to_rgb(img), orientation, size, scale)
    except (OSError, SyntaxError, ValueError) as e:
        raise UndecodableImage(f"image could not be decoded (truncated or corrupt?): {e}") from e


def decode(data: bytes, pp: Preprocess, max_pixels: int) -> Image.Image:
    """Decode to an upright RGB image, reduced in the DCT domain when that is safe (turns the whole
    image: ``preprocess`` turns only its crop)."""
    img, orientation, _, _ = decode_stored(data, pp, max_pixels)
    return img.transpose(_TRANSPOSE[orientation]) if orientation != 1 else img


def resize_geometry(w: int, h: int, pp: Preprocess) -> tuple[int, int, int, int]:
    """torchvision's Resize(shorter)+CenterCrop of a ``w`` x ``h`` image: the resized width and
    height, and the crop's left and top in the resized image."""
    size = pp.resize_shorter
    # torchvision: the shorter side becomes `size`, the longer int(size * long / short).
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    return nw, nh, int(round((nw - pp.crop) / 2.0)), int(round((nh - pp.crop) / 2.0))


def crop_box(w: int, h: int, pp: Preprocess, scale: float = 1.0) -> Box:
    """The region of a ``w`` x ``h`` image that Resize(shorter)+CenterCrop(crop) keeps.

    ``scale``: in the coordinates of that image decoded at a reduced DCT scale. Its size is then
    rounded up to whole pixels (``ceil(w * scale)``), so the box must come from the full size, as
    torchvision computes it on the full image, not from the reduced one (up to half an output pixel
    of shift and a 0.048 mean error on a 2255x1500 photo otherwise).
    """
    nw, nh, left, top = resize_geometry(w, h, pp)
    sx, sy = w / nw * scale, h / nh * scale
    return (left * sx, top * sy, (left + pp.crop) * sx, (top + pp.crop) * sy)


def stored_box(box: Box, orientation: int, w: float, h: float) -> Box:
    """``box`` in the upright image -> the same region in the stored ``w`` x ``h`` image.

    Resampling that region and then transposing the result (``_ORIENT``) equals transposing the
    whole image first and resampling ``box``, without moving the whole image.
    """
    x0, y0, x1, y1 = box
    if orientation == 2:
        return (w - x1, y0, w - x0, y1)
    if orientation == 3:
        return (w - x1, h - y1, w - x0, h - y0)
    if orientation == 4:
        return (x0, h - y1, x1, h - y0)
    if orientation == 5:
        return (y0, x0, y1, x1)
    if orientation == 6:
        return (y0, h - x1, y1, h - x0)
    if orientation == 7:
        return (w - y1, h - x1, w - y0, h - x0)
    if orientation == 8:
        return (w - y1, x0, w - y0, x1)
    return box


def resize_crop(img: Image.Image, pp: Preprocess, box: Box | None = None) -> Image.Image:
    """Resize+CenterCrop of an upright ``img`` (``box``: the region to resample, default ``crop_box``)."""
    if box is None:
        box = crop_box(*img.size, pp)
    resample = _RESAMPLE.get(pp.interpolation, Image.Resampling.BILINEAR)
    return img.resize((pp.crop, pp.crop), resample, box=box)


def upright_crop(stored: Stored, pp: Preprocess) -> np.ndarray:
    """The upright ``(crop, crop, 3)`` uint8 crop (a view: its strides follow the orientation)."""
    img, orientation, (w, h), scale = stored
    upright = (h, w) if orientation >= 5 else (w, h)  # full upright size: the crop box comes from it
    box = stored_box(crop_box(*upright, pp, scale), orientation, w * scale, h * scale)
    return _ORIENT[orientation](np.asarray(resize_crop(img, pp, box)))


class Normalizer:
    """uint8 HWC -> float32 CHW, ``(x/255 - mean)/std`` folded into one multiply-add."""

    def __init__(self, pp: Preprocess) -> None:
        std = np.asarray(pp.std, dtype=np.float32)
        mean = np.asarray(pp.mean, dtype=np.float32)
        self.scale = (1.0 / (255.0 * std)).reshape(3, 1, 1)
        self.shift = (-mean / std).reshape(3, 1, 1)

    def __call__(self, img: Image.Image | np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """``img`` is an RGB image or an ``(h, w, >=3)`` uint8 array (any strides; channels past 3
        are ignored); ``out``, when given, a float32 ``(3, h, w)`` array (e.g. a row of a batch)."""
        arr = img if isinstance(img, np.ndarray) else np.asarray(img, dtype=np.uint8)
        chw = arr[..., :3].transpose(2, 0, 1)
        if out is None:
            out = np.empty(chw.shape, dtype=np.float32)
        elif out.shape != chw.shape or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {chw.shape}, got {out.dtype} {out.shape}")
        np.multiply(chw, self.scale, out=out, casting="unsafe")
        out += self.shift
        return out


def preprocess(
    data: bytes,
    pp: Preprocess,
    max_pixels: int,
    normalizer: Normalizer | None = None,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Image bytes -> float32 ``(3, crop, crop)`` tensor ready for the model.

    ``out``: write the tensor there (a float32 ``(3, crop, crop)`` array, e.g. ``batch[i]``) and return
    it, instead of allocating one.
    """
    small = upright_crop(decode_stored(data, pp, max_pixels), pp)
    return (normalizer or Normalizer(pp))(small, out)


def preprocess_pil(img: Image.Image, pp: Preprocess) -> np.ndarray:
    """Same pipeline for an already-decoded image (calibration sets, tests)."""
    img = ImageOps.exif_transpose(img) or img
    return Normalizer(pp)(resize_crop(_to_rgb(img), pp))
