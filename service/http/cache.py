"""Bounded LRU of classification results keyed by the image bytes' hash, model, version and top_k."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

Predictions = list[dict[str, object]]


class ResultCache:
    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[tuple[bytes, str, int, int], Predictions] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    @staticmethod
    def key(data: bytes, model: str, version: int, top_k: int) -> tuple[bytes, str, int, int]:
        return (hashlib.blake2b(data, digest_size=20).digest(), model, version, top_k)

    def get(self, key: tuple[bytes, str, int, int]) -> Predictions | None:
        hit = self._data.get(key)
        if hit is not None:
            self._data.move_to_end(key)
        return hit

    def put(self, key: tuple[bytes, str, int, int], value: Predictions) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def drop_model(self, model: str) -> None:
        for k in [k for k in self._data if k[1] == model]:
            del self._data[k]

    def __len__(self) -> int:
        return len(self._data)
