"""The model repository extension, the same over HTTP (``/v2/repository/...``) and gRPC
(``RepositoryIndex``, ``RepositoryModelLoad``, ``RepositoryModelUnload``): what is in the repository and
in which state, in Triton's words (READY, LOADING, UNAVAILABLE, with the reason)."""

from __future__ import annotations

from service.engine.client import EngineClient


def _triton_state(state: str) -> str:
    if state == "ready":
        return "READY"
    if state in ("loading", "pending"):
        return "LOADING"
    return "UNAVAILABLE"


async def index(client: EngineClient) -> list[dict[str, str]]:
    """One entry per served version (and one per model that serves none, with why), sorted by name."""
    await client.sync()
    out = []
    for d in await client.describe_all():
        reason = "" if d.state == "ready" else d.state
        out += [{"name": d.name, "version": v, "state": _triton_state(d.state), "reason": reason}
                for v in d.versions or [""]]
    return sorted(out, key=lambda m: (m["name"], m["version"]))
