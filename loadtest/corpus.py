"""What locust users post: real photos at several sizes and formats, and invalid bodies with their documented 4xx.

The photos are scikit-image's samples (they ship with it, no network), encoded as a small JPEG, the
original-size JPEG, a large JPEG, a PNG and a WebP; or every image in a folder the user names
(``--images DIR``), posted as they are. Invalid bodies: bytes that are no image (400 ``bad_image``)
and a body of an unsupported media type (415 ``unsupported_media_type``).
"""

from __future__ import annotations

import io
import mimetypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")
#: (label, longer side in pixels or 0 for the original, Pillow format, Content-Type)
VARIANTS = (
    ("jpeg small", 160, "JPEG", "image/jpeg"),
    ("jpeg medium", 0, "JPEG", "image/jpeg"),
    ("jpeg large", 2048, "JPEG", "image/jpeg"),
    ("png", 0, "PNG", "image/png"),
    ("webp", 0, "WEBP", "image/webp"),
)
IMAGE_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
               ".bmp": "image/bmp", ".gif": "image/gif"}


@dataclass(frozen=True)
class Body:
    """One thing to post: the bytes, their Content-Type, and the status the service must answer."""

    name: str
    data: bytes
    ctype: str
    expect: int = 200
    code: str = ""  # the documented error code when ``expect`` is a 4xx
    kind: str = ""  # what the statistics call it: "jpeg small", "png", "invalid", ...


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt in ("JPEG", "WEBP") else {}))
    return buf.getvalue()


def _resized(img: Image.Image, longer: int) -> Image.Image:
    if not longer:
        return img
    scale = longer / max(img.size)
    return img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)


def sample_photos() -> list[Body]:
    """scikit-image's sample photos in every variant of ``VARIANTS`` (20 bodies, 5 KB to ~700 KB)."""
    from skimage import data

    out: list[Body] = []
    for sample in SAMPLES:
        img = Image.fromarray(np.asarray(getattr(data, sample)(), dtype=np.uint8)).convert("RGB")
        for label, longer, fmt, ctype in VARIANTS:
            ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
            body = _encode(_resized(img, longer), fmt)
            out.append(Body(f"{sample}-{label.split()[-1]}.{ext}", body, ctype, kind=label))
    return out


def folder_photos(folder: Path) -> list[Body]:
    """Every image file in ``folder`` (recursively), posted as it is with the type its suffix names."""
    out = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        ctype = IMAGE_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or ""
        if ctype.startswith("image/"):
            out.append(Body(path.name, path.read_bytes(), ctype, kind=ctype.split("/")[1]))
    if not out:
        raise SystemExit(f"--images {folder}: no .jpg/.png/.webp/.bmp/.gif file in it")
    return out


def invalid_bodies() -> list[Body]:
    """Requests the service must refuse with a documented 4xx, which then count as correct answers."""
    return [
        Body("not-an-image.jpg", b"this is not a JPEG" * 8, "image/jpeg", 400, "bad_image", "invalid"),
        Body("notes.txt", b"plain text, not an image", "text/plain", 415, "unsupported_media_type", "invalid"),
    ]


def photos(folder: str | None) -> list[Body]:
    return folder_photos(Path(folder)) if folder else sample_photos()
