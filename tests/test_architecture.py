"""The architecture the folders promise, checked from the source: no import cycles, and the layers.

Every ``import`` counts, including those inside functions (a lazy import is still a dependency).
Read with ``ast``, so nothing is imported and the check takes milliseconds.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "export", "modelrepo", "loadtest", "imgserve_cli")




def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (a ``from a.b import c`` may name module ``a.b.c``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for mod, path in known.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                names = [f"{base}.{a.name}" for a in node.names] or [base]
            for n in names:
                target = _resolve(n, known)
                if target and target != mod and target.split(".")[0] in PACKAGES:
                    graph[mod].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_parent_package(a: str, b: str) -> bool:
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_cycles() -> None:
    graph = import_graph()
    # a package's __init__ re-exporting its own modules is not a cycle between parts of the design
    pruned = {m: {t for t in ts if not _is_parent_package(m, t)} for m, ts in graph.items()}
    assert _cycles(pruned) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(("layer", "must_not_import"), [
    ("modelrepo", ("service", "export", "loadtest", "imgserve_cli")),  # the shared format depends on neither side
    ("service", ("export", "loadtest", "imgserve_cli")),  # the service never imports the exporter
    # nor the exporter the service: the image preprocessing both must compute alike is the repository
    # format's (modelrepo.image_preprocess), below both
    ("export", ("service", "loadtest", "imgserve_cli")),
    # the `imgserve` command sits above everything: it runs the packages' entry points (imported by name,
    # when a subcommand runs), and nothing imports it
    ("loadtest", ("imgserve_cli",)),
    ("service.engine", ("service.http", "service.grpc_api", "service.kserve")),  # nor of any protocol
    ("service.kserve", ("service.http", "service.grpc_api")),  # KServe v2 is the same over HTTP and gRPC
    ("service.grpc_api", ("service.http",)),  # gRPC is a protocol beside HTTP, not behind it
    ("service.http", ("service.grpc_api.servicer", "service.grpc_api.tensors")),  # the app only starts gRPC
    ("service.runtimes", ("service.http", "service.engine")),  # nor do the runtimes of what drives them
])
def test_layers(layer: str, must_not_import: tuple[str, ...]) -> None:
    graph = import_graph()
    def within(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    bad = sorted(
        f"{m} -> {t}" for m, ts in graph.items() if within(m, layer)
        for t in ts if any(within(t, p) for p in must_not_import)
    )
    assert bad == []


def test_a_front_end_loads_no_runtime_and_no_engine_internals() -> None:
    """What a front end of --processes N imports (its app and its remote engine): no runtime package,
    no torch, and none of the engine's model-owning modules (they load runtimes)."""
    code = ("import sys, service.http.app, service.engine.remote, service.http.http_server; "
            "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         timeout=120).stdout.split()
    forbidden = ("onnxruntime", "openvino", "torch", "tensorrt", "service.engine.manager",
                 "service.engine.loading", "service.engine.batching", "service.engine.process")
    assert [m for m in out if m.split(".")[0] in forbidden[:4] or m in forbidden] == []


@pytest.mark.parametrize("package", ["service", "modelrepo", "export", "loadtest", "deploy", "imgserve_cli"])
def test_modules_and_functions_stay_small(package: str) -> None:
    """House style: a module past ~400 lines or a function past ~60 is split."""
    long_modules, long_functions = [], []
    for path in sorted((ROOT / package).rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > 400:
            long_modules.append(str(path.relative_to(ROOT)))
        for node in ast.walk(ast.parse(text)):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > 60:
                long_functions.append(f"{path.relative_to(ROOT)}:{node.name}")
    assert (long_modules, long_functions) == ([], [])
