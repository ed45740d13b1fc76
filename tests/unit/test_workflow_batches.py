"""Group commit of the workflow processor: one call per event-loop pass, answers per item."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from eventfold.groupcommit import Batcher


class Store:
    """Records the calls; ``bad`` items fail a batch and fail alone."""

    def __init__(self, bad: frozenset[int] = frozenset()) -> None:
        self.bad = bad
        self.many_calls: list[list[int]] = []
        self.one_calls: list[int] = []
        self.finished = 0

    async def many(self, items: Sequence[int]) -> list[int | BaseException]:
        self.many_calls.append(list(items))
        await asyncio.sleep(0.01)
        self.finished += 1
        if self.bad & set(items):
            raise RuntimeError("batch refused")
        return [i * 10 for i in items]

    async def one(self, item: int) -> int:
        self.one_calls.append(item)
        if item in self.bad:
            raise ValueError(f"item {item} refused")
        return item * 10


async def test_one_pass_shares_one_call_and_each_gets_its_answer() -> None:
    store = Store()
    batcher: Batcher[int, int] = Batcher(store.many, store.one, key=lambda i: i)
    answers = await asyncio.gather(*(batcher.submit(i) for i in range(5)))
    assert answers == [0, 10, 20, 30, 40]
    assert store.many_calls == [[0, 1, 2, 3, 4]]
    assert store.one_calls == []


async def test_a_lone_item_goes_out_alone_at_once() -> None:
    store = Store()
    batcher: Batcher[int, int] = Batcher(store.many, store.one, key=lambda i: i)
    assert await batcher.submit(7) == 70
    assert store.many_calls == []
    assert store.one_calls == [7]


async def test_a_failed_batch_is_written_item_by_item() -> None:
    store = Store(bad=frozenset({2}))
    batcher: Batcher[int, int] = Batcher(store.many, store.one, key=lambda i: i)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)
    assert [results[0], results[1], results[3]] == [0, 10, 30]
    assert isinstance(results[2], ValueError)
    assert store.one_calls == [0, 1, 2, 3]


async def test_without_one_a_failed_batch_fails_every_item() -> None:
    store = Store(bad=frozenset({1}))
    batcher: Batcher[int, int] = Batcher(store.many, None)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert store.one_calls == []


async def test_an_answer_that_is_an_error_fails_only_its_item() -> None:
    async def many(items: Sequence[int]) -> list[int | BaseException]:
        return [LookupError(i) if i == 1 else i for i in items]

    async def one(item: int) -> int:
        raise AssertionError("not called")

    batcher: Batcher[int, int] = Batcher(many, one)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert [results[0], results[2]] == [0, 2]
    assert isinstance(results[1], LookupError)


async def test_one_key_twice_goes_in_two_batches() -> None:
    store = Store()
    batcher: Batcher[int, int] = Batcher(store.many, store.one, key=lambda i: i % 2)
    answers = await asyncio.gather(*(batcher.submit(i) for i in range(4)))
    assert answers == [0, 10, 20, 30]
    written = sorted(i for call in store.many_calls for i in call) + sorted(store.one_calls)
    assert sorted(written) == [0, 1, 2, 3]
    for call in store.many_calls:
        assert len({i % 2 for i in call}) == len(call)


async def test_items_queued_while_a_batch_is_under_way_go_in_the_next() -> None:
    store = Store()
    batcher: Batcher[int, int] = Batcher(store.many, store.one, key=lambda i: i, max_in_flight=1)
    first = asyncio.gather(*(batcher.submit(i) for i in range(2)))
    await asyncio.sleep(0.001)  # the first batch is under way
    second = asyncio.gather(*(batcher.submit(i) for i in range(2, 5)))
    assert await first == [0, 10]
    assert await second == [20, 30, 40]
    assert store.many_calls == [[0, 1], [2, 3, 4]]


async def test_close_waits_for_what_is_under_way() -> None:
    store = Store()
    batcher: Batcher[int, int] = Batcher(store.many, store.one)
    pending = asyncio.gather(*(batcher.submit(i) for i in range(3)))
    await asyncio.sleep(0)
    await batcher.close()
    assert store.finished == 1
    assert await pending == [0, 10, 20]


async def test_max_batch_splits_a_burst() -> None:
    size = 3
    store = Store()
    batcher: Batcher[int, int] = Batcher(store.many, store.one, max_batch=size)
    answers = await asyncio.gather(*(batcher.submit(i) for i in range(7)))
    assert answers == [i * 10 for i in range(7)]
    assert all(len(call) <= size for call in store.many_calls)
