"""The access rules in the OpenAPI schema: which operations may answer 401, 403 and 429."""

from __future__ import annotations

from typing import Any

from service.access import is_admin_route, is_open

_REFUSALS = {
    "401": "missing or wrong API key",
    "403": "a serving key on an admin route: it needs an admin key",
    "429": "over the key's rate limit (Retry-After)",
}


def document_access(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the 401/429 every protected operation may answer, and the admin routes' 403, to an OpenAPI schema."""
    for path, ops in schema.get("paths", {}).items():
        if is_open(path):
            continue
        for method, op in ops.items():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            codes = ["401", "429"] + (["403"] if is_admin_route(method.upper(), path) else [])
            for code in codes:
                resp: dict[str, Any] = {"description": _REFUSALS[code]}
                if not path.startswith("/v2"):  # v2 answers {"error": "<message>"}, Triton's shape
                    resp["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
                op["responses"].setdefault(code, resp)
    return schema
