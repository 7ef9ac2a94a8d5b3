"""Config resolution (service.engine.resolve): config.pbtxt + settings -> how a model is served. No I/O."""

from __future__ import annotations

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from modelrepo.errors import RepositoryError
from service.config import Settings
from service.engine.resolve import (
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT_S,
    batcher_config,
    class_labels,
    resolve,
    versions_to_serve,
)

BASE = """
name: "m" platform: "onnxruntime_onnx" max_batch_size: 16
input { name: "input" data_type: TYPE_FP32 dims: [3, 224, 224] }
output { name: "logits" data_type: TYPE_FP32 dims: [1000] }
"""


def cfg(extra: str = "", base: str = BASE) -> mc.ModelConfig:
    return text_format.Parse(base + extra, mc.ModelConfig())


def settings(**kw: object) -> Settings:
    return Settings(model_repo="unused", **kw)  # type: ignore[arg-type]


def test_defaults_fill_what_the_config_leaves_out() -> None:
    r = resolve("m", cfg(), {}, settings())
    assert r.input_shape == (3, 224, 224) and r.max_batch_size == 16
    assert (r.preprocess.crop, r.preprocess.resize_shorter) == (224, 256)
    assert r.timeout_s == DEFAULT_TIMEOUT_S and r.instances == 1 and r.weights == "unknown"


def test_the_config_says_what_triton_would_do() -> None:
    c = cfg("""
        instance_group [{ count: 2 kind: KIND_CPU }, { count: 1 kind: KIND_CPU }]
        dynamic_batching { max_queue_delay_microseconds: 2500 preferred_batch_size: [4, 8, 32]
                           default_queue_policy { max_queue_size: 64 default_timeout_microseconds: 1500000 } }
    """)
    r = resolve("m", c, {"source.weights": "random"}, settings())
    assert (r.instances, r.timeout_s, r.weights) == (3, 1.5, "random")
    b = batcher_config(c, settings(), r.max_batch_size, "gpu")
    assert b.max_queue_delay_s == 0.0025 and b.preferred_batch_sizes == [4, 8]  # 32 > max_batch_size 16
    assert b.max_queue_size == 64 and b.dispatch_when_idle is False


def test_settings_win_over_the_config() -> None:
    c = cfg("dynamic_batching { max_queue_delay_microseconds: 2500 default_queue_policy { max_queue_size: 64 } }")
    s = settings(max_batch_size=4, request_timeout_s=0.25, instances=2, max_queue_delay_ms=0,
                 max_queue_size=8, dispatch_when_idle=False)
    r = resolve("m", c, {}, s)
    assert (r.max_batch_size, r.timeout_s, r.instances) == (4, 0.25, 2)
    b = batcher_config(c, s, r.max_batch_size, "cpu")
    assert (b.max_queue_delay_s, b.max_queue_size, b.dispatch_when_idle) == (0.0, 8, False)


def test_cpu_runtimes_dispatch_when_idle_by_default_and_queues_have_a_bound() -> None:
    b = batcher_config(cfg(), settings(), 16, "cpu")
    assert b.dispatch_when_idle is True and b.max_queue_size == DEFAULT_QUEUE and b.max_queue_delay_s == 0.0


def test_preprocess_follows_the_parameters_and_must_match_the_input() -> None:
    c = cfg(base=BASE.replace("[3, 224, 224]", "[3, 299, 299]"))
    r = resolve("m", c, {"preprocess.resize_shorter": "342", "preprocess.mean": "0.5,0.5,0.5"}, settings())
    assert (r.preprocess.crop, r.preprocess.resize_shorter, r.preprocess.mean) == (299, 342, (0.5, 0.5, 0.5))
    with pytest.raises(RepositoryError, match=r"preprocess.crop 224 != input size 299"):
        resolve("m", c, {"preprocess.crop": "224"}, settings())


@pytest.mark.parametrize("dims", ["[224, 224]", "[1, 3, 224, 224]"])
def test_an_input_that_is_not_one_image_is_refused(dims: str) -> None:
    with pytest.raises(RepositoryError, match=r"expected one input with dims \[3, H, W\]"):
        resolve("m", cfg(base=BASE.replace("[3, 224, 224]", dims)), {}, settings())


@pytest.mark.parametrize(("policy", "want"), [
    ("", [3]),
    ("version_policy { latest { num_versions: 2 } }", [2, 3]),
    ("version_policy { all {} }", [1, 2, 3]),
    ("version_policy { specific { versions: [1, 7] } }", [1]),
])
def test_version_policy(policy: str, want: list[int]) -> None:
    assert versions_to_serve(cfg(policy).version_policy, [1, 2, 3], "m") == want


def test_a_specific_policy_naming_no_existing_version_is_refused() -> None:
    with pytest.raises(RepositoryError, match="none of the versions in version_policy exists"):
        versions_to_serve(cfg("version_policy { specific { versions: [9] } }").version_policy, [1, 2], "m")


def test_labels_are_one_per_class_or_class_i_with_the_reason() -> None:
    c = cfg(base=BASE.replace("dims: [1000]", "dims: [3]"))
    assert class_labels(["a", "b", "c"], c) == (["a", "b", "c"], None)
    labels, why = class_labels(["a", "b"], c)
    assert labels == ["class_0", "class_1", "class_2"] and why is not None and "2 lines for 3 classes" in why
    assert class_labels(None, c) == (["class_0", "class_1", "class_2"], None)
