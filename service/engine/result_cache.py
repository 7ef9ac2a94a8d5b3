"""Bounded LRU of classification results keyed by the image bytes' hash, the model version's load and top_k.

The key names the load (``load_id``), not just the version: a reload of the same version with new
weights answers afresh, whichever front end reloaded it (``service.engine.generation``)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

from service.engine.catalog import ServedModel
from service.engine.scores import Predictions

Key = tuple[bytes, str, int, str, int]


class ResultCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[Key, Predictions] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    @staticmethod
    def key(data: bytes, model: ServedModel, top_k: int) -> Key:
        return (hashlib.blake2b(data, digest_size=20).digest(), model.name, model.version, model.load_id, top_k)

    def get(self, key: Key) -> Predictions | None:
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
        return hit

    def put(self, key: Key, value: Predictions) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def drop_model(self, model: str) -> None:
        for k in [k for k in self._data if k[1] == model]:
            del self._data[k]

    def __len__(self) -> int:
        return len(self._data)
