"""Helpers for the exporter tests: run the CLI in-process or as a subprocess, snapshot a repository."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from export.cli import main

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    rc: int
    out: str
    err: str


def run_cli(*argv: str) -> Run:
    """``main(argv)`` in-process, capturing what it prints."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return Run(rc, out.getvalue(), err.getvalue())


def run_subprocess(*argv: str, timeout: float = 300) -> Run:
    """``python -m export`` as a real subprocess of the same interpreter."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "export", *argv], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    return Run(p.returncode, p.stdout, p.stderr)


def snapshot(repo: Path) -> set[str]:
    """Every path under ``repo`` (to assert that a failed export left nothing behind)."""
    return {str(p.relative_to(repo)) for p in repo.rglob("*")} if repo.exists() else set()
