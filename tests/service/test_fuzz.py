"""Fuzzing a real server: its own OpenAPI schema (schemathesis), hostile /classify requests (hypothesis),
and the server's memory after thousands of bad requests.

Every answer must be < 500 (4xx in the JSON error shape; a 503/504 only where the client asked for a
deadline under a second), no request may hang (client timeouts), and the server must still be ready
after each fuzzer: every test checks that itself, so any one of them can run alone or in any order.
Generation is derandomized so CI runs the same cases every time; ``FUZZ_SCALE=10`` runs ten times as
many (``FUZZ_RANDOM=1`` draws new ones).
"""

from __future__ import annotations

import io
import os
import random
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from skimage import data as skdata

from tests.service.conftest import API_KEY, Server, start_server

pytestmark = pytest.mark.slow

ADMIN_KEY = "fuzz-admin-key"
MODEL = "resnet18"
MAX_UPLOAD = 256 * 1024
MAX_IMAGES = 4
#: RSS may grow by at most this much over its warmed-up baseline during the bad-request flood
RSS_BOUND_MIB = 64
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))
FUZZ = settings(
    deadline=None, database=None, derandomize=not os.environ.get("FUZZ_RANDOM"),
    suppress_health_check=list(HealthCheck),
)
#: requests sent, by kind, and properties of the /classify ones: printed when the module is done (``-s``)
KINDS: Counter[str] = Counter()
TAGS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary() -> Iterator[None]:
    """Prints what the fuzzers of this run sent (run with -s to see it), whichever of them ran."""
    yield
    print(f"\nfuzz requests by kind ({sum(KINDS.values())} in all):")
    for k, v in sorted(KINDS.items()):
        print(f"  {k:60s} {v}")
    for k, v in sorted(TAGS.items()):
        print(f"  ({k}: {v})")


