"""One declared minimum Python: pyproject's requires-python, ruff's target and mypy's version agree."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_linters_check_the_declared_minimum_python() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    m = re.fullmatch(r">=\s*3\.(\d+)", cfg["project"]["requires-python"])
    assert m, cfg["project"]["requires-python"]
    minor = int(m.group(1))
    assert cfg["tool"]["mypy"]["python_version"] == f"3.{minor}"
    assert cfg["tool"]["ruff"]["target-version"] == f"py3{minor}"
    assert sys.version_info >= (3, minor)
    readme = (ROOT / "README.md").read_text()
    assert f"Python 3.{minor}+" in readme
