"""Random weights a trained model could have (export/random_init.py): logits of a few units, every arch exports."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from export import images, random_init
from export.models import ARCHS, TIMM_EXAMPLES, default_model_name, load_model
from export.onnx_export import convert_fp16
from export.parity import ort_runner, run_batched
from modelrepo.config import get_params, read_config
from modelrepo.preprocess import Preprocess
from tests.export.helpers import run_cli

FP16_SAFE = 1000.0  # max |logit| allowed: FP16 overflows at 65,504, a trained classifier's logits are tens
TINY = Preprocess(36, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")


class Tiny(nn.Module):
    """Two conv-BN-ReLU layers whose conv weights make the default BatchNorm statistics badly wrong."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5),
        )
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            for m in self.features:
                if isinstance(m, nn.Conv2d):
                    m.weight.mul_(100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny().eval()


def test_batchnorm_statistics_are_those_of_the_calibration_batch() -> None:
    model, x = _tiny(), random_init.calibration_inputs(TINY, photos=3, noise=2)
    assert x.shape == (5, 3, 32, 32)
    outs: list[torch.Tensor] = []
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.register_forward_hook(lambda _m, _i, o: outs.append(o))
    assert random_init.calibrate_batchnorm(model, x) == 2
    assert not any(m.training for m in model.modules())  # left in eval mode
    assert all(bn.momentum == 0.1 for bn in bns)  # restored after the cumulative average
    outs.clear()
    with torch.no_grad():
        model(x)
    for out in outs:  # in eval mode, every channel is normalised on the batch it was calibrated on
        assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4
        assert torch.allclose(out.var(dim=(0, 2, 3), unbiased=False), torch.ones(8), rtol=1e-2)


def test_classifier_is_scaled_to_a_trained_logit_spread() -> None:
    model, x = _tiny(), random_init.calibration_inputs(TINY, photos=4, noise=4)
    with torch.no_grad():
        before = model(x)
    assert before.abs().max() > 1e3  # the default statistics: logits far beyond a trained model's
    random_init.calibrate_batchnorm(model, x)
    weight = model.fc.weight.detach().clone()
    scale, logits = random_init.scale_classifier(model, model.fc, x, target_std=2.5)
    assert torch.equal(model.fc.weight, weight * scale)
    with torch.no_grad():
        assert torch.allclose(model(x), logits, rtol=1e-5, atol=1e-5)  # linear in the last layer
    assert float(logits.std()) == pytest.approx(2.5, rel=1e-4)


def test_trained_like_is_deterministic_and_described() -> None:
    a, b = _tiny(), _tiny()
    init = random_init.trained_like(a, a.fc, TINY)
    assert random_init.trained_like(b, b.fc, TINY) == init
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert init.bn_layers == 2
    # std 3 before the leader's bias was raised, which adds to it when there are only five classes
    assert random_init.TARGET_LOGIT_STD <= init.logit_std < 6 and init.logit_max < 100
    assert init.leader is not None
    assert re.fullmatch(r"bn-bias:0.5;bn-stats:2 layers on \d+ photos\+2 noise;classifier-scale:\S+;leader:\d+\+\S+;"
                        r"logit-std:\S+;logit-max:\S+", init.describe())


def test_one_class_leads_every_calibration_input() -> None:
    model, x = _tiny(), random_init.calibration_inputs(TINY, photos=4, noise=4)
    random_init.calibrate_batchnorm(model, x)
    _, logits = random_init.scale_classifier(model, model.fc, x)
    bias = model.fc.bias.detach().clone()
    leader, add = random_init.lead_one_class(model.fc, logits, lead=4.0)
    assert leader == int(logits.mean(0).argmax()) and add > 0
    assert torch.equal(model.fc.bias, bias + add * torch.eye(5)[leader])  # only the leader's bias moved
    with torch.no_grad():
        got = model(x)
    assert torch.allclose(got, logits, atol=1e-5)
    top2 = got.topk(2, dim=1).values
    assert (got.argmax(1) == leader).all() and float((top2[:, 0] - top2[:, 1]).min()) == pytest.approx(4.0, abs=1e-4)
    assert random_init.lead_one_class(model.fc, logits, lead=4.0) == (leader, 0.0)  # already leads: unchanged


def test_batchnorm_biases_are_shifted_and_weights_kept() -> None:
    model = _tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert random_init.shift_batchnorm_biases(model) == 2
    for k, v in model.state_dict().items():
        if k.endswith("bias") and k.startswith(("features.1.", "features.4.")):  # the BatchNorm layers
            assert torch.all(v == random_init.BN_BIAS), k
        else:
            assert torch.equal(v, before[k]), k


def test_checkpoint_weights_are_untouched(tmp_path: Path) -> None:
    torch.manual_seed(1)
    state = torchvision.models.resnet18(num_classes=3).state_dict()
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    loaded = load_model("resnet18", str(path))
    assert loaded.random_init is None
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.slow
@pytest.mark.parametrize("arch", [*ARCHS, *TIMM_EXAMPLES])
def test_every_listed_arch_exports_with_random_weights(arch: str, tmp_path: Path) -> None:
    # The BF16 gate is never enforced for random weights: skipped here, it would only add minutes.
    run = run_cli("--arch", arch, "--weights", "random", "--repo", str(tmp_path), "--no-bf16-gate")
    assert run.rc == 0, run.err
    m = re.search(r"parity PASS: max \|dlogit\| (\S+) \(tolerance 0.001, and 0.001 x max\|logit\|\)", run.out)
    assert m, run.out
    model_dir = tmp_path / default_model_name(arch)
    cfg = read_config(model_dir)
    params = get_params(cfg)
    assert params["source.weights"] == "random" and params["source.random_init"].startswith("bn-bias:0.5;bn-stats:")
    pp = Preprocess.from_params(params, list(cfg.input[0].dims))
    noise = np.random.default_rng(3).standard_normal((2, 3, pp.crop, pp.crop), dtype=np.float32)
    x = np.concatenate([images.check_set(pp)[:16], noise])
    logits = run_batched(ort_runner(model_dir / "1" / "model.onnx"), x)
    assert np.isfinite(logits).all() and np.abs(logits).max() < FP16_SAFE
    assert 0.5 < logits.std() < 10  # a trained classifier's spread, not 1e-2 or 1e8
    # ...and in FP16 end to end (every intermediate activation too), as a GPU would serve it: same top-1
    fp16 = run_batched(ort_runner(convert_fp16(model_dir / "1" / "model.onnx", tmp_path / "fp16.onnx")), x)
    assert np.isfinite(fp16).all() and np.abs(fp16 - logits).max() < 0.1 * np.abs(logits).max()
    assert np.array_equal(fp16.argmax(1), logits.argmax(1))
