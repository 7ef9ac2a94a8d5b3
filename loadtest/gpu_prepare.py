"""``make gpu-check`` step 1, on this machine: everything the GPU machine lacks, into ``.gpucheck/``.

The lent GPU machine has PyTorch + CUDA, torchvision, onnxruntime, numpy, Pillow, prometheus-client,
uvloop and httpx, and nothing from the internet. This builds what the service needs beyond that as
Python 3.12 wheels (versions from constraints.txt), fetches Debian's ``wrk`` (the load generator)
with its LuaJIT library, and writes the JPEG corpus; the folder (git-ignored, ~10 MB) travels with
the device call (``carry``), whose command ``DEVICE_COMMAND`` prints.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREP = ROOT / ".gpucheck"
#: what the service and the exporter import that the GPU machine's image does not have (or has too old)
WHEELS = [
    "fastapi", "fastapi_offline", "starlette", "annotated-doc", "pydantic", "pydantic_core", "pydantic-settings",
    "python-dotenv", "typing-inspection", "annotated-types", "typing_extensions", "uvicorn", "httptools",
    "orjson", "python-multipart", "tritonclient", "python-rapidjson", "protobuf", "opentelemetry-api",
]
DEBS = ["wrk", "libluajit-5.1-2", "libssl3"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64"]
DEVICE_COMMAND = (
    "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
    ".gpucheck/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && "
    "python3 -m loadtest.gpu_check run --prep .gpucheck --out $OUT"
)


def pinned(names: list[str]) -> list[str]:
    """``name==version`` for each name, the version from constraints.txt (names compared normalised)."""
    def norm(n: str) -> str:
        return n.lower().replace("_", "-")

    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            pins[norm(name.strip())] = version.strip()
    missing = [n for n in names if norm(n) not in pins]
    if missing:
        raise SystemExit(f"constraints.txt pins no version of {', '.join(missing)}")
    return [f"{n}=={pins[norm(n)]}" for n in names]


def wheels(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.12", "--implementation", "cp", "--dest", str(dest)]
    for p in PLATFORMS:
        argv += ["--platform", p]
    print(f"gpu-check: downloading {len(WHEELS)} wheels for Python 3.12 into {dest}", flush=True)
    subprocess.run(argv + pinned(WHEELS), check=True)


def debs(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if all(any(dest.glob(f"{name}_*.deb")) for name in DEBS):
        return
    print(f"gpu-check: downloading {', '.join(DEBS)} (Debian) into {dest}", flush=True)
    run = subprocess.run(["apt-get", "download", *DEBS], cwd=dest, capture_output=True, text=True)
    if run.returncode != 0:  # package lists not there yet
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "download", *DEBS], cwd=dest, check=True)


def corpus(dest: Path) -> list[Path]:
    """Real photos (scikit-image's samples) as JPEGs of several sizes, as web clients send them."""
    from PIL import Image
    from skimage import data

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for name in ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry"):
        arr = getattr(data, name)()
        buf = io.BytesIO()
        Image.fromarray(arr).convert("RGB").save(buf, "JPEG", quality=90)
        path = dest / f"{name}.jpg"
        path.write_bytes(buf.getvalue())
        out.append(path)
    return out


def prepare(prep: Path = PREP) -> None:
    wheels(prep / "whl")
    debs(prep / "deb")
    corpus(prep / "corpus")
    size = sum(f.stat().st_size for f in prep.rglob("*") if f.is_file())
    print(f"gpu-check: {prep} is ready ({size / 1e6:.1f} MB). On the GPU machine (device tool, carry "
          f"[\"{prep.relative_to(ROOT)}\"]) run:\n  {DEVICE_COMMAND}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m loadtest.gpu_prepare", description=__doc__)
    p.add_argument("--prep", type=Path, default=PREP)
    args = p.parse_args(argv)
    prepare(args.prep)


if __name__ == "__main__":
    main()
