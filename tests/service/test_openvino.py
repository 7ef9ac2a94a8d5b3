"""The OpenVINO runtime against ONNX Runtime on a real exported model, IR serving, and bad model files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from modelrepo.checkset import CHECK_FILE
from modelrepo.config import read_config, set_params, write_config
from modelrepo.errors import RepositoryError
from modelrepo.image_preprocess import preprocess
from modelrepo.preprocess import Preprocess
from service.config import Settings
from service.engine.manager import ModelManager
from service.metrics import Metrics
from service.runtimes import LoadSpec

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")

from service.runtimes.openvino import OpenVinoRuntime  # noqa: E402

SHAPE = (3, 224, 224)


@pytest.fixture(scope="module")
def onnx_file(model_repo: Path) -> Path:
    return model_repo / "resnet18" / "1" / "model.onnx"


@pytest.fixture(scope="module")
def inputs(photos: dict[str, bytes]) -> np.ndarray:
    pp = Preprocess()
    real = [preprocess(d, pp, 10_000_000) for d in photos.values()]
    rnd = np.random.default_rng(0).standard_normal((2, *SHAPE), dtype=np.float32)
    return np.concatenate([np.stack(real), rnd])


@pytest.fixture(scope="module")
def reference(onnx_file: Path, inputs: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {"input": inputs})[0]
    return out


def load(path: Path, precision: str | None = None, params: dict[str, str] | None = None,
         shape: tuple[int, ...] = SHAPE) -> OpenVinoRuntime:
    rt = OpenVinoRuntime()
    rt.load(LoadSpec(path, params or {}, "cpu", 2, shape, precision))
    return rt


def test_fp32_matches_onnxruntime(onnx_file: Path, inputs: np.ndarray, reference: np.ndarray) -> None:
    rt = load(onnx_file, "f32")
    got = rt.infer(inputs)
    assert rt.precision == "fp32" and rt.label == "openvino-cpu" and rt.device_kind == "cpu"
    assert float(np.max(np.abs(got - reference))) <= 1e-3
    assert np.array_equal(np.argsort(-got, 1)[:, :5], np.argsort(-reference, 1)[:, :5])


def test_default_precision_keeps_top1_on_real_photos(onnx_file: Path, inputs: np.ndarray,
                                                     reference: np.ndarray) -> None:
    rt = load(onnx_file)
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    # OpenVINO's own default: BF16 where the CPU has it (AMX, AVX-512 BF16), else FP32.
    assert rt.precision == ("bf16" if "BF16" in caps else "fp32")
    got = rt.infer(inputs)
    n_photos = len(inputs) - 2
    assert np.array_equal(got[:n_photos].argmax(1), reference[:n_photos].argmax(1))


def test_output_rows_survive_the_next_batch(onnx_file: Path, inputs: np.ndarray) -> None:
    """The batcher hands rows to requests after infer returns: the next batch must not overwrite them."""
    rt = load(onnx_file, "f32")
    first = rt.infer(inputs[:2])
    kept = first.copy()
    rt.infer(inputs[2:4])
    assert np.array_equal(first, kept)


def test_precision_pins(onnx_file: Path) -> None:
    assert load(onnx_file, params={"openvino.inference_precision": "f32"}).precision == "fp32"
    assert load(onnx_file, params={"INFERENCE_PRECISION_HINT": "f32"}).precision == "fp32"
    # the operator's flag wins over the config
    rt = load(onnx_file, "f32", params={"openvino.inference_precision": "bf16"})
    assert rt.precision == "fp32"
    with pytest.raises(RepositoryError, match=r"openvino.inference_precision is 'int4': use one of f32, bf16, f16"):
        load(onnx_file, params={"openvino.inference_precision": "int4"})


def ir_copy(onnx_file: Path, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov.convert_model(str(onnx_file)), str(dest / "model.xml"), compress_to_fp16=False)
    return dest / "model.xml"


def test_ir_matches_onnxruntime(onnx_file: Path, tmp_path: Path, inputs: np.ndarray, reference: np.ndarray) -> None:
    xml = ir_copy(onnx_file, tmp_path)
    got = load(xml, "f32").infer(inputs)
    assert float(np.max(np.abs(got - reference))) <= 1e-3


def test_bad_model_files_are_clear_errors(onnx_file: Path, tmp_path: Path) -> None:
    xml = ir_copy(onnx_file, tmp_path / "ir")
    with pytest.raises(RepositoryError, match=r"the model's input is \[-1, 3, 224, 224\], but config.pbtxt says "
                                              r"\[N, 3, 299, 299\]"):
        load(xml, shape=(3, 299, 299))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.xml").write_text("<net><layers>")
    (broken / "model.bin").write_bytes(b"\0" * 16)
    with pytest.raises(RepositoryError, match="OpenVINO cannot read"):
        load(broken / "model.xml")
    (tmp_path / "ir" / "model.bin").unlink()
    with pytest.raises(RepositoryError, match="has no model.bin beside it"):
        load(xml)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx file")
    with pytest.raises(RepositoryError, match="OpenVINO cannot read"):
        load(junk)


async def test_bad_models_are_not_ready_while_others_serve(model_repo: Path, onnx_file: Path,
                                                           tmp_path: Path) -> None:
    """A corrupt IR, a corrupt ONNX file, an unknown precision and a wrong input shape: each of those
    models is not ready with its reason; the good ONNX model and the good IR model serve."""
    repo = tmp_path / "repo"
    shutil.copytree(model_repo / "resnet18", repo / "resnet18")
    base = read_config(model_repo / "resnet18")

    def add(name: str, mutate: object = None, ir: bool = False, model_bytes: bytes | None = None) -> None:
        d = repo / name
        (d / "1").mkdir(parents=True)
        cfg = type(base)()
        cfg.CopyFrom(base)
        cfg.name = name
        if ir:
            cfg.platform, cfg.backend = "", "openvino"
            ir_copy(onnx_file, d / "1")
        elif model_bytes is not None:
            (d / "1" / "model.onnx").write_bytes(model_bytes)
        else:
            shutil.copy(onnx_file, d / "1" / "model.onnx")
        check = model_repo / "resnet18" / "1" / CHECK_FILE  # the config names it (the gate that travels)
        if check.is_file():
            shutil.copy(check, d / "1" / CHECK_FILE)
        if callable(mutate):
            mutate(cfg)
        write_config(d, cfg)

    add("good_ir", ir=True)
    add("corrupt_onnx", model_bytes=b"garbage")
    add("bad_precision", lambda c: set_params(c, {"openvino.inference_precision": "fp8"}))
    add("wrong_shape", lambda c: (c.input[0].ClearField("dims"), c.input[0].dims.extend([3, 256, 256]),
                                  set_params(c, {"preprocess.crop": "256"})), ir=True)
    add("corrupt_ir", ir=True)
    (repo / "corrupt_ir" / "1" / "model.bin").write_bytes(b"\0" * 64)

    manager = ModelManager(Settings(model_repo=repo, max_batch_size=2), Metrics())
    try:
        await manager.load_all()
        bad = manager.not_ready()
        assert set(bad) == {"corrupt_onnx", "bad_precision", "wrong_shape", "corrupt_ir"}
        assert "OpenVINO cannot read" in bad["corrupt_onnx"] and "Exception from" not in bad["corrupt_onnx"]
        assert "use one of f32, bf16, f16" in bad["bad_precision"]
        assert "config.pbtxt says [N, 3, 256, 256]" in bad["wrong_shape"]
        assert bad["corrupt_ir"].startswith("failed: ")
        for name in ("resnet18", "good_ir"):
            inst = manager.get(name)
            assert inst.runtime.label == "openvino-cpu"
            assert inst.describe().platform == ("openvino" if name == "good_ir" else "onnxruntime_onnx")
            rows = await inst.batcher.run([np.zeros(SHAPE, np.float32)], None)
            assert rows[0][0].shape == (1000,)
    finally:
        await manager.close()


def test_two_streams_split_a_batch_and_agree(onnx_file: Path, inputs: np.ndarray) -> None:
    one = load(onnx_file, "f32")
    two = load(onnx_file, "f32", params={"openvino.num_streams": "2"})
    assert two.streams == 2
    x = np.concatenate([inputs, inputs])  # 10 images: split 5 + 5 across the two streams
    np.testing.assert_allclose(two.infer(x), one.infer(x), atol=1e-4, rtol=0)
    np.testing.assert_allclose(two.infer(x[:1]), one.infer(x[:1]), atol=1e-4, rtol=0)  # small: one request
    with pytest.raises(RepositoryError, match="openvino.num_streams is 'many'"):
        load(onnx_file, params={"openvino.num_streams": "many"})
