"""Random weights a trained model could have: calibrated BatchNorm statistics, a trained classifier's logits.

A freshly initialised CNN's BatchNorm layers hold their defaults (mean 0, variance 1), which do not match
the activations they see, so in eval mode the scale compounds with depth: a random resnet152 gives logits of
1e8. That overflows FP16 (65,504) and turns the parity gate's absolute tolerance into a relative one of 1e-11.
Four steps make the weights look trained, each deterministic:

1. Every BatchNorm bias set to ``BN_BIAS`` (0.5, not 0), so most ReLUs pass their input. With its statistics
   calibrated and zero biases, a deep random network is numerically chaotic: FP32 rounding alone moves
   resnet152's logits by 2e-3 (the parity gate allows 1e-3) and a jittered crop of a sample photo gives
   inception_v3 a logit of 94; with 0.5, 2e-5 and 13. Every layer keeps its random weights, so the parity
   gate still checks all of them (``zero_init_residual`` would tame ResNets too, by zeroing every residual
   branch's contribution).
2. BatchNorm running statistics re-estimated on a small fixed batch (real photos and normalised noise).
3. The classifier rescaled so the logits spread over a few units (std ``TARGET_LOGIT_STD``), as a trained
   ImageNet classifier's do.
4. One class leads: the class the network already favours on the calibration batch has its bias raised
   until it leads on every calibration input by ``LEAD`` logits. A random head's top-1 often wins by mere
   hundredths of a logit, which BF16 and FP16 rounding flip (OpenVINO's default BF16 changed resnet18's
   top-1 on a sample photo), so every check that compares top-1 across precisions would compare noise.
   As before this module existed, a random model predicts one class for (nearly) every image, now with a
   trained classifier's confidence (a top-1 logit near 15-20 over logits of std 3), the rest of the top-5
   still depends on the image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from PIL import ImageOps
from torch import nn

from export import images
from modelrepo.preprocess import Preprocess

logger = logging.getLogger(__name__)

SEED = 0
PHOTOS = 6  # mirrored scikit-image sample photos (the parity gate uses the photos as they are)
NOISE = 2  # standard-normal inputs, in the normalised space the parity gate's random inputs come from
TARGET_LOGIT_STD = 3.0
BN_BIAS = 0.5
LEAD = 2 * TARGET_LOGIT_STD


@dataclass(frozen=True)
class RandomInit:
    """What was done to a randomly initialised model (logged, and recorded as ``source.random_init``)."""

    bn_layers: int  # biases set to BN_BIAS, running statistics calibrated
    photos: int
    noise: int
    scale: float  # the classifier's weight and bias were multiplied by this
    leader: int | None  # the class whose bias was raised (None: no bias, or one class)
    lead_bias: float  # by how much
    logit_std: float  # of the rescaled model, on the calibration inputs
    logit_max: float  # max |logit|, likewise

    def describe(self) -> str:
        return (f"bn-bias:{BN_BIAS:g};bn-stats:{self.bn_layers} layers on {self.photos} photos+{self.noise} noise;"
                f"classifier-scale:{self.scale:.4g};leader:{self.leader}+{self.lead_bias:.3g};"
                f"logit-std:{self.logit_std:.3g};logit-max:{self.logit_max:.3g}")


def calibration_inputs(pp: Preprocess, photos: int = PHOTOS, noise: int = NOISE, seed: int = SEED) -> torch.Tensor:
    """A fixed batch: mirrored sample photos through the service preprocessing, then normalised noise."""
    imgs = [ImageOps.mirror(img) for img in images.sample_photos()[:photos]]
    real = torch.from_numpy(images.to_batch(imgs, pp)) if imgs else torch.empty(0, 3, pp.crop, pp.crop)
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([real, torch.randn(noise, 3, pp.crop, pp.crop, generator=gen)])


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def shift_batchnorm_biases(model: nn.Module, bias: float = BN_BIAS) -> int:
    """Set the bias of every affine BatchNorm layer to ``bias``; returns the number of layers."""
    bns = [m for m in _batchnorms(model) if m.affine]
    for m in bns:
        nn.init.constant_(m.bias, bias)
    return len(bns)


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> int:
    """Replace every BatchNorm layer's running statistics with those of ``x``; the model is left in eval mode.

    Only the BatchNorm layers run in train mode (dropout, drop-path and auxiliary heads stay as in eval), with
    ``momentum=None``: a cumulative average, here of the one batch. Returns the number of layers.
    """
    bns = _batchnorms(model)
    model.eval()
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    return len(bns)


def scale_classifier(model: nn.Module, classifier: nn.Module, x: torch.Tensor,
                     target_std: float = TARGET_LOGIT_STD) -> tuple[float, torch.Tensor]:
    """Multiply the final layer's weight (and bias) so the logits on ``x`` have std ``target_std``.

    The logits are linear in the final layer's parameters, so the rescaled logits are the measured ones times
    the factor. Returns the factor and the rescaled logits (the factor is 1 if the logits are constant).
    """
    weight = getattr(classifier, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"the classifier {type(classifier).__name__} has no weight to rescale")
    model.eval()
    with torch.no_grad():
        logits = model(x).float()
        std = float(logits.std())
        scale = target_std / std if std > 0 and torch.isfinite(logits).all() else 1.0
        weight.mul_(scale)
        bias = getattr(classifier, "bias", None)
        if isinstance(bias, torch.Tensor):
            bias.mul_(scale)
    return scale, logits * scale


def lead_one_class(classifier: nn.Module, logits: torch.Tensor, lead: float = LEAD) -> tuple[int | None, float]:
    """Raise the bias of the class with the highest mean logit until it leads every row of ``logits`` by ``lead``.

    ``logits`` (of the final layer ``classifier``) are updated in place. Returns the class and the bias added
    (None and 0 when the classifier has no bias or a single class).
    """
    bias = getattr(classifier, "bias", None)
    if not isinstance(bias, torch.Tensor) or logits.shape[1] < 2:
        return None, 0.0
    leader = int(logits.mean(0).argmax())
    others = torch.cat([logits[:, :leader], logits[:, leader + 1 :]], 1).amax(1)
    add = max(0.0, lead - float((logits[:, leader] - others).min()))
    with torch.no_grad():
        bias[leader] += add
    logits[:, leader] += add
    return leader, add


def trained_like(model: nn.Module, classifier: nn.Module, pp: Preprocess) -> RandomInit:
    """Shift BatchNorm biases, calibrate BatchNorm statistics, rescale the classifier, lead one class."""
    t0 = time.perf_counter()
    shift_batchnorm_biases(model)
    x = calibration_inputs(pp)
    photos = len(x) - NOISE
    bn_layers = calibrate_batchnorm(model, x)
    scale, logits = scale_classifier(model, classifier, x)
    leader, add = lead_one_class(classifier, logits)
    init = RandomInit(bn_layers, photos, NOISE, scale, leader, add, float(logits.std()), float(logits.abs().max()))
    logger.info(
        "random weights: %d BatchNorm layers given bias %g and statistics calibrated on %d inputs (%d photos, "
        "%d noise), classifier scaled x%.3g, class %s leads by %g: logits std %.2f, max |logit| %.1f (%.1fs)",
        bn_layers, BN_BIAS, len(x), photos, NOISE, scale, leader, LEAD, init.logit_std, init.logit_max,
        time.perf_counter() - t0,
    )
    return init
