"""Service preprocessing vs torchvision's reference eval transforms, on real photos."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from torchvision import transforms

from service.errors import BadImage, PayloadTooLarge
from service.preprocess import decode, preprocess
from service.repository import Preprocess

PHOTOS = {"chelsea": skdata.chelsea, "coffee": skdata.coffee, "astronaut": skdata.astronaut, "rocket": skdata.rocket}
IMAGENET = Preprocess()
INCEPTION = Preprocess(resize_shorter=342, crop=299)


def jpeg(arr: np.ndarray, quality: int = 90, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def reference(data: bytes, pp: Preprocess) -> torch.Tensor:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    t = transforms.Compose([
        transforms.Resize(pp.resize_shorter),
        transforms.CenterCrop(pp.crop),
        transforms.ToTensor(),
        transforms.Normalize(pp.mean, pp.std),
    ])
    return t(img)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def top5(model: torch.nn.Module, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        return model(x[None]).topk(5).indices[0].tolist()


@pytest.mark.parametrize("pp", [IMAGENET, INCEPTION], ids=["224", "inception299"])
@pytest.mark.parametrize("name", list(PHOTOS))
@pytest.mark.parametrize("scale", [1, 4], ids=["native", "large4x"])
def test_matches_torchvision_reference(name: str, pp: Preprocess, scale: int, model: torch.nn.Module) -> None:
    arr = PHOTOS[name]()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if scale > 1:  # a large photo exercises the DCT-domain (draft) downscale
        arr = np.asarray(Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.BICUBIC))
    data = jpeg(arr)
    ours = torch.from_numpy(preprocess(data, pp, max_pixels=10**9))
    ref = reference(data, pp)
    assert ours.shape == ref.shape == (3, pp.crop, pp.crop)
    mean_abs = (ours - ref).abs().mean().item()
    assert mean_abs <= 0.01, f"mean |delta| {mean_abs:.4f}"
    if pp is IMAGENET:
        assert top5(model, ours) == top5(model, ref)


def test_exif_orientation_is_applied() -> None:
    arr = skdata.chelsea()  # 300x451, landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = jpeg(arr, exif=exif.tobytes())
    img = decode(data, IMAGENET, max_pixels=10**9)
    assert img.size == (arr.shape[0], arr.shape[1])  # portrait after transpose


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1"])
def test_image_modes_become_rgb(mode: str) -> None:
    base = Image.fromarray(skdata.coffee())
    if mode == "I;16":
        arr16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
        img = Image.fromarray(arr16)
        fmt = "PNG"
    else:
        img = base.convert(mode)
        fmt = "JPEG" if mode in ("L", "CMYK") else "PNG"
    buf = io.BytesIO()
    img.save(buf, fmt)
    x = preprocess(buf.getvalue(), IMAGENET, max_pixels=10**9)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and np.isfinite(x).all()
    if mode == "I;16":  # 16-bit is scaled, not clipped: same as the 8-bit grayscale image
        gray = io.BytesIO()
        base.convert("L").save(gray, "PNG")
        assert np.abs(x - preprocess(gray.getvalue(), IMAGENET, max_pixels=10**9)).max() < 0.05


def test_gif_first_frame_and_webp_bmp() -> None:
    base = Image.fromarray(skdata.astronaut())
    for fmt in ("GIF", "WEBP", "BMP"):
        buf = io.BytesIO()
        if fmt == "GIF":
            frames = [base, base.transpose(Image.FLIP_LEFT_RIGHT)]
            frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
        else:
            base.save(buf, fmt)
        assert preprocess(buf.getvalue(), IMAGENET, max_pixels=10**9).shape == (3, 224, 224)


def test_bad_inputs() -> None:
    with pytest.raises(BadImage, match="empty"):
        preprocess(b"", IMAGENET, max_pixels=10**9)
    with pytest.raises(BadImage, match="identify"):
        preprocess(b"not an image at all", IMAGENET, max_pixels=10**9)
    data = jpeg(skdata.chelsea())
    with pytest.raises(BadImage, match="decoded"):
        preprocess(data[: len(data) // 2], IMAGENET, max_pixels=10**9)


def test_pixel_limit_checked_before_decoding() -> None:
    # A 20000x20000 PNG of zeros compresses to a few hundred KB: a decompression bomb.
    big = Image.new("L", (20000, 20000))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    with pytest.raises(PayloadTooLarge, match="pixels"):
        decode(buf.getvalue(), IMAGENET, max_pixels=40_000_000)