@pytest.fixture(scope="module")
def fuzz_server(model_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(
        model_repo, tmp_path_factory.mktemp("fuzz"), "--api-key", API_KEY, "--admin-api-key", ADMIN_KEY,
        "--max-upload-bytes", str(MAX_UPLOAD), "--max-images-per-request", str(MAX_IMAGES),
        "--max-queue-delay-ms", "2", "--max-image-pixels", "4000000",
    )
    yield s
    s.stop()


def _assert_ready(server: Server) -> None:
    assert server.proc.poll() is None, server.logs()[-4000:]
    r = httpx.get(f"{server.url}/health/ready", timeout=10)
    assert r.status_code == 200, r.text


# -- a. the service's own OpenAPI schema -------------------------------------------------------
def _operations() -> list[str]:
    """The operations the app documents (its schema built without a server, at collection time)."""
    from service.config import Settings
    from service.http.app import create_app

    paths = create_app(Settings(model_repo="/nonexistent")).openapi()["paths"]
    return [f"{method.upper()} {path}" for path, ops in paths.items() for method in ops]


@pytest.fixture(scope="module")
def live_schema(fuzz_server: Server) -> Any:
    """The schema as the running server serves it at GET /openapi.json."""
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


def _short_deadline(headers: Any) -> bool:
    """Whether the client asked for a deadline under a second: then 503/504 is a documented answer (how
    long a batch takes is the machine's business)."""
    try:
        ms = float((headers or {}).get("X-Request-Timeout-Ms", "nan"))
    except (TypeError, ValueError):
        return False
    return 0 < ms < 1000


@pytest.mark.parametrize("label", _operations())
def test_openapi_operation(label: str, live_schema: Any, fuzz_server: Server) -> None:
    """Each operation, positive and negative cases, with the admin key: never a 5xx; still ready after."""
    method, path = label.split(" ", 1)
    operation = live_schema[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(FUZZ, max_examples=50 * SCALE)
    def run(case: Any) -> None:
        if path.endswith(("/load", "/unload")) and (case.path_parameters or {}).get("name") == MODEL:
            return  # unloading the served model would make the rest of the run answer 503 by design
        KINDS[f"openapi: {label}"] += 1
        response = case.call(base_url=fuzz_server.url, headers={"X-API-Key": ADMIN_KEY}, timeout=15)
        if response.status_code in (503, 504) and _short_deadline(case.headers):
            # the client asked for a deadline shorter than a batch takes: the documented answer, not a fault
            assert response.json()["error"]["code"] in ("deadline_exceeded", "queue_full"), response.text
            KINDS["openapi: (documented 503/504 for a too-short X-Request-Timeout-Ms)"] += 1
            return
        assert response.status_code < 500, f"{label} -> {response.status_code}: {response.text[:500]}"
        case.validate_response(response, checks=[not_a_server_error])

    run()
    _assert_ready(fuzz_server)


# -- b. hypothesis-generated hostile /classify requests --------------------------------------
def _encoded(fmt: str, size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(skdata.chelsea()).resize(size).save(buf, fmt)
    return buf.getvalue()


JPEG, PNG = _encoded("JPEG"), _encoded("PNG")
RAW_TYPES = ["image/jpeg", "image/png", "image/webp", "image/bmp", "image/gif", "application/octet-stream"]
HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


def _png_with_size(w: int, h: int) -> bytes:
    """The real PNG with its IHDR claiming w x h (CRC fixed, so only the size lies)."""
    ihdr = struct.pack(">II", w, h) + PNG[24:29]
    return PNG[:16] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + PNG[33:]


def _jpeg_with_size(w: int, h: int) -> bytes:
    """The real JPEG with its SOF0 frame header claiming w x h."""
    i = JPEG.index(b"\xff\xc0")
    return JPEG[: i + 5] + struct.pack(">HH", h, w) + JPEG[i + 9 :]


@st.composite
def corrupted_image(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([JPEG, PNG])))
    how = draw(st.sampled_from(["truncate", "flip", "splice", "huge_dims"]))
    if how == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if how == "flip":
        for pos, val in draw(st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(0, 255)), max_size=64)):
            data[pos] = val
        return bytes(data)
    if how == "splice":
        cut = draw(st.integers(0, len(data)))
        return bytes(data[:cut]) + draw(st.binary(max_size=512)) + bytes(data[cut:])
    w, h = draw(st.integers(0, 65535)), draw(st.integers(0, 65535))
    return _png_with_size(w, h) if data[:4] == PNG[:4] else _jpeg_with_size(w, h)


IMAGE_BYTES = st.one_of(st.binary(max_size=2048), corrupted_image(), st.sampled_from([JPEG, PNG, b""]))


@st.composite
def raw_body(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes]:
    ctype = draw(st.one_of(st.sampled_from(RAW_TYPES), HEADER_TEXT,
                           st.sampled_from(RAW_TYPES).map(lambda t: t + "; x=y")))
    return "raw", {"Content-Type": ctype}, draw(IMAGE_BYTES)


@st.composite
def multipart_body(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes]:
    """Hand-built multipart: random boundaries, wrong or missing boundaries, duplicate / text / odd parts."""
    boundary = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='";'),
                            min_size=1, max_size=70))
    body_boundary = boundary if draw(st.booleans()) else draw(st.sampled_from([boundary, "other", boundary + "x"]))
    parts = []
    for _ in range(draw(st.integers(0, MAX_IMAGES + 2))):
        name = draw(st.sampled_from(["file", "file", "File", "image", ""]))
        disp = f'form-data; name="{name}"'
        if draw(st.booleans()):
            disp += f'; filename="{draw(st.sampled_from(["a.jpg", "", "../../etc/passwd", "x" * 300]))}"'
        head = f"Content-Disposition: {disp}\r\n"
        if draw(st.booleans()):
            head += f"Content-Type: {draw(st.sampled_from([*RAW_TYPES, 'text/plain', '']))}\r\n"
        if draw(st.integers(0, 9)) == 0:
            head = draw(st.sampled_from(["", "Content-Disposition: attachment\r\n", "garbage\r\n"]))
        parts.append(f"--{body_boundary}\r\n{head}\r\n".encode() + draw(IMAGE_BYTES) + b"\r\n")
    if parts and draw(st.booleans()):
        parts.append(parts[0])  # a duplicate part
    tail = draw(st.sampled_from([f"--{body_boundary}--\r\n".encode(), b"", f"--{body_boundary}".encode()]))
    ctype = draw(st.sampled_from(["multipart/form-data; boundary=" + boundary, "multipart/form-data",
                                  f'multipart/form-data; boundary="{boundary}"', "multipart/form-data; boundary="]))
    return "multipart", {"Content-Type": ctype}, b"".join(parts) + tail


