"""Command-line client: ``python -m service.client IMAGE... [--url] [--model] [--top-k] [--json] [--api-key]``.

Arguments may be files, directories (searched recursively for images) or glob patterns. Images are sent
one per request, several requests at a time (``--concurrency``), and reported in the order given.

Exit codes: 0 every image classified; 2 a client error (bad arguments, no images, a 4xx answer such as a
bad image or an unknown model); 3 a server error (5xx); 4 the service could not be reached (connection
refused, timeout). With several images the worst outcome wins (4 > 3 > 2 > 0).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import mimetypes
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx

from service.advice import random_weights_warning

OK, CLIENT_ERROR, SERVER_ERROR, CONNECTION_ERROR = 0, 2, 3, 4
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
DEFAULT_URL = "http://127.0.0.1:8000"


class UsageError(Exception):
    """A problem with the arguments, reported before anything is sent."""


@dataclass
class Outcome:
    path: Path
    exit_code: int = OK
    body: dict[str, Any] = field(default_factory=dict)
    server_timing: str | None = None
    error: dict[str, str] | None = None
    status: int | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": str(self.path), "status": self.status}
        if self.error is not None:
            out["error"] = self.error
            return out
        result = self.body["results"][0]
        out.update(model=self.body["model"], version=self.body["version"], predictions=result["predictions"])
        if "warning" in self.body:
            out["warning"] = self.body["warning"]
        if self.server_timing:
            out["server_timing"] = parse_server_timing(self.server_timing)
        return out


def parse_server_timing(header: str) -> dict[str, float]:
    """``queue;dur=0.12, infer;dur=9.8`` -> ``{"queue": 0.12, "infer": 9.8}`` (milliseconds)."""
    stages: dict[str, float] = {}
    for part in header.split(","):
        name, *params = (p.strip() for p in part.split(";"))
        for p in params:
            if p.startswith("dur="):
                with contextlib.suppress(ValueError):
                    stages[name] = float(p[4:])
    return stages


def expand(args: list[str]) -> list[Path]:
    """Files as given, directories searched recursively for images, globs expanded; duplicates dropped."""
    found: list[Path] = []
    for arg in args:
        p = Path(arg).expanduser()
        if p.is_dir():
            matches = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise UsageError(f"{arg}: directory has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.extend(matches)
        elif p.is_file():
            found.append(p)
        elif glob.has_magic(arg):
            hits = sorted(Path(m) for m in glob.glob(os.path.expanduser(arg), recursive=True))
            files = [h for h in hits if h.is_file()]
            if not files:
                raise UsageError(f"{arg}: no files match this pattern")
            found.extend(files)
        else:
            raise UsageError(f"{arg}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def classify_one(client: httpx.Client, path: Path, params: dict[str, str]) -> Outcome:
    out = Outcome(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        out.exit_code, out.error = CLIENT_ERROR, {"code": "unreadable_file", "message": f"cannot read: {e.strerror}"}
        return out
    ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    try:
        r = client.post("/classify", params=params, files=[("file", (path.name, data, ctype))])
    except httpx.TransportError as e:
        kind = "timed out" if isinstance(e, httpx.TimeoutException) else "could not connect"
        out.exit_code = CONNECTION_ERROR
        out.error = {"code": "connection_error", "message": f"{kind} to {client.base_url}: {e or type(e).__name__}"}
        return out
    out.status = r.status_code
    if r.status_code == 200:
        out.body, out.server_timing = r.json(), r.headers.get("server-timing")
        return out
    out.exit_code = SERVER_ERROR if r.status_code >= 500 else CLIENT_ERROR
    out.error = error_of(r)
    return out


def error_of(r: httpx.Response) -> dict[str, str]:
    """The service's own ``{"error": {"code", "message"}}``, or what can be made of another answer."""
    try:
        err = r.json().get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict) and "message" in err:
        out = {"code": str(err.get("code", r.status_code)), "message": str(err["message"])}
        if err.get("help"):  # the code's entry in the error catalogue
            out["help"] = str(err["help"])
        return out
    if isinstance(err, str):
        return {"code": str(r.status_code), "message": err}
    return {"code": str(r.status_code), "message": r.text[:300] or r.reason_phrase}


