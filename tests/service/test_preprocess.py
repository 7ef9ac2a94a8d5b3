"""Service preprocessing vs torchvision's reference eval transforms, on real photos.

``preprocess`` turns only the small crop upright (EXIF orientation), never the whole image; the
references turn the whole image with ``ImageOps.exif_transpose`` first, as torchvision users do.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps
from skimage import data as skdata
from torchvision import transforms

from modelrepo.errors import ImageTooLarge, UndecodableImage
from modelrepo.image_preprocess import decode, exif_orientation, preprocess, preprocess_pil
from modelrepo.preprocess import Preprocess

PHOTOS = {"chelsea": skdata.chelsea, "coffee": skdata.coffee, "astronaut": skdata.astronaut, "rocket": skdata.rocket}
IMAGENET = Preprocess()
INCEPTION = Preprocess(resize_shorter=342, crop=299)
#: EXIF orientation -> the transpose that displays the stored image (what exif_transpose applies)
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: ... and the one that undoes it (to store an upright photo under a given orientation)
UNDO = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}

#: native-size photos in the unit tier; 4x-size ones (DCT-scaled decode paths, seconds each) in `make test`
SCALES = [pytest.param(1, id="native"), pytest.param(4, id="large4x", marks=pytest.mark.slow)]


def jpeg(arr: np.ndarray, quality: int = 90, **kw: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality, **kw)
    return buf.getvalue()


def photo(name: str, scale: int = 1) -> np.ndarray:
    arr = PHOTOS[name]()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if scale > 1:  # a large photo exercises the DCT-domain (draft) downscale
        arr = np.asarray(Image.fromarray(arr).resize((arr.shape[1] * scale, arr.shape[0] * scale), Image.BICUBIC))
    return arr


def reference(data: bytes, pp: Preprocess, exif: bool = False) -> torch.Tensor:
    """torchvision on the fully decoded image (upright first when ``exif``)."""
    img = Image.open(io.BytesIO(data))
    if exif:
        img = ImageOps.exif_transpose(img)
    img = img.convert("RGB")
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


def assert_parity(ours_np: np.ndarray, ref: torch.Tensor, model: torch.nn.Module | None = None) -> float:
    ours = torch.from_numpy(ours_np)
    assert ours.shape == ref.shape
    mean_abs = (ours - ref).abs().mean().item()
    assert mean_abs <= 0.01, f"mean |delta| {mean_abs:.4f}"
    if model is not None:
        assert top5(model, ours) == top5(model, ref)
    return mean_abs


@pytest.mark.parametrize("pp", [IMAGENET, INCEPTION], ids=["224", "inception299"])
@pytest.mark.parametrize("name", list(PHOTOS))
@pytest.mark.parametrize("scale", SCALES)
def test_matches_torchvision_reference(name: str, pp: Preprocess, scale: int, model: torch.nn.Module) -> None:
    data = jpeg(photo(name, scale))
    ours = preprocess(data, pp, max_pixels=10**9)
    assert ours.shape == (3, pp.crop, pp.crop)
    assert_parity(ours, reference(data, pp), model if pp is IMAGENET else None)


@pytest.mark.parametrize("pp", [IMAGENET, INCEPTION], ids=["224", "inception299"])
def test_dct_scaled_crop_box_comes_from_the_full_size(pp: Preprocess) -> None:
    # 2255x1500 decodes at 1/2 to 1128x750 (rounded up): a crop box computed on the reduced size
    # instead of the full one was shifted by up to half an output pixel (mean |delta| 0.048).
    data = jpeg(photo("chelsea", 5))
    assert_parity(preprocess(data, pp, max_pixels=10**9), reference(data, pp))


def _stored(orientation: int, scale: int = 1) -> Image.Image:
    """chelsea (landscape: the 90° turns change the crop) stored so that ``orientation`` shows it upright."""
    upright = Image.fromarray(photo("chelsea", scale))
    return upright if orientation == 1 else upright.transpose(TRANSPOSE[UNDO[orientation]])


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("scale", SCALES)
def test_exif_orientation_matches_torchvision_on_the_upright_image(
    orientation: int, scale: int, model: torch.nn.Module
) -> None:
    data = jpeg(np.asarray(_stored(orientation, scale)), exif=_exif(orientation))
    assert exif_orientation(Image.open(io.BytesIO(data))) == orientation
    ours = preprocess(data, IMAGENET, max_pixels=10**9)
    # The same decoded pixels, turned upright before torchvision's transforms (a wrong turn or flip
    # is far outside the tolerance).
    assert_parity(ours, reference(data, IMAGENET, exif=True), model)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
@pytest.mark.parametrize("orientation", [3, 6])
def test_exif_orientation_of_other_formats(fmt: str, orientation: int) -> None:
    buf = io.BytesIO()
    _stored(orientation).save(buf, fmt, exif=_exif(orientation), **({"lossless": True} if fmt == "WEBP" else {}))
    data = buf.getvalue()
    assert_parity(preprocess(data, IMAGENET, max_pixels=10**9), reference(data, IMAGENET, exif=True))


XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="%d"/></rdf:RDF></x:xmpmeta>')
# Big-endian TIFF header, IFD0 with one SHORT Orientation = 8.
BIG_ENDIAN_8 = (b"Exif\x00\x00MM\x00*" + (8).to_bytes(4, "big") + (1).to_bytes(2, "big") + (0x0112).to_bytes(2, "big")
                + (3).to_bytes(2, "big") + (1).to_bytes(4, "big") + b"\x00\x08\x00\x00" + (0).to_bytes(4, "big"))


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        ({"exif": BIG_ENDIAN_8}, 8),
        ({"xmp": XMP % 6}, 6),  # no EXIF orientation: Pillow's getexif (and so exif_transpose) reads XMP
        ({"exif": _exif(3), "xmp": XMP % 6}, 3),  # EXIF wins over XMP
        ({"exif": _exif(9)}, 1),  # out of 1..8: exif_transpose turns nothing
        ({}, 1),
    ],
    ids=["big-endian-exif", "xmp", "exif-over-xmp", "invalid", "none"],
)
def test_orientation_source_and_precedence_match_exif_transpose(kw: dict[str, bytes], expected: int) -> None:
    data = jpeg(skdata.chelsea(), **kw)
    assert exif_orientation(Image.open(io.BytesIO(data))) == expected
    assert_parity(preprocess(data, IMAGENET, 10**9), reference(data, IMAGENET, exif=True))


@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize("scale", SCALES)
def test_preprocess_never_turns_or_copies_the_whole_image(
    orientation: int, scale: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = jpeg(np.asarray(_stored(orientation, scale)), exif=_exif(orientation))
    expected = preprocess(data, IMAGENET, 10**9)

    def whole_image(*args: object, **kw: object) -> None:
        raise AssertionError("turned or copied the whole image")

    for name in ("transpose", "copy"):
        monkeypatch.setattr(Image.Image, name, whole_image)
    monkeypatch.setattr(ImageOps, "exif_transpose", whole_image)
    assert np.array_equal(preprocess(data, IMAGENET, 10**9), expected)


@pytest.mark.parametrize("orientation", [1, 6])
def test_preprocess_pil_agrees_with_preprocess(orientation: int) -> None:
    """export's calibration path (exif_transpose on the whole image) and the service's (turn the crop)."""
    data = jpeg(np.asarray(_stored(orientation)), exif=_exif(orientation))
    ours, pil = preprocess(data, IMAGENET, 10**9), preprocess_pil(Image.open(io.BytesIO(data)), IMAGENET)
    if orientation == 1:
        assert np.array_equal(ours, pil)
    else:  # the resample's two passes run in the other order: rounding only
        assert np.abs(ours - pil).mean() < 0.005


@pytest.mark.parametrize("scale", SCALES)
def test_grayscale_jpeg(scale: int) -> None:
    gray = np.asarray(Image.fromarray(photo("coffee", scale)).convert("L"))
    data = jpeg(gray)
    assert Image.open(io.BytesIO(data)).mode == "L"
    assert_parity(preprocess(data, IMAGENET, 10**9), reference(data, IMAGENET))


@pytest.mark.parametrize("scale", SCALES)
def test_progressive_jpeg(scale: int, model: torch.nn.Module) -> None:
    data = jpeg(photo("astronaut", scale), progressive=True)
    assert Image.open(io.BytesIO(data)).info.get("progressive")
    assert_parity(preprocess(data, IMAGENET, 10**9), reference(data, IMAGENET), model)


@pytest.mark.parametrize("orientation", [1, 6])
def test_cmyk_jpeg(orientation: int) -> None:
    buf = io.BytesIO()
    _stored(orientation).convert("CMYK").save(buf, "JPEG", quality=90, exif=_exif(orientation))
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert_parity(preprocess(data, IMAGENET, 10**9), reference(data, IMAGENET, exif=True))


def test_out_writes_into_a_preallocated_batch() -> None:
    oriented = jpeg(np.asarray(_stored(6)), exif=_exif(6))  # a transposed (non-contiguous) crop
    photos = [jpeg(photo("coffee")), jpeg(photo("astronaut", 4)), _png(photo("chelsea")), oriented]
    batch = np.zeros((len(photos), 3, 224, 224), dtype=np.float32)
    for i, data in enumerate(photos):
        row = preprocess(data, IMAGENET, 10**9, out=batch[i])
        assert np.shares_memory(row, batch[i])
        assert np.array_equal(batch[i], preprocess(data, IMAGENET, 10**9))
    with pytest.raises(ValueError, match="out must be float32"):
        preprocess(photos[0], IMAGENET, 10**9, out=np.zeros((3, 224, 224), dtype=np.float64))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("scale", SCALES)
def test_exif_orientation_is_applied(scale: int) -> None:
    arr = photo("chelsea", scale)  # landscape
    data = jpeg(arr, exif=_exif(6))  # rotate 90° clockwise to display
    img = decode(data, IMAGENET, max_pixels=10**9)
    assert img.mode == "RGB"
    h, w = arr.shape[:2]
    assert img.size == ((h, w) if scale == 1 else (h // 2, w // 2))  # portrait (1804x1200: 1/2 DCT scale)


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
    with pytest.raises(UndecodableImage, match="empty"):
        preprocess(b"", IMAGENET, max_pixels=10**9)
    with pytest.raises(UndecodableImage, match="identify"):
        preprocess(b"not an image at all", IMAGENET, max_pixels=10**9)
    with pytest.raises(UndecodableImage):
        preprocess(b"\xff\xd8\xff" + b"x" * 100, IMAGENET, max_pixels=10**9)  # JPEG magic only


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("progressive", [False, True], ids=["baseline", "progressive"])
def test_truncated_jpeg_is_bad_image(scale: int, progressive: bool) -> None:
    data = jpeg(photo("chelsea", scale), progressive=progressive)
    for cut in (len(data) // 2, len(data) - 10):
        with pytest.raises(UndecodableImage, match="truncated or corrupt"):
            preprocess(data[:cut], IMAGENET, max_pixels=10**9)


def test_pixel_limit_checked_before_decoding() -> None:
    # A 20000x20000 PNG of zeros compresses to a few hundred KB: a decompression bomb.
    big = Image.new("L", (20000, 20000))
    buf = io.BytesIO()
    big.save(buf, "PNG")
    with pytest.raises(ImageTooLarge, match="pixels"):
        decode(buf.getvalue(), IMAGENET, max_pixels=40_000_000)
    with pytest.raises(ImageTooLarge, match="pixels"):
        preprocess(buf.getvalue(), IMAGENET, max_pixels=40_000_000)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header claims ``width`` x ``height`` (a JPEG decompression bomb)."""
    data = bytearray(jpeg(skdata.chelsea()))
    sof = data.index(b"\xff\xc0")  # baseline frame header: length, precision, height, width
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_jpeg_pixel_limit_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = jpeg_claiming(60000, 60000)

    def no_decoding(*args: object, **kw: object) -> None:
        raise AssertionError("decoded an image over the pixel limit")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)  # what JpegImageFile.load is
    with pytest.raises(ImageTooLarge, match="60000x60000 = 3600000000 pixels"):
        preprocess(data, IMAGENET, max_pixels=40_000_000)
