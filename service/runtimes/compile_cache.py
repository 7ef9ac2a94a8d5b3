"""A compiled-model cache that cannot hand back a wrong blob: one entry per model file, device and runtime.

OpenVINO's own ``CACHE_DIR`` names a blob by a hash of the model's *path* and the compile options
when a model is compiled from its path (the fast way back: no ``read_model``, the blob is mapped).
Measured with OpenVINO 2026.4: a re-exported ``model.onnx`` at the same path, even with a new mtime,
was served from the old blob, i.e. with the old weights. So the runtime never hands OpenVINO the
cache root: each entry is a folder keyed by the model file's identity (device, inode, size, mtime and
ctime of the file and of an IR's ``.bin``: a rewrite, copy or rename changes one of them; nothing but
the clock can forge a ctime) and by the device and runtime version (a blob compiled for an AMX CPU in
BF16 is never offered to an AVX2 one). Inside, the runtime's own blobs, and ``entry.json``: what the
compile that filled it recorded (the runtime needs it when it skips reading the model).

Bounded: when a compile fills an entry, entries of the same model path under an older identity are
removed (that file is gone), then the least recently used ones until the cache holds ``MAX_BYTES``.
Concurrent starters sharing the folder take the entry's ``flock`` around their compile, so none reads a
blob another is still writing. A cache that cannot be used (a read-only or full disk) is no error: the
caller compiles without it, and says so once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: the whole cache, all entries together (a ResNet-50 entry is ~100 MiB)
MAX_BYTES = 2 << 30
META = "entry.json"
LOCK = ".lock"


def file_identity(path: Path) -> list[object]:
    st = path.stat()
    return [str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def entry_key(model_files: list[Path], device: str) -> str:
    """16 hex digits naming what a blob is valid for: these model files as they are now, on ``device``."""
    text = json.dumps([device, *(file_identity(p) for p in model_files)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class CacheEntry:
    #: the folder handed to the runtime (OpenVINO's CACHE_DIR)
    path: Path
    #: the model file it is for (the first of its files)
    model_file: Path
    #: what the compile that filled it recorded; None while it is empty (or its record is unreadable)
    meta: dict[str, Any] | None

    @property
    def hit(self) -> bool:
        return self.meta is not None and bool(self.blobs())

    def blobs(self) -> dict[str, tuple[int, int]]:
        """The runtime's files here: name -> (size, mtime_ns)."""
        out = {}
        for p in self.path.iterdir():
            if p.name not in (META, LOCK) and p.is_file():
                st = p.stat()
                out[p.name] = (st.st_size, st.st_mtime_ns)
        return out

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive across processes: held while a compile reads or writes this entry's blobs."""
        with (self.path / LOCK).open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def record(self, meta: dict[str, Any]) -> None:
        """Write ``entry.json`` (atomically) once a compile has filled the entry, then bound the cache."""
        meta = {"model": str(self.model_file.resolve()), **meta}
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".entry-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(meta, f)
        os.replace(tmp, self.path / META)
        self.meta = meta
        prune(self.path.parent, keep=self.path)

    def touch(self) -> None:
        """Mark it used now (the least recently used entries go first)."""
        with contextlib.suppress(OSError):
            os.utime(self.path / META)


def open_entry(root: Path, model_files: list[Path], device: str) -> CacheEntry | None:
    """The entry for ``model_files`` on ``device`` under ``root``, created if new; None (with a warning)
    when the cache cannot be used here."""
    model = model_files[0]
    try:
        name = f"{model.parent.parent.name}-{model.parent.name}-{entry_key(model_files, device)}"
        path = root / name
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass  # writable (a read-only volume, a full disk or a foreign owner shows here)
    except OSError as e:
        logger.warning("compiled-model cache %s is not usable (%s): compiling without it (set --compile-cache to a "
                       "writable folder, or off)", root, e)
        return None
    return CacheEntry(path, model, _read_meta(path / META))


def _read_meta(path: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        logger.warning("compiled-model cache record %s is unreadable (%s): compiling anew", path, e)
        return None
    return meta if isinstance(meta, dict) else None


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def prune(root: Path, keep: Path, max_bytes: int = MAX_BYTES) -> list[Path]:
    """Remove entries of ``keep``'s model path under an older identity, then the least recently used ones
    until the cache fits ``max_bytes``; never ``keep``, never an entry a compile holds. What was removed."""
    mine = (_read_meta(keep / META) or {}).get("model")
    entries = []
    for d in root.iterdir():
        if d.is_dir() and d != keep and (d / META).is_file():
            entries.append((d, (d / META).stat().st_mtime, _size(d), (_read_meta(d / META) or {}).get("model")))
    total = _size(keep) + sum(e[2] for e in entries)
    removed = []
    for d, _, size, model in sorted(entries, key=lambda e: (e[3] != mine, e[1])):  # stale ones first, then oldest
        if model != mine and total <= max_bytes:
            break
        if _remove_unlocked(d):
            removed.append(d)
            total -= size
    if removed:
        logger.info("compiled-model cache %s: removed %d old entr%s (%s)", root, len(removed),
                    "y" if len(removed) == 1 else "ies", ", ".join(d.name for d in removed))
    return removed


def _remove_unlocked(path: Path) -> bool:
    try:
        with (path / LOCK).open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a compile holds it: leave it be
            shutil.rmtree(path)
        return True
    except OSError:
        return False
