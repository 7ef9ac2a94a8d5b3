"""Access control: API keys with a serving or admin role, per-key rate limits, and the table of limits.

Keys come from ``--api-key`` (one serving key), ``--admin-api-key`` (one admin key), ``--api-keys-file``
(``name:key`` or ``name:key:role`` a line, ``#`` comments) and ``IMGSERVE_API_KEYS`` (the same,
comma-separated). Only their SHA-256 digests are kept; a key sent by a client is hashed and compared
with every stored digest in constant time. The file is re-read on SIGHUP and when it changes (one
``stat`` a second at most, on a request; the read itself runs in a thread).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import os
import re
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr

from service.config import Settings
from service.errors import ConfigError, Forbidden, RateLimited, ServiceError, Unauthorized

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
ROLES = ("serve", "admin")
#: the keys file is stat'ed at most this often (seconds), on a request
RELOAD_CHECK_S = 1.0
#: rate-limit buckets kept (least recently used dropped first), so the map never grows without bound
MAX_BUCKETS = 10_000
#: paths served without a key and without a rate limit (the page at / asks for the key itself)
OPEN_PATHS = ("/health/", "/v2/health/", "/metrics", "/docs", "/redoc", "/openapi.json", "/static/", "/favicon")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_KEY_FORMAT = (
    "expected 'name:key' or 'name:key:role' (name: letters, digits, _.@-; role: serve or admin; no ':' in keys)"
)
UNAUTHORIZED = "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"


@dataclass(frozen=True)
class Key:
    """One API key: its name (safe to log), the SHA-256 of the key (never the key), its role."""

    name: str
    digest: bytes = field(repr=False)
    role: str = "serve"
    #: the single --api-key: it may also administer while no admin key is configured (as before roles)
    legacy: bool = False


def digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


def parse_keys(text: str, source: str, sep: str = "\n") -> list[Key]:
    """``name:key[:role]`` entries; errors name the entry's position, never its text (it may hold a key)."""
    keys = []
    for n, raw in enumerate(text.split(sep), 1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        parts = [p.strip() for p in entry.split(":")]
        role = parts[2] if len(parts) == 3 else "serve"
        if len(parts) not in (2, 3) or not _NAME.fullmatch(parts[0]) or not parts[1] or role not in ROLES:
            raise ConfigError(f"{source}, entry {n}: {_KEY_FORMAT}")
        keys.append(Key(parts[0], digest(parts[1]), role))
    return keys


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class KeyStore:
    """The API keys in force: fixed ones from flags/env plus the keys file's, swapped whole on reload."""

    def __init__(self, fixed: Iterable[Key], file: Path | None = None, clock: Clock = time.monotonic) -> None:
        self.fixed = tuple(fixed)
        self.file = file
        self.clock = clock
        self._file_keys: tuple[Key, ...] = ()
        self._signature: tuple[int, int, int] | None = None
        self._checked = -math.inf
        self._tasks: set[asyncio.Task[bool]] = set()
        if file is not None:
            self._signature = _signature(file)
            try:
                self._file_keys = self._read(file)
            except OSError as e:
                raise ConfigError(f"--api-keys-file {file}: cannot read it ({e.strerror})") from None
        self.enabled = bool(self.fixed) or file is not None
        self._update()

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock = time.monotonic) -> KeyStore:
        fixed = []
        if key := _secret(settings.api_key):
            fixed.append(Key("api-key", digest(key), "serve", legacy=True))
        if key := _secret(settings.admin_api_key):
            fixed.append(Key("admin-api-key", digest(key), "admin"))
        if text := _secret(settings.api_keys):
            fixed += parse_keys(text, "IMGSERVE_API_KEYS", sep=",")
        return cls(fixed, settings.api_keys_file, clock)

    @property
    def keys(self) -> tuple[Key, ...]:
        return self._keys

    def _update(self) -> None:
        self._keys = (*self.fixed, *self._file_keys)
        self.has_admin = any(k.role == "admin" for k in self._keys)

    @staticmethod
    def _read(file: Path) -> tuple[Key, ...]:
        return tuple(parse_keys(file.read_text(encoding="utf-8"), str(file)))

    def match(self, given: bytes) -> Key | None:
        """The key whose digest equals the given key's: every stored digest is compared, whatever matches."""
        d = digest(given)
        found = None
        for key in self._keys:
            if hmac.compare_digest(d, key.digest) and (found is None or key.role == "admin"):
                found = key
        return found

    def may_admin(self, key: Key) -> bool:
        return key.role == "admin" or (key.legacy and not self.has_admin)

    def reload(self) -> bool:
        """Re-read the keys file (blocking: call it in a thread). A file that fails keeps the keys in force."""
        if self.file is None:
            return False
        self._signature = _signature(self.file)  # a broken file is not re-read until it changes again
        try:
            keys = self._read(self.file)
        except (OSError, ConfigError) as e:
            reason = e.message if isinstance(e, ConfigError) else e.strerror
            logger.error("API keys file %s not reloaded, the %d keys in force stay: %s", self.file,
                         len(self._keys), reason)
            return False
        self._file_keys = keys
        self._update()
        logger.info("API keys file %s reloaded: %d keys (%s)", self.file, len(keys), ", ".join(k.name for k in keys))
        if not self._keys:
            logger.warning("no API key is configured any more: every protected request gets 401")
        return True

    async def reload_async(self) -> bool:
        return await asyncio.to_thread(self.reload)

    async def refresh(self) -> None:
        """On a request: re-read the file if it changed. One stat a second at most on the loop."""
        if self.file is None:
            return
        now = self.clock()
        if now - self._checked < RELOAD_CHECK_S:
            return
        self._checked = now
        if _signature(self.file) != self._signature:
            await self.reload_async()

    def on_sighup(self) -> None:
        """The SIGHUP handler (runs on the event loop): reload the file in a thread."""
        logger.info("SIGHUP: reloading API keys from %s", self.file)
        task = asyncio.get_running_loop().create_task(self.reload_async())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def install_sighup(self) -> Callable[[], None] | None:
        """Reload on SIGHUP while the loop runs; returns the undo, or None where signals cannot be caught."""
        if self.file is None or not hasattr(signal, "SIGHUP"):
            return None
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.on_sighup)
        except (ValueError, RuntimeError, NotImplementedError):  # not the main thread (e.g. a test client)
            logger.debug("SIGHUP handler not installed (not the main thread); the file is still re-read on change")
            return None

        def undo() -> None:
            loop.remove_signal_handler(signal.SIGHUP)

        return undo


