"""Labelled image sets: what ``python -m export.evaluate`` and the ``--eval-dir`` gate measure accuracy on.

Two layouts, as users keep their validation data:

* ImageFolder: ``DIR/<class>/<image>``, one folder per class (nested folders below it are searched too);
* CSV: rows of ``file,label`` (an optional ``file,label`` header), each file relative to the CSV's folder.

A label is a WordNet id (``n02123045``; ImageNet-1k models only: the order is timm's
``imagenet_synsets.txt``, the same sorted order as torchvision's category names), a class name from the
model's ``labels.txt`` (compared without case, ``_`` read as a space: ``tiger_cat`` is ``tiger cat``), or
a class index. A name that two classes share must be given by id or index (torchvision's ImageNet names
are unique: ``crane`` is the machine, ``crane bird`` the bird).
"""

from __future__ import annotations

import csv
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

from export.errors import ExportError
from export.images import IMAGE_SUFFIXES

WNID_RE = re.compile(r"n\d{8}")
SHOWN = 5  # unknown labels listed in one error


@dataclass(frozen=True)
class Example:
    path: Path
    label: int  # class index in the model's logits


@dataclass(frozen=True)
class LabelledSet:
    source: Path  # the folder or the CSV file
    examples: list[Example]

    @property
    def classes(self) -> int:
        return len({e.label for e in self.examples})


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in logit order (timm ships them; read without importing timm)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ExportError("WordNet ids need timm's list of ImageNet synsets: pip install timm (the export extra), "
                          "or name the class folders by class name")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info" / "imagenet_synsets.txt"
    wnids = path.read_text().split()
    if len(wnids) != 1000:
        raise ExportError(f"{path} lists {len(wnids)} WordNet ids, not ImageNet-1k's 1000")
    return wnids


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


class LabelResolver:
    """Turns a folder name or CSV label into the model's class index."""

    def __init__(self, labels: list[str], imagenet: bool) -> None:
        self.labels = labels
        self.by_name: dict[str, list[int]] = {}
        for i, name in enumerate(labels):
            self.by_name.setdefault(_norm(name), []).append(i)
        self.imagenet = imagenet
        self._wnids: dict[str, int] | None = None

    def wnids(self) -> dict[str, int]:
        if self._wnids is None:
            self._wnids = {w: i for i, w in enumerate(imagenet_wnids())} if self.imagenet else {}
        return self._wnids

    def resolve(self, raw: str) -> int | str:
        """The class index, or why ``raw`` names none (a sentence for the error)."""
        text = raw.strip()
        if text.isdigit():
            i = int(text)
            return i if i < len(self.labels) else f"index {i} is past the model's {len(self.labels)} classes"
        if WNID_RE.fullmatch(text) and _norm(text) not in self.by_name:
            if not self.imagenet:
                return "a WordNet id, but the model's labels are not ImageNet-1k's (use its class names)"
            return self.wnids().get(text, "a WordNet id that is not one of ImageNet-1k's 1000")
        hits = self.by_name.get(_norm(text), [])
        if len(hits) == 1:
            return hits[0]
        if hits:
            ids = ", ".join(self._describe(i) for i in hits)
            by = "the WordNet id or the index" if self.imagenet else "the index"
            return f"a name {len(hits)} classes share ({ids}): use {by}"
        return "not a class of the model"

    def _describe(self, i: int) -> str:
        wnids = self.wnids()
        wnid = next((w for w, j in wnids.items() if j == i), None)
        return f"{wnid} = index {i}" if wnid else f"index {i}"


def _images_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _raise_unknown(unknown: dict[str, str], where: str, labels_hint: str) -> None:
    if not unknown:
        return
    shown = "; ".join(f"{k!r}: {why}" for k, why in list(unknown.items())[:SHOWN])
    more = f" (and {len(unknown) - SHOWN} more)" if len(unknown) > SHOWN else ""
    raise ExportError(f"{where}: {len(unknown)} unknown label(s): {shown}{more}. {labels_hint}")


def read_folder(root: Path, resolver: LabelResolver, labels_hint: str) -> LabelledSet:
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        raise ExportError(f"{root} has images directly in it ({loose[0].name}, ...): an ImageFolder keeps each image "
                          "in a folder named by its class (DIR/n02123045/cat.jpg or DIR/tabby/cat.jpg), or pass a "
                          "CSV of file,label")
    examples, unknown = [], {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _images_under(folder)
        if not files:
            continue
        label = resolver.resolve(folder.name)
        if isinstance(label, str):
            unknown[folder.name] = label
            continue
        examples += [Example(f, label) for f in files]
    _raise_unknown(unknown, f"{root}", labels_hint)
    return LabelledSet(root, examples)


def read_csv(path: Path, resolver: LabelResolver, labels_hint: str) -> LabelledSet:
    examples, unknown, missing = [], {}, []
    with path.open(newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#") or (n == 1 and [c.strip().lower() for c in row] == ["file", "label"]):
                continue
            if len(row) != 2:
                raise ExportError(f"{path}:{n}: expected 2 columns file,label, got {len(row)}: {row!r}")
            file, raw = row[0].strip(), row[1]
            image = path.parent / file
            if not image.is_file():
                missing.append(file)
                continue
            label = resolver.resolve(raw)
            if isinstance(label, str):
                unknown[raw.strip()] = f"{label} (line {n})"
                continue
            examples.append(Example(image, label))
    if missing:
        raise ExportError(f"{path}: {len(missing)} listed file(s) do not exist (relative to {path.parent}): "
                          f"{', '.join(missing[:SHOWN])}{' ...' if len(missing) > SHOWN else ''}")
    _raise_unknown(unknown, str(path), labels_hint)
    return LabelledSet(path, examples)


def read_labelled(source: Path, labels: list[str], imagenet: bool, labels_hint: str = "") -> LabelledSet:
    """The labelled images of an ImageFolder ``source`` or a CSV file, labels resolved against ``labels``."""
    resolver = LabelResolver(labels, imagenet)
    hint = labels_hint or "Name classes by WordNet id (ImageNet models), by the model's class names, or by index."
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise ExportError(f"{source} is a file but not a .csv: pass an ImageFolder directory or a CSV of "
                              "file,label")
        data = read_csv(source, resolver, hint)
    elif source.is_dir():
        data = read_folder(source, resolver, hint)
    else:
        raise ExportError(f"{source} does not exist: pass an ImageFolder directory (DIR/<class>/<image>) or a CSV")
    if not data.examples:
        raise ExportError(f"{source} holds no labelled images ({', '.join(IMAGE_SUFFIXES)}): expected "
                          "DIR/<class>/<image> (class = WordNet id or class name) or a CSV of file,label")
    return data
