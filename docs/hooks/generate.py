"""MkDocs hook: the reference pages that can be generated are generated from the code at build time.

A page asks for a block with a marker line, ``<!-- generated: NAME -->``; ``on_page_markdown`` replaces it.

- ``settings``: every field of ``service.config.Settings`` (flag, environment variable, type, default, what);
- ``limits``: ``service.access.limits_table()``, the limits a client runs into (the same rows the service prints);
- ``metrics``: every collector of ``service.metrics.Metrics`` and the NVML GPU collector (name, type, labels, help);
- ``errors``: ``service.error_catalogue.render_markdown()``, built from the one error map;
- ``openapi``: the app's own OpenAPI schema (``create_app(...).openapi()``) as a table of operations; the whole
  schema is also written into the site as ``openapi.json`` (``on_files``), so pages can link to it.

Nothing generated is committed: it cannot drift from the code. An unknown marker fails the build.
"""

from __future__ import annotations

import json
import re
import tempfile
import types
import typing
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

MARKER = re.compile(r"^<!-- generated: ([a-z0-9_-]+) -->$", re.MULTILINE)

#: defaults computed when the settings class is imported: the docs say what they mean, not this machine's value
_DYNAMIC_DEFAULTS = {"workers": "one per CPU core"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    name = getattr(annotation, "__name__", str(annotation))
    return {"SecretStr": "secret", "Path": "path", "str": "text", "int": "integer", "float": "number",
            "bool": "on/off"}.get(name, name)


def settings_table() -> str:
    from service.config import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    rows = ["| flag, environment variable | type | default | what |", "| --- | --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        flags = f"`{flag}` / `--no-{flag[2:]}`" if info.annotation is bool else f"`{flag}`"
        if name in _DYNAMIC_DEFAULTS:
            default = _DYNAMIC_DEFAULTS[name]
        elif info.default is None:
            default = "unset"
        elif isinstance(info.default, Path):
            default = f"`{info.default}`"
        else:
            default = f"`{json.dumps(info.default) if isinstance(info.default, list) else info.default}`"
        rows.append(f"| {flags}<br>`{prefix}{name.upper()}` | {_type_name(info.annotation)} | {default} "
                    f"| {_cell(info.description or '')} |")
    return "\n".join(rows)


def limits_table() -> str:
    from service.access import limits_table as table

    return table()


def metric_families() -> list[tuple[str, str, list[str], str]]:
    """(exposed name, type, labels, help) of every metric the service can expose, from the collectors."""
    from prometheus_client.metrics import MetricWrapperBase

    from service.metrics import Metrics, _GpuCollector

    metrics = Metrics()
    out = []
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        for family in collector.describe():
            name = family.name + ("_total" if family.type == "counter" else "")
            out.append((name, family.type, list(collector._labelnames), family.documentation))
    # GPU series exist only where NVML sees a GPU: describe them through a collector that reads none
    for family in _GpuCollector(nvml=None, count=0).collect():
        out.append((family.name, family.type, list(getattr(family, "_labelnames", ())), family.documentation))
    return out


def metrics_table() -> str:
    rows = ["| metric | type | labels | what |", "| --- | --- | --- | --- |"]
    for name, kind, labels, doc in metric_families():
        shown = ", ".join(f"`{label}`" for label in labels) or "–"
        rows.append(f"| `{name}` | {kind} | {shown} | {_cell(doc)} |")
    return "\n".join(rows)


def errors_catalogue() -> str:
    from service.error_catalogue import render_markdown

    return render_markdown()


@cache
def openapi_schema() -> dict[str, Any]:
    from service.config import Settings
    from service.http.app import create_app

    with tempfile.TemporaryDirectory() as repo:  # an empty repository: the schema needs no model
        return create_app(Settings(model_repo=Path(repo))).openapi()


def openapi_table() -> str:
    schema = openapi_schema()
    rows = ["| method | path | what | answers |", "| --- | --- | --- | --- |"]
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            summary = op.get("summary") or op.get("operationId", "")
            statuses = ", ".join(sorted(op.get("responses", {})))
            rows.append(f"| `{method.upper()}` | `{path}` | {_cell(summary)} | {statuses} |")
    info = schema.get("info", {})
    return (f"The app's own schema (`{info.get('title', '')}` {info.get('version', '')}, OpenAPI "
            f"{schema.get('openapi', '')}): download it as [openapi.json](../openapi.json), or read it live at "
            "`/docs` (Swagger UI) and `/redoc` on a running service.\n\n" + "\n".join(rows))


GENERATORS: dict[str, Callable[[], str]] = {
    "settings": settings_table,
    "limits": limits_table,
    "metrics": metrics_table,
    "errors": errors_catalogue,
    "openapi": openapi_table,
}


def on_files(files: Files, config: Any) -> Files:
    files.append(File.generated(config, "openapi.json", content=json.dumps(openapi_schema(), indent=2) + "\n"))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    def replace(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in GENERATORS:
            raise KeyError(f"{page.file.src_uri}: unknown generated block {name!r} (known: {', '.join(GENERATORS)})")
        return GENERATORS[name]().rstrip() + "\n"

    return MARKER.sub(replace, markdown)