class TokenBuckets:
    """One token bucket per client key, in an LRU map capped at ``capacity`` entries."""

    def __init__(self, rate: float, burst: float, capacity: int = MAX_BUCKETS, clock: Clock = time.monotonic) -> None:
        self.rate, self.burst, self.capacity, self.clock = rate, burst, capacity, clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str) -> float:
        """Take one token: 0.0 when allowed, else the seconds until a token is there."""
        now = self.clock()
        tokens, then = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - then) * self.rate)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0 if wait == 0.0 else tokens, now)
        if len(self._buckets) > self.capacity:
            self._buckets.popitem(last=False)
        return wait


def is_open(path: str) -> bool:
    return path == "/" or path.startswith(OPEN_PATHS)


def is_admin_route(method: str, path: str) -> bool:
    """Mutating model management (POST /models/{name}/load, /unload and any later one under /models/; KServe's
    /v2/repository/models/{name}/load and /unload)."""
    return method not in _SAFE_METHODS and path.startswith(("/models/", "/v2/repository/models/"))


def _given_key(headers: dict[bytes, bytes]) -> bytes:
    auth = headers.get(b"authorization", b"")
    if auth[:7].lower() == b"bearer ":
        return auth[7:].strip()
    return headers.get(b"x-api-key", b"")


class AccessControl:
    """Decides, before routing, whether a request may proceed: 401, 403, 429 or None (go on)."""

    def __init__(self, settings: Settings, clock: Clock = time.monotonic) -> None:
        self.keys = KeyStore.from_settings(settings, clock)
        rps = settings.rate_limit_rps
        burst = settings.rate_limit_burst or max(1, math.ceil(rps))
        self.limiter = TokenBuckets(rps, burst, clock=clock) if rps > 0 else None

    def describe(self) -> str:
        """One log line: key names and roles, never keys."""
        keys = self.keys.keys
        auth = (f"{len(keys)} API keys ({sum(k.role == 'admin' for k in keys)} admin)"
                + (f", file {self.keys.file}" if self.keys.file else "")) if self.keys.enabled else "no API key"
        if self.keys.enabled and not self.keys.has_admin:
            auth += "; no admin key: --api-key may also load/unload models (set --admin-api-key to separate them)"
        limit = (f"rate limit {self.limiter.rate:g}/s burst {self.limiter.burst:g} per key"
                 if self.limiter else "no rate limit")
        return f"{auth}; {limit}"

    async def check(self, method: str, path: str, headers: dict[bytes, bytes], client: str) -> ServiceError | None:
        if is_open(path):
            return None
        bucket, who = f"ip:{client}", f"client {client}"
        if self.keys.enabled:
            await self.keys.refresh()
            key = self.keys.match(_given_key(headers))
            if key is None:
                return Unauthorized(UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
            if is_admin_route(method, path) and not self.keys.may_admin(key):
                return Forbidden(
                    f"API key {key.name!r} is a serving key; {method} {path} needs an admin key "
                    "(--admin-api-key, or role 'admin' in --api-keys-file / IMGSERVE_API_KEYS)"
                )
            bucket, who = f"key:{key.name}", f"API key {key.name!r}"
        if self.limiter is not None and (wait := self.limiter.take(bucket)) > 0:
            return RateLimited(
                f"{who} is over its rate limit ({self.limiter.rate:g} requests/s, burst {self.limiter.burst:g}): "
                f"retry after {wait:.2f} s",
                retry_after_s=wait,
            )
        return None


# -- the table of limits (README "Limits and access control") ---------------------------------------------------
def is_limit_field(name: str) -> bool:
    """The Settings fields that bound what a client can make the service do."""
    return (name.startswith(("max_", "rate_limit_")) or name.endswith("_timeout_s")
            or name in ("api_keys_file", "body_min_rate"))


def limits_table() -> str:
    """The README table's rows for every limit-type Settings field (flag, env var, default, what)."""
    rows = ["| limit | flag | env | default |", "| --- | --- | --- | --- |"]
    for name, info in Settings.model_fields.items():
        if is_limit_field(name):
            default = "unset" if info.default is None else f"`{info.default}`"
            flag, env = f"`--{name.replace('_', '-')}`", f"`IMGSERVE_{name.upper()}`"
            what = (info.description or name).replace("|", "\\|")
            rows.append(f"| {what} | {flag} | {env} | {default} |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m service.access: print the table for the README
    print(limits_table())
