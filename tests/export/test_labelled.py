"""Labelled sets for export.evaluate and --eval-dir: ImageFolder and CSV layouts, label resolution, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from export.errors import ExportError
from export.labelled import LabelResolver, read_labelled
from export.models import imagenet_categories

CUSTOM = ["cat", "dog", "sea lion"]


def _img(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


@pytest.fixture(scope="module")
def imagenet() -> LabelResolver:
    return LabelResolver(imagenet_categories(), imagenet=True)


def test_imagenet_labels_by_wordnet_id_name_underscores_and_index(imagenet: LabelResolver) -> None:
    assert imagenet.resolve("n02123045") == 281  # tabby
    assert imagenet.resolve("tabby") == imagenet.resolve("Tabby") == 281
    assert imagenet.resolve("tiger_cat") == imagenet.resolve("tiger cat") == 282
    assert imagenet.resolve("967") == 967
    assert "past the model's 1000 classes" in str(imagenet.resolve("1000"))
    assert "not one of ImageNet-1k's" in str(imagenet.resolve("n99999999"))
    assert imagenet.resolve("crane") == 517 and imagenet.resolve("crane_bird") == 134  # torchvision's names


def test_a_name_two_classes_share_needs_the_index() -> None:
    r = LabelResolver(["Cat", "cat", "dog"], imagenet=False)
    assert r.resolve("cat") == "a name 2 classes share (index 0, index 1): use the index"
    assert r.resolve("1") == 1


def test_a_custom_model_takes_its_own_names_not_wordnet_ids() -> None:
    r = LabelResolver(CUSTOM, imagenet=False)
    assert r.resolve("sea_lion") == 2 and r.resolve("DOG") == 1
    assert "labels are not ImageNet-1k's" in str(r.resolve("n02123045"))


def test_image_folder_with_nested_files(tmp_path: Path) -> None:
    _img(tmp_path / "cat" / "a.jpg")
    _img(tmp_path / "cat" / "more" / "b.png")
    _img(tmp_path / "sea_lion" / "c.webp")
    (tmp_path / "dog").mkdir()  # an empty class folder is fine
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = read_labelled(tmp_path, CUSTOM, imagenet=False)
    assert [(e.path.name, e.label) for e in data.examples] == [("a.jpg", 0), ("b.png", 0), ("c.webp", 2)]
    assert data.classes == 2


def test_csv_with_header_comments_and_mixed_labels(tmp_path: Path) -> None:
    _img(tmp_path / "imgs" / "1.jpg")
    _img(tmp_path / "imgs" / "2.jpg")
    csv = tmp_path / "val.csv"
    csv.write_text("file,label\n# a comment\nimgs/1.jpg,n02123045\nimgs/2.jpg,  967\n")
    data = read_labelled(csv, imagenet_categories(), imagenet=True)
    assert [e.label for e in data.examples] == [281, 967]


@pytest.mark.parametrize(("layout", "message"), [
    ("empty", "holds no labelled images"),
    ("loose", "has images directly in it"),
    ("unknown", "2 unknown label(s): 'fish': not a class of the model; 'kitten': not a class of the model"),
    ("missing-file", "1 listed file(s) do not exist"),
    ("bad-row", "expected 2 columns file,label"),
    ("not-csv", "is a file but not a .csv"),
    ("absent", "does not exist"),
])
def test_bad_labelled_sets_are_clear_errors(tmp_path: Path, layout: str, message: str) -> None:
    src = tmp_path / "data"
    if layout == "empty":
        (src / "cat").mkdir(parents=True)
    elif layout == "loose":
        _img(src / "x.jpg")
    elif layout == "unknown":
        _img(src / "cat" / "a.jpg")
        _img(src / "kitten" / "b.jpg")
        _img(src / "fish" / "c.jpg")
    elif layout in ("missing-file", "bad-row"):
        _img(tmp_path / "a.jpg")
        src = tmp_path / "val.csv"
        src.write_text("a.jpg,cat\nb.jpg,dog\n" if layout == "missing-file" else "a.jpg,cat,extra\n")
    elif layout == "not-csv":
        src = _img(tmp_path / "a.jpg")
    with pytest.raises(ExportError) as e:
        read_labelled(src, CUSTOM, imagenet=False)
    assert message in str(e.value)
