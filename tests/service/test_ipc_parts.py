"""The engine split's parts, without processes: the arena allocator and the wire format."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
import pytest

from service.engine import wire
from service.engine.arena import ALIGN, Arena, ArenaView
from service.errors import QueueFull


def test_arena_regions_never_overlap_and_all_come_back(tmp_path: Path) -> None:
    arena = Arena(tmp_path / "a.arena", 1 << 20)
    rng = random.Random(7)
    held: dict[int, int] = {}
    full = 0
    for _ in range(2000):
        if held and rng.random() < 0.5:
            off = rng.choice(list(held))
            arena.free(off, held.pop(off))
            continue
        size = rng.randint(1, 64 << 10)
        off = arena.alloc(size)
        if off is None:
            full += 1
            continue
        assert off % ALIGN == 0 and off + size <= arena.size
        for o, s in held.items():
            assert off + size <= o or o + s <= off, "two live regions overlap"
        held[off] = size
    assert full > 0  # the arena did fill up along the way
    for off, size in held.items():
        arena.free(off, size)
    assert arena.used == 0 and arena.alloc(1 << 20) == 0  # the whole arena is one free range again
    arena.close()
    assert not (tmp_path / "a.arena").exists()


def test_a_full_arena_says_so_instead_of_growing(tmp_path: Path) -> None:
    arena = Arena(tmp_path / "a.arena", 4096)
    assert arena.put(b"x" * 4096) == 0
    assert arena.put(b"y") is None
    arena.close()


def test_pixels_and_bytes_read_back_in_the_engine(tmp_path: Path) -> None:
    arena = Arena(tmp_path / "a.arena", 1 << 20)
    view = ArenaView(str(arena.path), arena.size)
    x = np.random.default_rng(0).standard_normal((3, 8, 8)).astype(np.float32)
    ox, ob = arena.put(x), arena.put(b"\xff\xd8jpeg")
    assert ox is not None and ob is not None
    assert np.array_equal(view.array(ox, x.shape), x)
    assert view.bytes(ob, 6) == b"\xff\xd8jpeg"
    view.close()
    arena.close()


def test_messages_round_trip_and_errors_keep_their_status() -> None:
    async def roundtrip(msg: wire.Message) -> wire.Message:
        reader = asyncio.StreamReader()
        reader.feed_data(wire.encode(msg))
        reader.feed_eof()
        return await wire.read(reader)

    msg = wire.Run(3, "m", None, 12.5, [wire.Blob(64, 10), wire.Blob(0, 3, b"abc", (1, 3))], admitted=True)
    assert asyncio.run(roundtrip(msg)) == msg
    rows = wire.Reply(3, ok=wire.Rows(b"\0" * 8, 2, 0.1, 0.2, 0.0), image_errors=[None])
    assert asyncio.run(roundtrip(rows)) == rows  # a typed answer comes back typed
    err = wire.failure(QueueFull("queue is full", retry_after_s=3))
    back = asyncio.run(roundtrip(wire.Reply(1, error=err)))
    assert isinstance(back, wire.Reply) and back.error is not None
    raised = wire.raised(back.error)
    assert (raised.status, raised.code, raised.headers) == (503, "queue_full", {"Retry-After": "3"})


def test_a_truncated_frame_is_the_peer_going_away() -> None:
    async def read_truncated() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(wire.encode(wire.Call(1, "status"))[:-1])
        reader.feed_eof()
        await wire.read(reader)

    with pytest.raises(asyncio.IncompleteReadError):
        asyncio.run(read_truncated())


def test_the_generation_cell_shows_the_engines_changes_to_a_front_end(tmp_path: Path) -> None:
    from service.engine.generation import GenerationCell

    engine, front = GenerationCell(tmp_path), GenerationCell(tmp_path)  # one file, two mappings
    engine.write(0)
    seen = front.read()
    engine.write(1)
    assert front.read() != seen, "a change is visible at once, without a message"
    restarted = GenerationCell(tmp_path)  # a new engine process on the same cell
    restarted.write(1)
    assert restarted.base != engine.base and front.read() != engine.base + 1, \
        "a restarted engine's count does not repeat the old one's"
    for cell in (engine, front, restarted):
        cell.close()
