"""The rebuild's read-ahead: order kept, errors passed on, the source always closed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import pytest

from consumers.rebuild.source import read_ahead


class Source:
    """An async generator of ``n`` items that records how far it got and whether it closed."""

    def __init__(self, n: int, fail_at: int | None = None) -> None:
        self.n = n
        self.fail_at = fail_at
        self.produced = 0
        self.closed = False
        self.advanced = asyncio.Event()

    async def items(self) -> AsyncGenerator[int, None]:
        try:
            for i in range(self.n):
                if i == self.fail_at:
                    raise ValueError(f"bad chunk {i}")
                self.produced += 1
                self.advanced.set()
                yield i
        finally:
            self.closed = True


async def test_every_item_in_order_then_closed() -> None:
    src = Source(5)
    assert [i async for i in read_ahead(src.items())] == [0, 1, 2, 3, 4]
    assert src.closed


async def test_the_next_item_is_read_while_the_caller_works() -> None:
    src = Source(5)
    reader = read_ahead(src.items())
    assert await anext(reader) == 0
    # The caller is busy with item 0; the source moves on meanwhile (one item queued,
    # one more produced and waiting for room).
    while src.produced < 2:
        src.advanced.clear()
        await src.advanced.wait()
    assert src.produced == 2
    await reader.aclose()
    assert src.closed


async def test_a_source_error_reaches_the_caller_after_the_good_items() -> None:
    src = Source(5, fail_at=2)
    got: list[int] = []

    async def drain() -> None:
        async for i in read_ahead(src.items()):
            got.append(i)

    with pytest.raises(ValueError, match="bad chunk 2"):
        await drain()
    assert got == [0, 1]
    assert src.closed


async def test_leaving_early_closes_the_source() -> None:
    src = Source(100)
    reader = read_ahead(src.items())
    async for i in reader:
        if i == 3:
            break
    await reader.aclose()
    assert src.closed
    assert src.produced < 10  # bounded read-ahead, not the whole source
