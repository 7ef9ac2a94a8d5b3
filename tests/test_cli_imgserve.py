"""``imgserve``: the one command (imgserve_cli) lists its subcommands, hands each one's arguments unchanged to
the module behind it (whose help then reads ``imgserve <sub>``), and imports nothing heavy for its own help."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from imgserve_cli import main as cli
from imgserve_cli.commands import COMMANDS, Command

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "imgserve"


def imgserve(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The installed console script (``pip install -e .``), else ``python -m imgserve_cli``."""
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "imgserve_cli"]
    return subprocess.run([*cmd, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_subcommand() -> None:
    r = imgserve("--help")
    assert r.returncode == 0, r.stderr
    listed = [ln.split()[0] for ln in r.stdout.split("commands:\n")[1].split("\n\n")[0].splitlines()]
    assert listed == [c.name for c in COMMANDS] + ["version"]
    for c in COMMANDS:
        assert f"imgserve {c.name}" in r.stdout and c.source in r.stdout


def test_help_imports_none_of_the_packages() -> None:
    code = ("import sys; from imgserve_cli.main import main; main(['--help']); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'numpy', 'service', 'export', 'loadtest', 'modelrepo', 'locust', 'pydantic')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    assert r.stdout.splitlines()[-1] == "[]"


def _available(cmd: Command) -> bool:
    """Whether ``cmd``'s module is here, without importing it (nor another project's package: importing locust
    monkey-patches this process with gevent)."""
    top = cmd.module.split(".")[0]
    if not (ROOT / top).is_dir():
        return importlib.util.find_spec(top) is not None
    path = ROOT.joinpath(*cmd.module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("cmd", COMMANDS, ids=[c.name for c in COMMANDS])
def test_each_subcommand_help_is_its_module_help_named_imgserve(cmd: Command) -> None:
    if not _available(cmd):
        pytest.skip(f"{cmd.module} is not in this checkout")
    r = imgserve(cmd.name, "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"imgserve {cmd.name}" in r.stdout + r.stderr
    if cmd.prog:  # its own parser, renamed: usage: imgserve <sub> [-h] ...
        assert r.stdout.startswith(f"usage: imgserve {cmd.name} ")
    else:
        assert "locustfile.py" in r.stderr and "--locustfile" in r.stdout


def test_an_unknown_subcommand_exits_2_naming_the_choices() -> None:
    r = imgserve("servee")
    assert r.returncode == 2
    assert "unknown command 'servee'; did you mean 'serve'?" in r.stderr and "classify" in r.stderr
    assert imgserve().returncode == 2


def test_version() -> None:
    r = imgserve("version")
    assert r.returncode == 0 and r.stdout.startswith("imgserve ")


def test_classify_help_is_the_clients_own(capsys: pytest.CaptureFixture[str]) -> None:
    """The real dispatch, in-process: the same options as ``python -m service.client --help``."""
    from service.client import build_parser

    parser = build_parser()
    assert parser.prog == "python -m service.client"  # `python -m service.client` keeps its own name
    parser.prog = "imgserve classify"
    own = parser.format_help()
    argv0, init = sys.argv[0], argparse.ArgumentParser.__init__
    with pytest.raises(SystemExit) as e:
        cli.main(["classify", "--help"])
    assert e.value.code == 0 and capsys.readouterr().out == own
    assert sys.argv[0] == argv0 and argparse.ArgumentParser.__init__ is init  # put back afterwards


@pytest.fixture
def fake_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "imgserve_fake_argv.py").write_text(
        "import argparse\n"
        "def main(argv):\n"
        "    print(argparse.ArgumentParser(prog='python -m imgserve_fake_argv').prog, argv)\n"
        "    return 3\n")
    (tmp_path / "imgserve_fake_sysargv.py").write_text("import sys\ndef main():\n    print(sys.argv)\n")
    (tmp_path / "imgserve_fake_needs.py").write_text("import imgserve_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_arguments_pass_unchanged_and_the_status_comes_back(fake_modules: None,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--flag", "value", "--", "-x", "a b"]
    assert cli.run(Command("fake", "imgserve_fake_argv", "", prog="python -m imgserve_fake_argv"), argv) == 3
    assert capsys.readouterr().out == f"imgserve fake {argv}\n"
    assert cli.run(Command("fake", "imgserve_fake_sysargv", ""), ["-q"]) == 0
    assert capsys.readouterr().out == "['imgserve fake', '-q']\n"


def test_a_missing_module_fails_only_its_subcommand(fake_modules: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.run(Command("tune", "imgserve_fake_absent.cli", "", extra="loadtest"), ["--help"]) == 1
    assert "imgserve tune: this installation has no imgserve_fake_absent.cli" in capsys.readouterr().err
    assert cli.run(Command("bench", "imgserve_fake_needs", "", extra="loadtest"), []) == 1
    err = capsys.readouterr().err
    assert "'imgserve_no_such_dependency'" in err and "pip install 'imgserve[loadtest]'" in err
    assert cli.main(["version"]) == 0  # the command itself still works
