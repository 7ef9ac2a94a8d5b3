"""What to tell someone whose model has random weights: which served model to use instead.

Pure functions of the served models' names and ``weights`` (the ``GET /models`` field: ``random``, a tag,
``sha256:...``, a package, or ``unknown`` for a repository the exporter did not write). ``/classify``'s
``warning``, the CLI client and the page (``service/http/static/app.js`` mirrors these rules) say the same.
"""

from __future__ import annotations

from collections.abc import Mapping

RANDOM = "random"
UNKNOWN = "unknown"
RANDOM_WARNING = "this model has random weights: its predictions are meaningless"
#: exported variants of a model (served by other runtimes or precisions): the plain model is suggested first
VARIANT_SUFFIXES = ("_int8", "_fp16", "_ov", "_pt", "_trt")


def has_trained_weights(weights: str | None) -> bool:
    """Whether the exporter recorded trained weights (not ``random``, and known at all)."""
    return bool(weights) and weights not in (RANDOM, UNKNOWN)


def trained_alternative(models: Mapping[str, str | None]) -> str | None:
    """The served model with trained weights to suggest: plain models before their variants, then by name."""
    trained = [name for name, weights in models.items() if has_trained_weights(weights)]
    if not trained:
        return None
    return min(trained, key=lambda n: (n.endswith(VARIANT_SUFFIXES), n))


def random_weights_warning(model: str, models: Mapping[str, str | None]) -> str | None:
    """The warning for a prediction by ``model`` (None when its weights are not random), naming a served
    model with trained weights to use instead when there is one.

    >>> random_weights_warning("resnet50", {"resnet50": "random", "lite0": "pkg==0.1.0"})
    'this model has random weights: its predictions are meaningless; lite0 has trained weights: ?model=lite0'
    """
    if models.get(model) != RANDOM:
        return None
    other = trained_alternative(models)
    if other is None:
        return f"{RANDOM_WARNING}; export trained weights (python -m export --weights DEFAULT or a checkpoint)"
    return f"{RANDOM_WARNING}; {other} has trained weights: ?model={other}"


def preferred_model(initial: str | None, models: Mapping[str, str | None]) -> str | None:
    """The model a client should preselect: ``initial`` (the service's default), unless its weights are
    random and another served model's are trained."""
    if initial is not None and models.get(initial) != RANDOM:
        return initial
    return trained_alternative(models) or initial
