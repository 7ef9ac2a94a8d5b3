"""Which loaded model version answers a request for ``name`` (and ``version``): one pure function used by
the engine's manager and by a front end's copy of the engine's catalog, so both answer alike."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from service.errors import ModelNotFound, ModelNotReady


def lookup(
    name: str,
    version: str | None,
    loaded: Mapping[str, Collection[int]],
    states: Mapping[str, str],
    routes: Mapping[str, tuple[str, str]],
    fallbacks: Mapping[str, str],
) -> tuple[str, int]:
    """The (model, version) serving the request: ``--runtime auto`` routes (latest only), fallbacks (a plan
    that cannot run here -> its ONNX model), else 404 for unknown names and versions, 503 not ready."""
    if name in routes and not version:
        name = routes[name][0]
    versions = loaded.get(name)
    if not versions and name in fallbacks:
        return lookup(fallbacks[name], version, loaded, states, routes, {})
    if not versions:
        state = states.get(name)
        if state is None:
            served = ", ".join(sorted(set(states) | set(loaded))) or "none"
            raise ModelNotFound(f"unknown model {name!r}; served models: {served} (GET /models)")
        raise ModelNotReady(f"model {name!r} is not ready ({state})", retry_after_s=2)
    if not version:
        return name, max(versions)
    if not version.isdigit() or int(version) not in versions:
        raise ModelNotFound(
            f"model {name!r} has no loaded version {version!r}; loaded: {', '.join(map(str, sorted(versions)))}"
        )
    return name, int(version)
