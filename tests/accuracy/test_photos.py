"""The labelled photos themselves: sources, calibration kept apart, EXIF variants, labels, normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from export import images
from export.labelled import imagenet_wnids
from export.models import imagenet_categories
from tests.accuracy import photos as P


def _thumb(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)


def test_every_expected_class_is_an_imagenet_class() -> None:
    categories = imagenet_categories()
    for p in P.PHOTOS:
        got = P.expected_indices(p, categories)
        assert got and all(0 <= i < 1000 for i in got), p.name
        if p.truth is not None:
            assert categories.index(p.truth) in got, f"{p.name}: its one class {p.truth!r} is not expected"


def test_photos_from_python_packages_are_always_there(found: list[P.Photo]) -> None:
    names = {p.name for p in found}
    assert {p.name for p in P.PHOTOS if p.source != "darknet"} <= names
    if P.darknet_dir() is None:
        pytest.skip(P.DARKNET_HINT)
    assert names == {p.name for p in P.PHOTOS}


def test_no_calibration_photo_is_a_test_photo(found: list[P.Photo]) -> None:
    """INT8 calibration (the exporter's default) never sees a photo the suite measures accuracy on."""
    tests = {p.name: _thumb(Image.open(io.BytesIO(P.photo_bytes(p)))) for p in found}
    calibration = images.calibration_photos()
    assert len(calibration) == len(images.CALIBRATION_SKIMAGE) + len(images.CALIBRATION_SKLEARN)
    for c in calibration:
        t = _thumb(c)
        nearest = min(tests, key=lambda n: float(np.abs(tests[n] - t).mean()))
        assert float(np.abs(tests[nearest] - t).mean()) > 8, f"a calibration photo looks like {nearest}"
    assert not {p.name for p in P.PHOTOS} & set(images.CALIBRATION_SKIMAGE)
    # the comparison does tell a test photo from the others: the same photo re-encoded is found
    chelsea = Image.open(io.BytesIO(P.photo_bytes(P.PHOTOS[0])))
    assert float(np.abs(_thumb(Image.open(io.BytesIO(P.variant_bytes("exif-1")))) - _thumb(chelsea)).mean()) < 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_variants_show_the_photo_upright(orientation: int) -> None:
    base = Image.open(io.BytesIO(P.photo_bytes(P.PHOTOS[0]))).convert("RGB")
    stored = Image.open(io.BytesIO(P.variant_bytes(f"exif-{orientation}")))
    assert stored.getexif()[0x0112] == orientation
    upright = ImageOps.exif_transpose(stored)
    assert upright.size == base.size
    assert float(np.abs(np.asarray(upright, np.float32) - np.asarray(base, np.float32)).mean()) < 3  # JPEG noise
    if orientation != 1:  # the pixels as stored are not upright: a decoder ignoring EXIF shows another picture
        assert stored.size != base.size or float(np.abs(np.asarray(stored.convert("RGB"), np.float32)
                                                        - np.asarray(base, np.float32)).mean()) > 10


def test_decode_variants_have_the_modes_they_stress() -> None:
    modes = {v: Image.open(io.BytesIO(P.variant_bytes(v))) for v in P.VARIANTS}
    assert modes["cmyk-jpeg"].mode == "CMYK" and modes["palette-png"].mode == "P"
    assert modes["rgba-png"].mode == "RGBA" and modes["gray16-png"].mode.startswith("I")
    assert modes["grayscale-jpeg"].mode == "L" and modes["webp"].format == "WEBP"
    assert modes["progressive-jpeg"].info.get("progressive") and max(modes["4000px-jpeg"].size) == 4000


def test_wordnet_ids_follow_torchvision_class_order() -> None:
    """export.evaluate maps WordNet-id folders through timm's list: it must be torchvision's order."""
    wnids, names = imagenet_wnids(), imagenet_categories()
    known = {"n01440764": "tench", "n02123045": "tabby", "n02124075": "Egyptian cat", "n02109961": "Eskimo dog",
             "n03792782": "mountain bike", "n04592741": "wing", "n07920052": "espresso", "n15075141": "toilet tissue"}
    for wnid, name in known.items():
        assert names[wnids.index(wnid)] == name
    assert wnids == sorted(wnids)  # ImageNet's class order is the sorted WordNet ids


@pytest.mark.slow
def test_tf_normalisation_is_the_more_confident_on_expected_classes(found: list[P.Photo]) -> None:
    """The measurement behind EfficientNet-Lite's preprocess.mean/std (export/packaged.py)."""
    import torch

    from export.models import load_model
    from modelrepo.image_preprocess import preprocess
    from modelrepo.preprocess import Preprocess

    loaded = load_model("efficientnet_lite0", "DEFAULT")
    tf = loaded.preprocess
    assert (tf.mean, tf.std) == (tuple([127 / 255] * 3), tuple([128 / 255] * 3))
    imagenet = Preprocess(tf.resize_shorter, tf.crop, interpolation=tf.interpolation)
    categories, mass = imagenet_categories(), {}
    for name, pp in (("tf", tf), ("imagenet", imagenet)):
        x = torch.from_numpy(np.stack([preprocess(P.photo_bytes(p), pp, 10**8) for p in found]))
        with torch.no_grad():
            prob = torch.softmax(loaded.model(x), 1).numpy()
        expected = [sorted(P.expected_indices(p, categories)) for p in found]
        mass[name] = float(np.mean([row[e].sum() for row, e in zip(prob, expected, strict=True)]))
        hits = [bool(set(np.argsort(-row)[: p.k]) & set(e)) for row, p, e in zip(prob, found, expected, strict=True)]
        if name == "tf":
            assert all(hits), [p.name for p, h in zip(found, hits, strict=True) if not h]
    print(f"mean probability of the expected classes: (x-127)/128 {mass['tf']:.3f}, ImageNet mean/std "
          f"{mass['imagenet']:.3f} ({len(found)} photos)")
    assert mass["tf"] > mass["imagenet"] + 0.03
