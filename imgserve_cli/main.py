"""``imgserve <command> [options]``: dispatch to the module behind ``<command>`` (``imgserve_cli.commands``).

The module is imported when its command runs, never for ``imgserve --help``, and gets the rest of the
command line unchanged: its own parser reads it, so its options, help and errors are its own. Its parser's
``prog`` (``python -m export``) reads ``imgserve export`` while it runs, as does ``sys.argv[0]``.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any

from imgserve_cli.commands import BY_NAME, COMMANDS, Command

USAGE = "usage: imgserve <command> [options]\n       imgserve <command> --help   (the command's own options)"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("imgserve")
    except PackageNotFoundError:
        return "unknown (not installed)"


def help_text() -> str:
    width = max(len(c.name) for c in COMMANDS) + 2
    lines = [USAGE, "", "Export image-classification models, serve them with dynamic batching, classify images, "
             "measure.", "", "commands:"]
    lines += [f"  {c.name:<{width}}{c.summary}" for c in COMMANDS]
    lines += [f"  {'version':<{width}}print imgserve's version", "",
              "Each command takes the options of what it runs, as listed; that runs the same way on its own:"]
    lines += [f"  imgserve {c.name:<{width}}= {c.source}" for c in COMMANDS]
    return "\n".join(lines) + "\n"


def _error(message: str) -> int:
    print(f"{USAGE}\nimgserve: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(help_text(), file=sys.stderr, end="")
        return _error("a command is required")
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help", "help"):
        print(help_text(), end="")
        return 0
    if name in ("version", "--version", "-V"):
        print(f"imgserve {version()}")
        return 0
    if name not in BY_NAME:
        close = difflib.get_close_matches(name, [*BY_NAME, "version"], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return _error(f"unknown command {name!r}{hint} (choose from {', '.join([*BY_NAME, 'version'])})")
    return run(BY_NAME[name], rest)


def run(cmd: Command, argv: list[str]) -> int:
    """``cmd``'s module's ``main`` on ``argv``; its exit status (a ``SystemExit`` it raises passes through)."""
    try:
        entry = importlib.import_module(cmd.module).main
    except ModuleNotFoundError as e:
        print(f"imgserve {cmd.name}: {_missing(cmd, e)}", file=sys.stderr)
        return 1
    except AttributeError:
        print(f"imgserve {cmd.name}: {cmd.module} has no main() in this installation", file=sys.stderr)
        return 1
    if cmd.locustfile and not any(a in ("-f", "--locustfile") or a.startswith("--locustfile=") for a in argv):
        spec = importlib.util.find_spec(cmd.locustfile)
        if spec is not None and spec.origin:
            argv = ["-f", spec.origin, *argv]
        print(f"imgserve {cmd.name}: locust {' '.join(argv)}", file=sys.stderr)  # its help reads "locust"
    saved = sys.argv
    sys.argv = [f"imgserve {cmd.name}", *argv]
    try:
        with _prog_renamed(cmd.prog, f"imgserve {cmd.name}"):
            result = entry(argv) if _takes_argv(entry) else entry()
    finally:
        sys.argv = saved
    return 0 if result is None else int(result)


def _missing(cmd: Command, e: ModuleNotFoundError) -> str:
    """Why ``cmd`` cannot run: its module is absent from this installation, or a dependency is."""
    if e.name and (cmd.module == e.name or cmd.module.startswith(e.name + ".")):
        return f"this installation has no {cmd.module} ({e})"
    fix = f": pip install 'imgserve[{cmd.extra}]'" if cmd.extra else ""
    return f"needs the Python package {e.name or '?'!r}, which is not installed{fix} ({e})"


def _takes_argv(entry: Callable[..., Any]) -> bool:
    try:
        return bool(inspect.signature(entry).parameters)
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def _prog_renamed(old: str | None, new: str) -> Iterator[None]:
    """While it lasts, an ``argparse`` parser created with ``prog=old`` gets ``prog=new`` (its usage and
    errors read ``imgserve <command>``); parsers with any other prog are left alone."""
    if old is None:
        yield
        return
    init = argparse.ArgumentParser.__init__

    def renamed(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("prog") == old:
            kwargs["prog"] = new
        elif args and args[0] == old:
            args = (new, *args[1:])
        init(self, *args, **kwargs)

    argparse.ArgumentParser.__init__ = renamed  # type: ignore[method-assign]
    try:
        yield
    finally:
        argparse.ArgumentParser.__init__ = init  # type: ignore[method-assign]
