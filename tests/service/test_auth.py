"""Access control: serving and admin keys (flag, env, file with reload), constant-time compare, keys kept out
of logs, per-key rate limit (429 + Retry-After), CORS off unless configured, and the docs' table of limits."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from service import access as auth
from service.access import KeyStore, TokenBuckets, is_limit_field, parse_keys
from service.config import Settings
from service.errors import ConfigError
from service.http.app import create_app

ROOT = Path(__file__).resolve().parents[2]
SERVE, ADMIN = "serve-key-6f1c", "admin-key-93ab"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("IMGSERVE_API_KEY", "IMGSERVE_ADMIN_API_KEY", "IMGSERVE_API_KEYS", "IMGSERVE_API_KEYS_FILE",
                "IMGSERVE_RATE_LIMIT_RPS", "IMGSERVE_RATE_LIMIT_BURST", "IMGSERVE_CORS_ORIGINS"):
        monkeypatch.delenv(var, raising=False)


def make_client(tmp_path: Path, clock: FakeClock | None = None, **kw: Any) -> Iterator[TestClient]:
    """The real app (empty model repository: /models answers, load of an unknown model is 404 past auth)."""
    app = create_app(Settings(model_repo=tmp_path, warmup=False, workers=1, **kw))
    if clock is not None:
        app.state.access.keys.clock = clock
        if app.state.access.limiter is not None:
            app.state.access.limiter.clock = clock
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    yield from make_client(tmp_path, api_key=SERVE, admin_api_key=ADMIN)


def key(k: str) -> dict[str, str]:
    return {"X-API-Key": k}


def test_missing_or_wrong_key_is_401_and_open_paths_stay_open(client: TestClient) -> None:
    for headers in ({}, key("nope"), {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {SERVE}"}):
        r = client.get("/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", headers
        assert r.headers["WWW-Authenticate"] == "Bearer"
    r = client.get("/v2/models/x", headers=key("nope"))
    assert r.status_code == 401 and "API key" in r.json()["error"]  # KServe v2 shape
    assert client.get("/models", headers={"Authorization": f"Bearer {SERVE}"}).status_code == 200
    for path in ("/health/live", "/v2/health/live", "/metrics", "/", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_serving_key_cannot_administer_admin_key_can(client: TestClient) -> None:
    for action in ("load", "unload"):
        r = client.post(f"/models/nope/{action}", headers=key(SERVE))
        assert r.status_code == 403, r.text
        err = r.json()["error"]
        assert err["code"] == "forbidden" and "needs an admin key" in err["message"]
        assert "--admin-api-key" in err["message"]
        assert client.post(f"/models/nope/{action}").status_code == 401
        assert client.post(f"/models/nope/{action}", headers=key("nope")).status_code == 401
        assert client.post(f"/models/nope/{action}", headers=key(ADMIN)).status_code == 404  # past auth: no such model
    for k in (SERVE, ADMIN):  # serving routes take either key
        assert client.get("/models", headers=key(k)).status_code == 200
        assert client.post("/classify", headers=key(k), content=b"x").status_code not in (401, 403)
        assert client.post("/v2/models/nope/infer", headers=key(k), json={}).status_code not in (401, 403)


def test_single_api_key_still_administers_until_an_admin_key_exists(tmp_path: Path) -> None:
    for c in make_client(tmp_path, api_key=SERVE):
        assert c.post("/models/nope/load", headers=key(SERVE)).status_code == 404
    store = KeyStore.from_settings(Settings(api_key=SERVE, api_keys="ops:o1:admin"))
    k = store.match(SERVE.encode())
    assert k is not None and not store.may_admin(k)


def test_keys_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGSERVE_API_KEYS", "ci:env-key-1, ops:env-key-2:admin")
    for c in make_client(tmp_path):
        assert c.get("/models", headers=key("env-key-1")).status_code == 200
        assert c.post("/models/nope/load", headers=key("env-key-1")).status_code == 403
        assert c.post("/models/nope/load", headers=key("env-key-2")).status_code == 404
        assert c.get("/models", headers=key("env-key-3")).status_code == 401


def test_keys_file_reloads_when_it_changes(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# rotated monthly\nalice:file-key-1\nbob:file-key-2:admin  # ops\n\n")
    clock = FakeClock()
    for c in make_client(tmp_path / "repo", clock, api_keys_file=keys):
        assert c.get("/models", headers=key("file-key-1")).status_code == 200
        assert c.post("/models/nope/load", headers=key("file-key-2")).status_code == 404
        st = keys.stat()
        keys.write_text("alice:file-key-3\n")
        os.utime(keys, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        clock.now += 0.5  # checked at most once a second: the old keys still hold
        assert c.get("/models", headers=key("file-key-1")).status_code == 200
        clock.now += 0.6
        assert c.get("/models", headers=key("file-key-3")).status_code == 200
        assert c.get("/models", headers=key("file-key-1")).status_code == 401
        assert c.post("/models/nope/load", headers=key("file-key-2")).status_code == 401


async def test_sighup_reloads_the_keys_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("a:sighup-key-1\n")
    store = KeyStore([], keys)
    keys.write_text("a:sighup-key-2\n")  # same size; the handler re-reads whatever the mtime says
    store.on_sighup()
    await asyncio.gather(*store._tasks)
    assert store.match(b"sighup-key-2") is not None and store.match(b"sighup-key-1") is None
    undo = store.install_sighup()  # the real signal, on this (main-thread) loop
    assert undo is not None, "SIGHUP handler not installed: sending SIGHUP would kill the test run"
    try:
        keys.write_text("a:sighup-key-3\n")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if store.match(b"sighup-key-3") is not None:
                break
            await asyncio.sleep(0.01)
        assert store.match(b"sighup-key-3") is not None
    finally:
        undo()
    keys.write_text("a:sighup-key-4\nbroken entry\n")  # a broken file keeps the keys in force
    with caplog.at_level(logging.ERROR, "service.access"):
        assert store.reload() is False
    assert store.match(b"sighup-key-3") is not None and "entry 2" in caplog.text
    assert "sighup-key-4" not in caplog.text


def test_bad_key_sources_refuse_to_start_without_echoing_keys(tmp_path: Path) -> None:
    for text in ("alice\n", "alice:\n", ":secret-1\n", "alice:secret-1:root\n", "al ice:secret-1\n", "a:b:c:d\n"):
        with pytest.raises(ConfigError, match="entry 1") as exc:
            parse_keys(text, "keys.txt")
        assert "secret-1" not in exc.value.message
    with pytest.raises(ConfigError, match="cannot read"):
        create_app(Settings(model_repo=tmp_path, api_keys_file=tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="IMGSERVE_API_KEYS, entry 2"):
        create_app(Settings(model_repo=tmp_path, api_keys="a:k1,secret-2"))


def test_every_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    store = KeyStore(parse_keys(",".join(f"k{i}:key-{i}" for i in range(5)), "env", sep=","))
    for given in (b"key-0", b"key-4", b"wrong"):
        calls.clear()
        found = store.match(given)
        assert len(calls) == 5, "every stored key is compared, no early exit"
        assert all(len(a) == len(b) == 32 for a, b in calls)  # SHA-256 digests, never the keys themselves
        assert (found.name if found else None) == {b"key-0": "k0", b"key-4": "k4"}.get(given)
    assert all(len(k.digest) == 32 and b"key" not in k.digest for k in store.keys)


def test_keys_never_in_logs_errors_listing_or_settings_repr(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("alice:file-secret-7\n")
    monkeypatch.setenv("IMGSERVE_API_KEYS", "ci:env-secret-8")
    clock = FakeClock()
    secrets = (SERVE, ADMIN, "file-secret-7", "env-secret-8", "file-secret-9", "guessed-secret-0", "broken-secret")
    with caplog.at_level(logging.DEBUG):
        settings = Settings(api_key=SERVE, admin_api_key=ADMIN, api_keys_file=keys)
        for c in make_client(tmp_path / "repo", clock, api_key=SERVE, admin_api_key=ADMIN, api_keys_file=keys,
                             rate_limit_rps=1, rate_limit_burst=1):
            bodies = [c.get("/models", headers=key(k)).text for k in secrets[:4]]
            bodies += [c.get("/models", headers=key("guessed-secret-0")).text]
            bodies += [c.post("/models/nope/load", headers={"Authorization": f"Bearer {SERVE}"}).text]
            bodies += [c.get("/models", headers=key(SERVE)).text]  # 429
            keys.write_text("alice:file-secret-9\nbroken-secret\n")
            clock.now += 2
            bodies += [c.get("/models", headers=key("file-secret-7")).text, c.get("/openapi.json").text]
            keys.write_text("alice:file-secret-9\n")
            clock.now += 2
            bodies += [c.get("/models", headers=key("file-secret-9")).text]
    assert "reloaded" in caplog.text and "not reloaded" in caplog.text and "access control" in caplog.text
    for s in secrets:
        assert s not in caplog.text, s
        assert all(s not in b for b in bodies), s
        assert s not in repr(settings) and s not in str(settings)


def test_rate_limit_429_with_retry_after_then_recovers(tmp_path: Path) -> None:
    clock = FakeClock()
    for c in make_client(tmp_path, clock, api_keys="a:rate-key-a,b:rate-key-b", rate_limit_rps=2,
                         rate_limit_burst=3):
        assert [c.get("/models", headers=key("rate-key-a")).status_code for _ in range(3)] == [200] * 3
        r = c.get("/models", headers=key("rate-key-a"))
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert r.headers["Retry-After"] == "1" and "'a'" in r.json()["error"]["message"]
        assert c.get("/models", headers=key("rate-key-b")).status_code == 200  # one flooding key starves no other
        assert c.get("/health/live").status_code == 200 and c.get("/metrics").status_code == 200  # never limited
        clock.now += 0.5  # refill: one token at 2/s
        assert c.get("/models", headers=key("rate-key-a")).status_code == 200
        assert c.get("/models", headers=key("rate-key-a")).status_code == 429
        clock.now += 10  # a full bucket holds no more than the burst
        assert [c.get("/models", headers=key("rate-key-a")).status_code for _ in range(4)] == [200] * 3 + [429]
        r = c.get("/v2/models/x", headers=key("rate-key-a"))
        assert r.status_code == 429 and "rate limit" in r.json()["error"] and "Retry-After" in r.headers


def test_rate_limit_by_client_address_without_keys(tmp_path: Path) -> None:
    clock = FakeClock()
    for c in make_client(tmp_path, clock, rate_limit_rps=0.1):
        assert c.get("/models").status_code == 200
        r = c.get("/models")
        assert r.status_code == 429 and r.headers["Retry-After"] == "10" and "client" in r.json()["error"]["message"]


def test_bucket_map_is_bounded_lru() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate=1.0, burst=1.0, capacity=100, clock=clock)
    assert buckets.take("flooder") == 0.0 and buckets.take("flooder") > 0
    for i in range(1000):
        buckets.take(f"ip:{i}")
        if i % 10 == 0:
            assert buckets.take("flooder") > 0  # recently used: kept, still limited
    assert len(buckets) == 100
    assert len(auth.AccessControl(Settings(rate_limit_rps=5)).limiter or []) == 0
    assert auth.MAX_BUCKETS == 10_000


def test_cors_absent_by_default_present_for_a_configured_origin(client: TestClient, tmp_path: Path) -> None:
    origin = {"Origin": "https://app.example"}
    preflight = {**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "x-api-key"}
    for r in (client.get("/models", headers={**origin, **key(SERVE)}), client.options("/classify", headers=preflight)):
        assert not any(h.startswith("access-control-") for h in r.headers)
    for c in make_client(tmp_path / "cors", api_key=SERVE, cors_origins=["https://app.example"]):
        r = c.options("/classify", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.get("/models", headers={**origin, **key(SERVE)})
        assert r.headers["access-control-allow-origin"] == "https://app.example" and "x-request-id" in r.headers[
            "access-control-expose-headers"].lower()
        assert c.get("/models", headers=origin).headers["access-control-allow-origin"] == "https://app.example"  # 401
        r = c.get("/models", headers={"Origin": "https://evil.example", **key(SERVE)})
        assert "access-control-allow-origin" not in r.headers


def test_openapi_lists_403_and_429(tmp_path: Path) -> None:
    schema = create_app(Settings(model_repo=tmp_path)).openapi()
    paths = schema["paths"]
    for action in ("load", "unload"):
        responses = paths[f"/models/{{name}}/{action}"]["post"]["responses"]
        assert {"401", "403", "429"} <= responses.keys()
        assert responses["403"]["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/ErrorResponse"
    assert {"401", "429"} <= paths["/classify"]["post"]["responses"].keys()
    assert {"401", "429"} <= paths["/models"]["get"]["responses"].keys()
    assert "403" not in paths["/models"]["get"]["responses"]
    assert "429" in paths["/v2/models/{name}/infer"]["post"]["responses"]
    assert "401" not in paths["/health/live"]["get"]["responses"]


def _render_docs_page(text: str) -> str:
    """A docs page as the site shows it: its ``<!-- generated: NAME -->`` blocks filled in by the docs hook."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs/hooks/generate.py")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    return hook.MARKER.sub(lambda m: hook.GENERATORS[m.group(1)](), text)


def test_docs_list_every_limit() -> None:
    page = (ROOT / "docs/guides/limits-security.md").read_text()
    section = page.split("## Limits and access control", 1)[1].split("\n## ", 1)[0]
    assert "<!-- generated: limits -->" in section  # generated from the settings: it cannot drift
    section = _render_docs_page(section)
    fields = [name for name in Settings.model_fields if is_limit_field(name)]
    assert {"max_upload_bytes", "max_image_pixels", "max_images_per_request", "max_queue_size", "request_timeout_s",
            "rate_limit_rps", "rate_limit_burst", "api_keys_file"} <= set(fields)
    rows = {line for line in section.splitlines() if line.startswith("|")}
    for name in fields:
        info = Settings.model_fields[name]
        flag, env = f"`--{name.replace('_', '-')}`", f"`IMGSERVE_{name.upper()}`"
        default = "unset" if info.default is None else f"`{info.default}`"
        assert any(flag in r and env in r and re.search(rf"\| {re.escape(default)} \|$", r) for r in rows), (
            f"docs 'Limits and access control' lacks {flag}: service.access.limits_table() must list it"
        )