QUERY_VALUE = st.one_of(st.text(max_size=30), st.integers(-(2**70), 2**70).map(str),
                        st.sampled_from(["", "0", "1", "5", "1000", "1001", MODEL, "²", "１", "../x", "%2e%2e"]))
#: mostly the three known parameters (so a hostile version or model gets past the top_k check), else anything
QUERY = st.one_of(
    st.fixed_dictionaries({}, optional={
        "top_k": st.sampled_from(["1", "5"]) | QUERY_VALUE,
        "model": st.sampled_from([MODEL, "../" + MODEL, "RESNET18", "ｒesnet18", "a/b", "x" * 300]) | QUERY_VALUE,
        "version": st.sampled_from(["1", "01", "²", "１", "٣", "-1", " 1", "9" * 5000, "../1"]) | QUERY_VALUE}),
    st.dictionaries(st.sampled_from(["top_k", "model", "version"]) | st.text(max_size=8), QUERY_VALUE, max_size=4),
)
TIMEOUT = st.one_of(HEADER_TEXT, st.sampled_from(["inf", "-inf", "nan", "1e309", "-0", "0", "1_000", "0x10"]),
                    st.integers(-(2**64), 0).map(str), st.floats(5000, 1e12).map(repr))


def _check_answer(r: httpx.Response, what: str) -> None:
    if r.status_code in (503, 504) and _short_deadline(r.request.headers):
        assert r.json()["error"]["code"] in ("deadline_exceeded", "queue_full"), f"{what}: {r.text[:300]}"
        return
    assert r.status_code < 500, f"{what} -> {r.status_code}: {r.text[:500]}"
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err["code"], str) and isinstance(err["message"], str), f"{what}: {r.text[:300]}"


def test_hostile_classify_requests(fuzz_server: Server) -> None:
    """Hypothesis-generated raw and multipart bodies, queries and deadlines: never a 5xx; still ready after."""

    @given(body=st.one_of(raw_body(), multipart_body()), query=QUERY, timeout=st.none() | TIMEOUT)
    # regressions: str.isdigit() let these versions through to int() -> 500 (now 404)
    @example(body=("raw", {"Content-Type": "image/jpeg"}, JPEG), query={"version": "²"}, timeout=None)
    @example(body=("raw", {"Content-Type": "image/jpeg"}, JPEG), query={"version": "9" * 5000}, timeout=None)
    @settings(FUZZ, max_examples=600 * SCALE)
    def run(body: tuple[str, dict[str, str], bytes], query: dict[str, str], timeout: str | None) -> None:
        kind, headers, data = body
        KINDS[f"classify:{kind}"] += 1
        TAGS["classify with a query string" if query else "classify without a query string"] += 1
        headers = {**headers, "X-API-Key": API_KEY}
        if timeout is not None:
            TAGS["classify with X-Request-Timeout-Ms"] += 1
            headers["X-Request-Timeout-Ms"] = timeout
        with httpx.Client(base_url=fuzz_server.url, timeout=15) as c:
            r = c.post("/classify", params=query, headers=headers, content=data)
        _check_answer(r, f"{kind} {headers} {query} {data[:80]!r}")

    run()
    _assert_ready(fuzz_server)


