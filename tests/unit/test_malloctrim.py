"""Trimming the C heap: free pages inside it go back to the system; the loop keeps trimming."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap

import pytest

from eventfold import malloctrim

glibc_only = pytest.mark.skipif(
    not (sys.platform == "linux" and malloctrim.available()), reason="glibc only"
)

#: In a fresh interpreter: the heap shape socket reads leave behind (256 KiB blocks
#: from the main heap, small survivors between them), then RSS before and after a trim.
_FRAGMENT = textwrap.dedent(
    """
    import sys
    from eventfold import malloctrim

    def rss_kib():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4

    big = bytes(1 << 20)
    del big  # a freed mmapped block raises glibc's mmap threshold
    blocks, survivors = [], []
    for i in range(64):
        blocks.append(b"x" * (256 * 1024))  # touched: resident
        survivors.append(b"s" * 600 + bytes([i % 256]))  # above it, outlives it
    del blocks
    before = rss_kib()
    released = malloctrim.trim()
    print(before - rss_kib(), released)
    """
)


@glibc_only
def test_trim_gives_free_heap_pages_back() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FRAGMENT], capture_output=True, text=True, check=True
    ).stdout.split()
    dropped_kib, released = int(out[0]), out[1]
    # 64 freed blocks of 256 KiB sit between live ones: glibc keeps them resident
    # by itself; the trim returns them (16 MiB; some may have been reused meanwhile).
    assert released == "True"
    assert dropped_kib > 8 * 1024


async def test_trim_forever_trims_until_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(malloctrim, "_MALLOC_TRIM", lambda pad: calls.append(pad) or 1)
    task = asyncio.create_task(malloctrim.trim_forever(0.01))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(calls) >= 3
    assert set(calls) == {0}


async def test_trim_forever_returns_without_malloc_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(malloctrim, "_MALLOC_TRIM", None)
    assert malloctrim.trim() is False
    await asyncio.wait_for(malloctrim.trim_forever(0.01), 1)


async def test_trimming_trims_inside_its_block_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    trimmed = asyncio.Event()

    def fake(pad: int) -> int:
        calls.append(pad)
        if len(calls) >= 2:
            trimmed.set()
        return 1

    monkeypatch.setattr(malloctrim, "_MALLOC_TRIM", fake)
    async with malloctrim.trimming(0.01):
        await asyncio.wait_for(trimmed.wait(), 5)
    after = len(calls)
    await asyncio.sleep(0.05)  # five intervals: a task left running would trim again
    assert len(calls) == after
