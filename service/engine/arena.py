"""Shared memory between one front end and the engine: a file in the IPC folder (``/dev/shm`` when it
can be used), mapped by both. The front end writes an image's bytes or pixels into a free region and
sends the engine only where (``wire.Blob``); the region is freed when the engine's reply arrives, which
is after the batch holding it ran. The front end owns the file; the supervisor removes the folder.

The allocator is first-fit over free ranges aligned to 64 bytes (numpy arrays mapped from it stay
aligned); a request that does not fit right now is sent inline instead (``Arena.put`` returns None),
so a burst never waits on the arena and the arena never grows.
"""

from __future__ import annotations

import bisect
import mmap
import os
from pathlib import Path

import numpy as np

ALIGN = 64


def _unmap(view: memoryview, mapping: mmap.mmap) -> None:
    """Unmap, unless arrays over it are still alive (a batch cancelled mid-flight): then the GC does."""
    try:
        view.release()
        mapping.close()
    except BufferError:
        pass


class Arena:
    """The front end's side: owns the mapping and hands out regions."""

    def __init__(self, path: Path, size: int) -> None:
        self.path, self.size = path, size
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # reserved now, not on first touch: a full /dev/shm fails here, never later with SIGBUS
            os.posix_fallocate(fd, 0, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._view = memoryview(self._map)
        #: free ranges (offset, size), sorted by offset, never adjacent
        self._free: list[tuple[int, int]] = [(0, size)]
        self.used = 0

    def alloc(self, nbytes: int) -> int | None:
        want = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        for i, (off, size) in enumerate(self._free):
            if size >= want:
                if size == want:
                    del self._free[i]
                else:
                    self._free[i] = (off + want, size - want)
                self.used += want
                return off
        return None

    def free(self, offset: int, nbytes: int) -> None:
        size = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        self.used -= size
        i = bisect.bisect(self._free, (offset, size))
        if i < len(self._free) and offset + size == self._free[i][0]:  # merge with the next range
            size += self._free[i][1]
            del self._free[i]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == offset:  # and with the previous one
            offset, size = self._free[i - 1][0], self._free[i - 1][1] + size
            i -= 1
            del self._free[i]
        self._free.insert(i, (offset, size))

    def put(self, data: bytes | np.ndarray) -> int | None:
        """Copy ``data`` into a new region: its offset, or None when the arena is full right now."""
        raw = np.ascontiguousarray(data).data.cast("B") if isinstance(data, np.ndarray) else memoryview(data)
        off = self.alloc(raw.nbytes)
        if off is not None:
            self._view[off:off + raw.nbytes] = raw
        return off

    def close(self) -> None:
        _unmap(self._view, self._map)
        self.path.unlink(missing_ok=True)


class ArenaView:
    """The engine's side: reads the regions a front end names (read-only mapping)."""

    def __init__(self, path: str, size: int) -> None:
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        self._view = memoryview(self._map)

    def bytes(self, offset: int, size: int) -> bytes:
        return bytes(self._view[offset:offset + size])

    def array(self, offset: int, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array over the region, without a copy: valid until the reply frees the region."""
        n = int(np.prod(shape))
        return np.frombuffer(self._view, dtype=np.float32, count=n, offset=offset).reshape(shape)

    def close(self) -> None:
        _unmap(self._view, self._map)