def _raw_http(server: Server, head: str, body: bytes) -> tuple[int, bytes]:
    """One request over a plain socket (headers httpx would refuse to send); its status and body."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as s:
        s.sendall(head.encode("latin-1") + b"\r\n" + body)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    status_line, _, rest = got.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_huge_declared_sizes(fuzz_server: Server) -> None:
    """A Content-Length over the limit is refused before the body is read; a chunked body over it, mid-stream.
    Still ready after."""

    @given(declared=st.integers(MAX_UPLOAD + 1, 10**18), ctype=st.sampled_from([*RAW_TYPES, "multipart/form-data"]),
           sent=st.binary(max_size=256), chunked=st.booleans())
    @settings(FUZZ, max_examples=40 * SCALE)
    def run(declared: int, ctype: str, sent: bytes, chunked: bool) -> None:
        KINDS["classify:huge-declared-size"] += 1
        head = f"POST /classify HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Type: {ctype}\r\n"
        if chunked:
            piece = sent or b"x"
            reps = MAX_UPLOAD // len(piece) + 2
            chunk = b"%x\r\n" % (len(piece) * reps) + piece * reps + b"\r\n"
            status, body = _raw_http(fuzz_server, head + "Transfer-Encoding: chunked\r\n", chunk + b"0\r\n\r\n")
        else:
            status, body = _raw_http(fuzz_server, head + f"Content-Length: {declared}\r\n", sent)
        assert status == 413, (status, body[:300])
        assert b'"payload_too_large"' in body

    run()
    _assert_ready(fuzz_server)


# -- c. memory after thousands of bad requests -------------------------------------------------
def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS line")


def _bad_requests(rng: random.Random) -> Iterator[tuple[str, dict[str, Any]]]:
    """Endless bad requests of five kinds, each a 4xx by design."""
    while True:
        cut = rng.randrange(1, len(JPEG) - 1)
        flipped = bytearray(PNG)
        for _ in range(16):
            flipped[rng.randrange(8, len(flipped))] = rng.randrange(256)
        yield "truncated-jpeg", {"content": JPEG[:cut], "headers": {"Content-Type": "image/jpeg"}}
        yield "corrupt-png", {"content": bytes(flipped), "headers": {"Content-Type": "image/png"}}
        yield "pixel-bomb", {"content": _png_with_size(60000, 60000), "headers": {"Content-Type": "image/png"}}
        yield "random-bytes", {"content": rng.randbytes(rng.randrange(1, 4096)),
                               "headers": {"Content-Type": "application/octet-stream"}}
        yield "multipart-too-many", {"files": [("file", ("a.jpg", JPEG[:cut]))] * (MAX_IMAGES + 1)}


def test_rss_bounded_after_bad_requests(fuzz_server: Server) -> None:
    pid = fuzz_server.proc.pid
    rng = random.Random(0)
    gen = _bad_requests(rng)
    kinds: Counter[str] = Counter()
    statuses: Counter[int] = Counter()

    def flood(n: int) -> None:
        with httpx.Client(base_url=fuzz_server.url, headers={"X-API-Key": API_KEY}, timeout=15) as c:
            for _ in range(n):
                kind, kw = next(gen)
                r = c.post("/classify", **kw)
                _check_answer(r, kind)
                kinds[kind] += 1
                statuses[r.status_code] += 1

    flood(500)  # warm-up: allocator arenas, decoder tables, caches
    before = _rss_mib(pid)
    t0 = time.monotonic()
    n = 10_000 * SCALE
    flood(n)
    after = _rss_mib(pid)
    took = time.monotonic() - t0
    KINDS.update({f"rss-flood:{k}": v for k, v in kinds.items()})
    print(f"\nRSS flood: {n} bad requests after 500 warm-up in {took:.1f} s ({n / took:.0f}/s); "
          f"kinds {dict(kinds)}; statuses {dict(statuses)}; "
          f"VmRSS {before:.1f} MiB -> {after:.1f} MiB ({after - before:+.1f} MiB, bound +{RSS_BOUND_MIB} MiB)")
    assert after - before <= RSS_BOUND_MIB
    _assert_ready(fuzz_server)
