"""OpenVINO's compiled-model cache as the runtime uses it (``service.runtimes.compile_cache``): a restart
reuses it without reading the model, a changed model file or a broken cache never serves a wrong blob,
a cache that cannot be used only turns itself off, and the cache stays bounded.

A tiny ONNX model (3x8x8 -> 4 classes, built with ``onnx.helper``): compiling it takes milliseconds.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.runtimes import LoadSpec
from service.runtimes.compile_cache import LOCK, META, entry_key, open_entry, prune

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")

from service.runtimes.openvino import OpenVinoRuntime  # noqa: E402

SHAPE = (3, 8, 8)
X = np.random.default_rng(0).standard_normal((2, *SHAPE)).astype(np.float32)


def tiny_onnx(path: Path, seed: int = 0) -> Path:
    """Conv -> global average pool -> flatten: logits (N, 4); ``seed`` picks the weights. Written to a
    temp file and renamed into place, as a re-export replaces a model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(seed).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["conv"]), helper.make_node("GlobalAveragePool", ["conv"], ["gap"]),
         helper.make_node("Flatten", ["gap"], ["logits"])],
        "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path.with_suffix(".tmp")))
    os.replace(path.with_suffix(".tmp"), path)
    return path


def load(model: Path, cache: Path | None, precision: str | None = "f32") -> OpenVinoRuntime:
    rt = OpenVinoRuntime()
    rt.load(LoadSpec(model, {}, "cpu", 1, SHAPE, precision, cache))
    return rt


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return tiny_onnx(tmp_path / "repo" / "tiny" / "1" / "model.onnx")


def entries(cache: Path) -> list[Path]:
    return sorted(d for d in cache.iterdir() if d.is_dir())


def test_a_second_load_reuses_the_cache_without_reading_the_model(
        model: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, "service.runtimes.openvino"):
        first = load(model, cache)
    assert "compiled and cached it in" in caplog.text
    [entry] = entries(cache)
    assert entry.name.startswith("tiny-1-") and json.loads((entry / META).read_text())["quantized"] is False
    blobs = {p.name: p.stat().st_mtime_ns for p in entry.iterdir() if p.suffix == ".blob"}
    assert blobs

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("read_model was called on a cache hit")

    monkeypatch.setattr(ov.Core, "read_model", no_read)
    caplog.clear()
    with caplog.at_level(logging.INFO, "service.runtimes.openvino"):
        second = load(model, cache)
    assert f"reused the compiled model in {entry}" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir() if p.suffix == ".blob"} == blobs
    assert second.precision == "fp32" and np.array_equal(second.infer(X), first.infer(X))


def test_a_re_exported_model_is_compiled_anew_and_its_old_entry_removed(model: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load(model, cache)
    [old] = entries(cache)
    tiny_onnx(model, seed=1)  # same path, same size, other weights: OpenVINO's own path key would reuse the blob
    fresh = load(model, None).infer(X)
    served = load(model, cache).infer(X)
    assert np.array_equal(served, fresh)
    [new] = entries(cache)
    assert new != old


def test_a_corrupt_blob_or_record_is_recompiled(model: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    want = load(model, cache).infer(X)
    [entry] = entries(cache)
    for blob in entry.glob("*.blob"):
        blob.chmod(0o600)
        blob.write_bytes(b"not a compiled model")
    caplog.clear()
    with caplog.at_level(logging.INFO, "service.runtimes.openvino"):
        assert np.array_equal(load(model, cache).infer(X), want)
    assert "compiled and cached it in" in caplog.text  # OpenVINO found the blob unreadable and rewrote it
    (entry / META).write_text("{not json")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert np.array_equal(load(model, cache).infer(X), want)
    assert "unreadable" in caplog.text and json.loads((entry / META).read_text())["quantized"] is False


def test_an_unusable_cache_folder_falls_back_with_a_warning(model: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("a file where the cache folder should be (as a read-only volume refuses it)")
    with caplog.at_level(logging.WARNING):
        rt = load(model, not_a_dir / "cache")
    assert rt.infer(X).shape == (2, 4)
    assert "is not usable" in caplog.text and "compiling without it" in caplog.text


def test_the_key_follows_the_model_file_and_the_device(model: Path) -> None:
    key = entry_key([model], "cpu A")
    assert entry_key([model], "cpu A") == key
    assert entry_key([model], "cpu B") != key  # another CPU or OpenVINO version
    tiny_onnx(model, seed=0)  # the same bytes, rewritten: a new file
    assert entry_key([model], "cpu A") != key


def _entry(root: Path, name: str, model: str, size: int, age_s: float) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "x.blob").write_bytes(b"\0" * size)
    (d / META).write_text(json.dumps({"model": model}))
    t = 1_700_000_000 - age_s
    os.utime(d / META, (t, t))
    return d


def test_prune_removes_stale_then_least_recently_used_entries_but_never_a_locked_one(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    keep = _entry(root, "a-1-new", "/repo/a/1/model.onnx", 100, 0)
    stale = _entry(root, "a-1-old", "/repo/a/1/model.onnx", 10, 0)  # the same file before a re-export
    oldest = _entry(root, "b-1-k", "/repo/b/1/model.onnx", 100, 300)
    locked = _entry(root, "c-1-k", "/repo/c/1/model.onnx", 100, 200)
    recent = _entry(root, "d-1-k", "/repo/d/1/model.onnx", 100, 100)
    with (locked / LOCK).open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another engine is compiling into it
        removed = prune(root, keep, max_bytes=250)
    assert removed == [stale, oldest, recent]
    assert sorted(entries(root)) == [keep, locked]
    assert prune(root, keep, max_bytes=10_000) == []


def test_open_entry_reads_what_the_compile_recorded(model: Path, tmp_path: Path) -> None:
    entry = open_entry(tmp_path / "cache", [model], "cpu A")
    assert entry is not None and entry.meta is None and not entry.hit
    (entry.path / "x.blob").write_bytes(b"blob")
    entry.record({"quantized": True})
    again = open_entry(tmp_path / "cache", [model], "cpu A")
    assert again is not None and again.hit and again.meta == {"model": str(model.resolve()), "quantized": True}


def test_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings().compile_cache_dir() == tmp_path / "xdg" / "imgserve" / "compiled"
    assert Settings(compile_cache="off").compile_cache_dir() is None
    assert Settings(compile_cache=str(tmp_path / "c")).compile_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings().compile_cache_dir() == tmp_path / "home" / ".cache" / "imgserve" / "compiled"
