"""Runtimes behind one Protocol (``base.Runtime``), found through one registry (``registry``)."""

from __future__ import annotations

from modelrepo.config import model_kind
from service.runtimes.base import LoadSpec, Runtime
from service.runtimes.registry import Choice, choose, require

__all__ = ["Choice", "LoadSpec", "Runtime", "choose", "load_choice", "load_runtime", "model_kind", "require"]


def load_runtime(kind: str, spec: LoadSpec, preference: str = "auto", device: str = "auto") -> tuple[Runtime, Choice]:
    """Choose the runtime for a model of ``kind``, create it and load ``spec`` on the chosen device."""
    choice = choose(kind, preference, device)
    return load_choice(choice, spec), choice


def load_choice(choice: Choice, spec: LoadSpec) -> Runtime:
    """Create the chosen runtime and load ``spec`` on the chosen device (one instance)."""
    import dataclasses

    runtime = choice.info.create()
    runtime.load(dataclasses.replace(spec, device=choice.device))
    return runtime
