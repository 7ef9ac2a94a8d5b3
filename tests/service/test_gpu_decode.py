"""The device-side JPEG pipeline (service.engine.gpu_decode) against the Pillow path, on the CPU (torchvision's
libjpeg-turbo decoder) everywhere and on a CUDA GPU (nvJPEG) where there is one."""

from __future__ import annotations

import io
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from modelrepo.errors import ImageTooLarge, UndecodableImage
from modelrepo.image_preprocess import Normalizer, preprocess
from modelrepo.preprocess import Preprocess
from service.engine.gpu_decode import JpegDecoder, JpegPayload

PP = Preprocess.from_params({}, [3, 224, 224])
MAX_PIXELS = 40_000_000
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG decode)")])]


def cpu_pre() -> partial[np.ndarray]:
    return partial(preprocess, pp=PP, max_pixels=MAX_PIXELS, normalizer=Normalizer(PP))


def jpeg(arr: np.ndarray, orientation: int = 1, quality: int = 90) -> bytes:
    img = Image.fromarray(arr)
    buf = io.BytesIO()
    if orientation != 1:
        exif = img.getexif()
        exif[0x0112] = orientation
        img.save(buf, "JPEG", quality=quality, exif=exif)
    else:
        img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def photos() -> dict[str, bytes]:
    out = {name: jpeg(getattr(skdata, name)()) for name in ("chelsea", "coffee", "astronaut", "rocket")}
    out["camera-gray"] = jpeg(skdata.camera())  # an L-mode JPEG: decoded to RGB
    big = np.asarray(Image.fromarray(skdata.astronaut()).resize((2048, 2048)))
    out["astronaut-2048"] = jpeg(big)  # the CPU path decodes this at a reduced DCT scale
    for o in range(2, 9):
        out[f"chelsea-exif{o}"] = jpeg(skdata.chelsea(), orientation=o)
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_device_decode_matches_the_pillow_path(device: str) -> None:
    """Every photo (all 8 EXIF orientations, grayscale, a large one): mean |d| of the model input <= 0.01."""
    pre = cpu_pre()
    dec = JpegDecoder(PP, MAX_PIXELS, pre)
    imgs = photos()
    payloads = [dec.pre(b) for b in imgs.values()]
    assert all(isinstance(p, JpegPayload) for p in payloads)
    out, failed = dec.collate(payloads, torch.device(device), torch.float32)
    assert not failed and tuple(out.shape) == (len(imgs), 3, 224, 224)
    for row, (name, data) in zip(out.cpu().numpy(), imgs.items(), strict=True):
        diff = np.abs(row - pre(data))
        assert diff.mean() <= 0.01, f"{name}: mean |d| {diff.mean():.4f}"
        assert diff.max() < 0.5, f"{name}: max |d| {diff.max():.3f} (misaligned crop or orientation?)"


@pytest.mark.parametrize("device", DEVICES)
def test_a_jpeg_no_decoder_reads_fails_alone_and_the_batch_goes_on(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch decode fails -> each image alone -> Pillow: only the one nothing decodes fails."""
    import service.engine.gpu_decode as gd

    real = gd.decode_jpeg
    broken = b"\xff\xd8\xff\xd9"  # SOI, EOI and nothing between: no decoder makes an image of it

    def decode(data, **kw):  # type: ignore[no-untyped-def]
        if isinstance(data, list) and len(data) > 1:
            raise RuntimeError("one image in the batch is corrupt")
        if data.numel() == len(broken):
            raise RuntimeError("corrupt JPEG data")
        return real(data, **kw)

    monkeypatch.setattr(gd, "decode_jpeg", decode)
    dec = JpegDecoder(PP, MAX_PIXELS, cpu_pre())
    good = jpeg(skdata.coffee())
    payloads = [dec.pre(good), JpegPayload(broken, 1, (451, 300)), dec.pre(good)]
    dtype = torch.float16 if device == "cuda" else torch.bfloat16
    out, failed = dec.collate(payloads, torch.device(device), dtype)
    assert list(failed) == [1] and isinstance(failed[1], UndecodableImage)
    assert out.shape[0] == 2 and out.dtype == dtype  # the model's dtype, written in place
    assert torch.equal(out[0], out[1])


def test_a_truncated_jpeg_is_refused_before_the_batch() -> None:
    dec = JpegDecoder(PP, MAX_PIXELS, cpu_pre())
    good = jpeg(skdata.coffee())
    with pytest.raises(UndecodableImage, match="truncated"):
        dec.pre(good[:3000])  # no EOI: Pillow decides (and refuses), never a grey-filled decode


def test_other_formats_and_bad_headers_take_the_cpu_path() -> None:
    pre = cpu_pre()
    dec = JpegDecoder(PP, MAX_PIXELS, pre)
    buf = io.BytesIO()
    Image.fromarray(skdata.coffee()).save(buf, "PNG")
    png = dec.pre(buf.getvalue())
    assert isinstance(png, np.ndarray) and np.array_equal(png, pre(buf.getvalue()))
    cmyk = io.BytesIO()
    Image.fromarray(skdata.coffee()).convert("CMYK").save(cmyk, "JPEG")
    assert isinstance(dec.pre(cmyk.getvalue()), np.ndarray)  # nvJPEG's RGB output does not cover CMYK
    with pytest.raises(UndecodableImage):
        dec.pre(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(UndecodableImage):
        dec.pre(b"")
    small = JpegDecoder(PP, 1000, pre)
    with pytest.raises(ImageTooLarge):
        small.pre(jpeg(skdata.coffee()))  # the pixel limit holds before anything is decoded


def test_host_payloads_join_a_device_batch_in_order() -> None:
    """KServe v2 tensors and PNGs arrive as arrays: they keep their place among decoded JPEGs."""
    pre = cpu_pre()
    dec = JpegDecoder(PP, MAX_PIXELS, pre)
    a, b = jpeg(skdata.chelsea()), jpeg(skdata.coffee())
    arr = pre(b)
    out, failed = dec.collate([dec.pre(a), arr, dec.pre(b)], torch.device("cpu"), torch.float32)
    assert not failed
    assert np.array_equal(out[1].numpy(), arr)
    assert np.abs(out[2].numpy() - arr).mean() <= 0.01
