"""The model lifecycle: which versions serve, loading and swapping them (old ones serve until the new
are warm), unloading, fallbacks, ``--runtime auto`` routing and readiness. What a config asks for is
``resolve`` (pure); loading one version is ``loading``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from modelrepo.config import FALLBACK_PARAM, check_model_name, read_config
from modelrepo.errors import RepositoryError
from modelrepo.layout import model_names, scan_model
from service.config import Settings
from service.engine.batching import Batcher
from service.engine.instance import ModelInstance
from service.engine.loading import load_version
from service.engine.lookup import lookup
from service.engine.resolve import versions_to_serve
from service.engine.routing import Served, routes
from service.errors import ANSWERABLE, ModelNotFound
from service.metrics import Metrics
from service.runtimes.registry import registered

logger = logging.getLogger(__name__)


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repo = Path(settings.model_repo)
        self._instances: dict[str, dict[int, ModelInstance]] = {}
        self.states: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        #: a model that cannot load here -> the model named by its FALLBACK_PARAM (a TensorRT plan -> its ONNX)
        self.fallbacks: dict[str, str] = {}
        #: --runtime auto: a model name -> (the variant on a better runtime that serves it, why)
        self.routes: dict[str, tuple[str, str]] = {}
        # Loading/warming a model is long blocking work: its own thread, never the event loop.
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader")
        #: how many times what is served (or a model's state) changed; listeners hear each change before
        #: the caller that made it is answered (the front ends' caches follow it: ``engine.generation``)
        self.changes = 0
        self.on_change: list[Callable[[int], None]] = []

    def _changed(self) -> None:
        self.changes += 1
        for listener in self.on_change:
            listener(self.changes)

    # -- lookups -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(set(self.states) | set(self._instances))

    def get(self, name: str, version: str | None = None) -> ModelInstance:
        name, v = lookup(name, version, self._instances, self.states, self.routes, self.fallbacks)
        return self._instances[name][v]

    def instances(self, name: str) -> list[ModelInstance]:
        return [self._instances[name][v] for v in sorted(self._instances.get(name, {}))]

    def not_ready(self) -> dict[str, str]:
        """Models that should serve but do not; an operator's explicit unload is not a failure, and a
        plan that cannot run here is served by its ONNX model."""
        return {n: s for n, s in self.states.items() if s not in ("ready", "unloaded") and n not in self.fallbacks}

    # -- loading -----------------------------------------------------------------------------
    def configured_names(self) -> list[str]:
        if self.settings.models:
            return [check_model_name(n) for n in self.settings.models]
        return model_names(self.repo)

    def _build(self, name: str) -> list[ModelInstance]:
        """Blocking: read the model folder, load each served version and warm it up."""
        entry = scan_model(self.repo / name)
        on_unhealthy = partial(self._unhealthy, name)
        return [load_version(entry, v, self.settings, self.metrics, on_unhealthy)
                for v in versions_to_serve(entry.config.version_policy, entry.versions, entry.name)]

    async def load(self, name: str) -> list[ModelInstance]:
        """(Re)load a model; the old instances keep serving until the new ones are warm."""
        check_model_name(name)
        if not (self.repo / name / "config.pbtxt").is_file():
            raise ModelNotFound(f"no model {name!r} in repository {self.repo} (no {name}/config.pbtxt)")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if name not in self._instances:
                self.states[name] = "loading"
                self._changed()
            try:
                new = await asyncio.get_running_loop().run_in_executor(self._loader, self._build, name)
            except ANSWERABLE as e:
                self._fail(name, e.message)
                raise
            except Exception as e:
                self._fail(name, f"{type(e).__name__}: {e}")
                raise RepositoryError(f"model {name!r} failed to load: {type(e).__name__}: {e}") from e
            for inst in new:
                inst.batcher.start()
            old = self._instances.get(name, {})
            self._instances[name] = {inst.version: inst for inst in new}
            self.states[name] = "ready"
            self.fallbacks.pop(name, None)
            for inst in old.values():
                self.metrics.child(self.metrics.model_ready, name, str(inst.version), inst.runtime_tag).set(0)
            for inst in new:
                self.metrics.child(self.metrics.model_ready, name, str(inst.version), inst.runtime_tag).set(1)
            logger.info("model %s ready: versions %s on %s", name, [i.version for i in new],
                        new[0].runtime_tag if new else "-")
            self._reroute()
            self._changed()
        await self._retire(old.values())
        return new

    def _reroute(self) -> None:
        """Recompute which names a better-placed variant serves (--runtime auto only)."""
        if self.settings.runtime != "auto":
            return
        loaded = {
            name: Served(inst.runtime.name, "cuda" if inst.runtime.device_kind == "gpu" else "cpu", inst.entry.params)
            for name, versions in self._instances.items() if versions
            for inst in [versions[max(versions)]]
        }
        new = routes(loaded, {n: i.ranks for n, i in registered().items()})
        for base, (variant, why) in new.items():
            if self.routes.get(base, ("",))[0] != variant:
                logger.info("model %s is served by %s: %s", base, variant, why)
        self.routes = new

    def _unhealthy(self, name: str, version: int, batcher: Batcher, reason: str) -> None:
        """The batcher's watchdog retired a hung instance: readiness 503 with the reason until a reload."""
        inst = self._instances.get(name, {}).get(version)
        if inst is None or inst.batcher is not batcher:
            return  # an instance already replaced or unloaded: the model's state is the new one's
        self.states[name] = f"unhealthy: version {version}: {reason}; reload it (POST /models/{name}/load)"
        self.metrics.child(self.metrics.model_ready, name, str(version), inst.runtime_tag).set(0)
        self._changed()

    def _fail(self, name: str, reason: str) -> None:
        if name in self._instances:  # a failed reload keeps the old instances serving
            logger.error("model %s failed to reload, the loaded version keeps serving: %s", name, reason)
            return
        base = self._fallback_for(name)
        if base is not None:
            logger.warning("model %s cannot run here (%s); requests for it are served by %s", name, reason, base)
            self.fallbacks[name] = base
            self.states[name] = f"fallback: served by {base} ({reason})"
            self._changed()
            return
        logger.error("model %s failed to load: %s", name, reason)
        self.states[name] = f"failed: {reason}"
        self._changed()

    def _fallback_for(self, name: str) -> str | None:
        """The model named by ``name``'s FALLBACK_PARAM, when it is in the repository (data, not a name suffix)."""
        try:
            params = read_config(self.repo / name).parameters
            base = params[FALLBACK_PARAM].string_value if FALLBACK_PARAM in params else ""
            if not base or base == name:
                return None
            check_model_name(base)
            read_config(self.repo / base)
            return base
        except ANSWERABLE:
            return None

    async def unload(self, name: str) -> None:
        if name not in self._instances and name not in self.states:
            raise ModelNotFound(f"unknown model {name!r}; served models: {', '.join(self.names()) or 'none'}")
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            old = self._instances.pop(name, {})
            self.states[name] = "unloaded"
            for inst in old.values():
                self.metrics.child(self.metrics.model_ready, name, str(inst.version), inst.runtime_tag).set(0)
            self._reroute()
            self._changed()
        await self._retire(old.values())
        logger.info("model %s unloaded", name)

    async def _retire(self, instances: object) -> None:
        for inst in list(instances):  # type: ignore[call-overload]
            await inst.batcher.drain_and_stop()
            for i, rt in enumerate(inst.runtimes):
                if i not in inst.batcher.retired:  # a hung instance's thread is still inside it: never closed
                    rt.close()

    async def load_all(self) -> None:
        for name in self.configured_names():
            self.states.setdefault(name, "pending")
        self._changed()
        for name in self.configured_names():
            try:
                await self.load(name)
            except ANSWERABLE as e:
                logger.error("could not load %s: %s", name, e.message)

    async def close(self) -> None:
        for name in list(self._instances):
            old = self._instances.pop(name)
            await self._retire(old.values())
        self._loader.shutdown(wait=False)

    def default_model(self) -> str:
        """--default-model, else the first model found at startup (no disk access per request)."""
        if self.settings.default_model:
            return self.settings.default_model
        if not self.states:
            raise ModelNotFound("no model is served: export one into the repository and load it")
        return min(self.states)