def describe(error: dict[str, str]) -> str:
    """``code: message``, and where the error catalogue says what to do about it when the answer linked it."""
    text = f"{error['code']}: {error['message']}"
    return f"{text} (see {error['help']})" if error.get("help") else text


def advise(client: httpx.Client, outcomes: list[Outcome]) -> None:
    """Replace each random-weights warning with the advice naming a served model with trained weights
    (from ``GET /models``); the service's own text stays when the listing cannot be had."""
    warned = [o for o in outcomes if o.error is None and "warning" in o.body]
    if not warned:
        return
    try:
        r = client.get("/models")
        listed = r.json().get("models", []) if r.status_code == 200 else []
    except (httpx.HTTPError, ValueError, AttributeError):
        return
    weights = {m["name"]: m.get("weights") for m in listed if isinstance(m, dict) and "name" in m}
    for o in warned:
        better = random_weights_warning(o.body["model"], weights)
        if better is not None:
            o.body["warning"] = better


def print_table(outcomes: list[Outcome], out: TextIO, err: TextIO) -> None:
    warnings: set[str] = set()
    for o in outcomes:
        if o.error is not None:
            status = f"HTTP {o.status} " if o.status else ""
            print(f"{o.path}: error: {status}{describe(o.error)}", file=err)
            continue
        preds = o.body["results"][0]["predictions"]
        timing = parse_server_timing(o.server_timing or "")
        stages = ", ".join(f"{k} {v:.1f} ms" for k, v in timing.items())
        print(f"{o.path}  ({o.body['model']} v{o.body['version']}{'; ' + stages if stages else ''})", file=out)
        width = max((len(p["label"]) for p in preds), default=5)
        print(f"  {'#':>2}  {'score':>7}  {'label':<{width}}  index", file=out)
        for rank, p in enumerate(preds, 1):
            print(f"  {rank:>2}  {p['score'] * 100:6.2f}%  {p['label']:<{width}}  {p['index']}", file=out)
        if "warning" in o.body:
            warnings.add(f"{o.body['model']}: {o.body['warning']}")
    for w in sorted(warnings):
        print(f"warning: {w}", file=err)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m service.client",
        description="Classify images with a running imgserve service.",
        epilog="exit codes: 0 success, 2 client error (arguments, 4xx), 3 server error (5xx), 4 connection failure",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, directories or glob patterns")
    p.add_argument("--url", default=os.environ.get("IMGSERVE_URL", DEFAULT_URL),
                   help=f"service address (env IMGSERVE_URL, default {DEFAULT_URL})")
    p.add_argument("--model", help="model name (default: the service's default model)")
    p.add_argument("--version", dest="model_version", help="model version (default: latest)")
    p.add_argument("--top-k", type=int, default=5, help="predictions per image (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--api-key", default=os.environ.get("IMGSERVE_API_KEY"),
                   help="API key, sent as 'Authorization: Bearer KEY' (env IMGSERVE_API_KEY)")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer (default 60)")
    return p


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
        if args.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, got {args.concurrency}")
        paths = expand(args.images)
    except UsageError as e:
        print(f"error: {e}", file=err)
        return CLIENT_ERROR
    params = {"top_k": str(args.top_k)}
    if args.model:
        params["model"] = args.model
    if args.model_version:
        params["version"] = args.model_version
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=args.concurrency)
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout, limits=limits) as client, \
            ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        outcomes = list(pool.map(lambda p: classify_one(client, p, params), paths))
        advise(client, outcomes)
    if args.json:
        json.dump([o.as_json() for o in outcomes], out, indent=2)
        out.write("\n")
        for o in outcomes:
            if o.error is not None:
                print(f"{o.path}: error: {describe(o.error)}", file=err)
    else:
        print_table(outcomes, out, err)
    return max((o.exit_code for o in outcomes), default=OK)


if __name__ == "__main__":
    sys.exit(main())
