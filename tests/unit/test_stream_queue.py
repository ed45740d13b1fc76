"""A stream's queue: bounded by frames and by bytes; the frame that ends a stream."""

from __future__ import annotations

import orjson

from api.stream import end_frame
from api.stream_hub import Frame, Subscriber


def frame(seq: int, size: int) -> Frame:
    return Frame(seq, "record.upserted", b"x" * size)


async def test_the_byte_bound_flags_a_slow_client_before_the_frame_bound() -> None:
    sub = Subscriber(max_frames=1000, max_bytes=250)
    for seq in range(2):
        sub.offer(frame(seq, 100))
    assert not sub.slow.is_set()
    sub.offer(frame(2, 100))  # 300 bytes would be queued
    assert sub.slow.is_set()
    assert sub.queue.qsize() == 2
    sub.offer(frame(3, 1))  # nothing more once slow
    assert sub.queue.qsize() == 2


async def test_taking_frames_frees_their_bytes() -> None:
    sub = Subscriber(max_frames=1000, max_bytes=250)
    sub.offer(frame(0, 200))
    assert (await sub.take()).seq == 0
    assert sub.queued_bytes == 0
    sub.offer(frame(1, 200))
    assert not sub.slow.is_set()


async def test_one_frame_larger_than_the_bound_still_reaches_a_client_that_keeps_up() -> None:
    sub = Subscriber(max_frames=1000, max_bytes=100)
    sub.offer(frame(0, 5000))
    assert not sub.slow.is_set()
    assert (await sub.take()).seq == 0


async def test_the_frame_bound_still_holds() -> None:
    sub = Subscriber(max_frames=2, max_bytes=10**9)
    for seq in range(3):
        sub.offer(frame(seq, 1))
    assert sub.slow.is_set()
    assert sub.queue.qsize() == 2


def test_the_end_frame_has_no_id_and_says_why() -> None:
    raw = end_frame("credentials_ended", 'the "key" was revoked')
    assert raw.endswith(b"\n\n")
    lines = raw.decode().strip().split("\n")
    assert lines[0] == "event: end"
    assert lines[1].startswith("data: ")
    assert orjson.loads(lines[1][6:]) == {
        "reason": "credentials_ended",
        "detail": 'the "key" was revoked',
    }
    assert not any(line.startswith("id:") for line in lines)
