"""The accuracy suite's labelled photos (all shipped by installed packages) and their decode-stress variants.

Each photo's expected classes were decided by looking at the photo and at what the service's centre crop
keeps, then checked against EfficientNet-Lite0's output: a hit is one of them in the top ``k``. Four photos
those packages ship are left out on purpose, because no ImageNet-1k class fits them: scikit-image's
``astronaut`` (no space-suit class; it is a default INT8 calibration photo instead), darknet's ``horses``
(ImageNet's only horse is ``sorrel``, a chestnut; these are white, grey and dark), ``person`` (a woman and a
white pony; the dog is cut off by the crop) and ``scream`` (a painting).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

DARKNET_DIRS = (Path("/usr/share/darknet/data"), Path.home() / ".cache" / "imgserve" / "darknet")
DARKNET_HINT = ("Debian's darknet photos are not installed: `make photos` unpacks them (the darknet package's "
                "data only) into ~/.cache/imgserve/darknet, or apt-get install darknet")
DOGS = tuple(range(151, 269))  # ImageNet-1k's dog breeds, Chihuahua .. Mexican hairless
CATS = ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")


@dataclass(frozen=True)
class Photo:
    name: str
    source: str  # skimage | matplotlib | darknet
    file: str  # the file in that package's data folder
    shows: str  # what the photo (its centre crop) shows
    expected: tuple[str | int, ...]  # ImageNet class names (torchvision's) or indices
    k: int = 1  # a hit: one of ``expected`` in the top k
    truth: str | None = None  # the one class for a top-1 ImageFolder (None: several are as right)


PHOTOS = (
    Photo("chelsea", "skimage", "chelsea.png", "a tabby cat's face, close up", CATS, truth="tabby"),
    Photo("coffee", "skimage", "coffee.png", "a cup of espresso on a saucer, from above",
          ("espresso", "cup", "coffee mug"), truth="espresso"),
    Photo("camera", "skimage", "camera.png", "a man behind a camera on a tripod (grayscale)", ("tripod",),
          truth="tripod"),
    Photo("rocket", "skimage", "rocket.jpg", "a rocket on its launch pad at night",
          ("missile", "projectile", "space shuttle"), truth="missile"),
    Photo("motorcycle", "skimage", "motorcycle_left.png", "a red motorcycle in a garage (ImageNet has no "
          "motorcycle class: moped and motor scooter are the nearest)", ("moped", "motor scooter"), truth="moped"),
    Photo("grace_hopper", "matplotlib", "grace_hopper.jpg", "Grace Hopper in US Navy uniform, a portrait",
          ("military uniform",), k=5, truth="military uniform"),
    Photo("dog", "darknet", "dog.jpg", "a dog sitting before a bicycle on a porch", DOGS),
    Photo("eagle", "darknet", "eagle.jpg", "a juvenile (brown) bald eagle on a shore; models often rank kite, "
          "the bird of prey, first", ("bald eagle",), k=3, truth="bald eagle"),
    Photo("giraffe", "darknet", "giraffe.jpg", "a giraffe and a zebra in a clearing (ImageNet has no giraffe)",
          ("zebra",), truth="zebra"),
    Photo("kite", "darknet", "kite.jpg", "people flying kites over a beach (ImageNet's kite is the bird)",
          ("seashore", "sandbar", "lakeside", "parachute"), truth="seashore"),
)


def darknet_dir() -> Path | None:
    return next((d for d in DARKNET_DIRS if (d / "dog.jpg").is_file()), None)


def source_dir(source: str) -> Path | None:
    """The folder a photo source keeps its files in (None: not installed here)."""
    if source == "darknet":
        return darknet_dir()
    if source == "skimage":
        import skimage

        return Path(skimage.__file__).parent / "data"
    if source == "matplotlib":
        import matplotlib

        return Path(matplotlib.get_data_path()) / "sample_data"
    raise ValueError(source)


def available() -> tuple[list[Photo], list[str]]:
    """The photos found here, and why the others are missing."""
    found, missing = [], []
    for p in PHOTOS:
        d = source_dir(p.source)
        if d is not None and (d / p.file).is_file():
            found.append(p)
        else:
            missing.append(f"{p.name}: {DARKNET_HINT if p.source == 'darknet' else p.source + ' lacks ' + p.file}")
    return found, missing


def photo_bytes(p: Photo) -> bytes:
    """The file as the package ships it (sent to the service unchanged)."""
    d = source_dir(p.source)
    assert d is not None, DARKNET_HINT
    return (d / p.file).read_bytes()


def expected_indices(p: Photo, categories: list[str]) -> set[int]:
    out = set()
    for e in p.expected:
        if isinstance(e, int):
            out.add(e)
        else:
            hits = [i for i, c in enumerate(categories) if c == e]
            assert len(hits) == 1, f"{p.name}: {e!r} names {len(hits)} ImageNet classes"
            out.add(hits[0])
    return out


# --- decode-stress variants: each made from a photo and expected to be classified like it ---------------------


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


#: EXIF orientation -> what to do to the upright pixels so that applying the orientation gives them back
_STORE = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90,
          7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def exif_oriented(img: Image.Image, orientation: int) -> bytes:
    """A JPEG storing ``img`` turned so that a viewer honouring EXIF ``orientation`` shows it upright."""
    op = _STORE[orientation]
    stored = img.transpose(op) if op is not None else img
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(stored, "JPEG", quality=92, exif=exif.tobytes())


def _rgba(img: Image.Image) -> bytes:
    rgba = img.convert("RGBA")
    alpha = np.linspace(64, 255, rgba.width, dtype=np.uint8)[None, :].repeat(rgba.height, 0)
    rgba.putalpha(Image.fromarray(alpha))  # the colour channels stay: the service drops alpha
    return _save(rgba, "PNG")


def _gray16(img: Image.Image) -> bytes:
    gray = np.asarray(img.convert("L"), dtype=np.uint16) * 257  # 0..255 -> 0..65535
    return _save(Image.fromarray(gray), "PNG")  # mode I;16


def _large(img: Image.Image) -> bytes:
    w, h = img.size
    return _save(img.resize((4000, round(4000 * h / w)), Image.Resampling.BICUBIC), "JPEG", quality=90)


#: variant -> (the photo it is made from, how)
VARIANTS: dict[str, tuple[str, Callable[[Image.Image], bytes]]] = {
    **{f"exif-{o}": ("chelsea", lambda im, o=o: exif_oriented(im, o)) for o in range(1, 9)},  # type: ignore[misc]
    "cmyk-jpeg": ("coffee", lambda im: _save(im.convert("CMYK"), "JPEG", quality=92)),
    "palette-png": ("chelsea", lambda im: _save(im.quantize(256), "PNG")),
    "rgba-png": ("coffee", _rgba),
    "gray16-png": ("camera", _gray16),
    "grayscale-jpeg": ("rocket", lambda im: _save(im.convert("L"), "JPEG", quality=92)),
    "webp": ("motorcycle", lambda im: _save(im, "WEBP", quality=90)),
    "progressive-jpeg": ("coffee", lambda im: _save(im, "JPEG", quality=90, progressive=True)),
    "4000px-jpeg": ("coffee", _large),
}


@cache
def variant_bytes(name: str) -> bytes:
    base, make = VARIANTS[name]
    photo = next(p for p in PHOTOS if p.name == base)
    with Image.open(io.BytesIO(photo_bytes(photo))) as im:
        return make(im.convert("RGB"))


def write_image_folder(dest: Path, photos: list[Photo]) -> Path:
    """An ImageFolder of the photos that have one right class (``truth``), named by class name."""
    for p in photos:
        if p.truth is None:
            continue
        folder = dest / p.truth.replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{p.name}{os.path.splitext(p.file)[1]}").write_bytes(photo_bytes(p))
    return dest
