"""The served set's generation, shared through one 8-byte cell of memory (``--processes N``).

The engine writes a new value each time what it serves changes (a load, reload, unload, a failure, a
retired instance: ``ModelManager.changes``) before it answers whoever asked for the change. A front end
reads the cell on every request (a memory read, no round trip) and, when it differs from the value it
last synchronised at, fetches the engine's catalog before it resolves the model or answers from its
result cache. So a change made through any front end, or by the engine itself, is seen by every front
end before its next answer, not one poll later.

A read that races a write can only see a value that differs from the last one: the front end then
synchronises once more than needed, never less. The cell lives in the IPC folder, created by whichever
side opens it first; an engine that restarts starts from a random value, so a front end cannot mistake
a new engine's count for the old one's.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
from pathlib import Path

_CELL = struct.Struct("<Q")
FILE = "served-set.gen"


class GenerationCell:
    """The cell at ``ipc_dir/served-set.gen``: ``write`` (the engine) and ``read`` (front ends)."""

    def __init__(self, ipc_dir: str | Path) -> None:
        self.path = Path(ipc_dir) / FILE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < _CELL.size:
                os.ftruncate(fd, _CELL.size)
            self._map = mmap.mmap(fd, _CELL.size)
        finally:
            os.close(fd)
        #: the engine's values start here (random): a restarted engine never repeats the old one's values
        self.base = secrets.randbits(62)

    def write(self, changes: int) -> None:
        _CELL.pack_into(self._map, 0, (self.base + changes) & (2**64 - 1))

    def read(self) -> int:
        return int(_CELL.unpack_from(self._map, 0)[0])

    def close(self) -> None:
        self._map.close()
