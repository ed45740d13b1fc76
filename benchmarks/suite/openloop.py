"""A lean HTTP/1.1 load generator: open loop at a constant rate (wrk2-style), or closed loop.

Open loop: request ``i`` is *scheduled* at ``t0 + i / rate`` whatever happened
to the requests before it, and its latency is measured from that scheduled
time, so a server falling behind shows up as latency (no coordinated
omission, unlike wrk's ``delay()``, which makes each connection wait for its
answer before pacing the next request). Requests go out on keep-alive
connections; when every open connection is busy, a new one is opened (up to
``max_connections``), and past that the request waits for one, its wait
counted in its latency.

Every request ends as exactly one of: answered 2xx (its latency recorded), or
a failure with its reason counted: the HTTP status, a timeout (no answer
``answer_within`` seconds after its scheduled start, sent or not), or a lost
connection. Failures are never left out silently: the result says how many
there were and why.

The generator itself may lag on a loaded machine: ``dispatch_lag_ms`` (when
the generator got to a request, minus its scheduled time) says by how much, so a
reader can tell the server's latency from the generator's. A request waiting
for a connection (all of them busy with earlier requests) is the server's
delay, not the generator's.

Written on asyncio protocols (no HTTP client library) so one Python process
can offer several thousand requests per second on a core it shares; the
answers are parsed only as far as status and length.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.suite.histogram import Histogram

#: Builds the bytes of request ``i`` (a complete HTTP/1.1 request, keep-alive).
RequestFor = Callable[[int], bytes]


def get_request(host: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    """The bytes of ``GET path`` with ``headers``, keep-alive."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _Answer:
    """Incremental parse of one HTTP/1.1 response: status, then a body by length or chunks."""

    __slots__ = ("_buf", "_chunked", "_need", "close", "status")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.status = 0
        self.close = False
        self._need: int | None = None  # body bytes still to come (length framing)
        self._chunked = False

    def feed(self, data: bytes) -> bytes | None:
        """Add bytes; once the response is complete return what follows it, else None."""
        self._buf += data
        if not self.status:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return None
            head = bytes(self._buf[:end]).lower()
            self.status = int(head[9:12])
            del self._buf[: end + 4]
            self.close = b"\r\nconnection: close" in head
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                self._need = int(head[at + 17 : stop if stop >= 0 else None])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self._chunked = True
            else:
                self._need = 0  # no body framing: HEAD-like answers (204, 304)
        if self._need is not None:
            if len(self._buf) < self._need:
                return None
            return bytes(self._buf[self._need :])
        return self._chunks()

    def _chunks(self) -> bytes | None:
        """The chunked body complete? (Trailers are not expected: none of ours sends them.)"""
        pos = 0
        while True:
            eol = self._buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(self._buf[pos:eol]).split(b";")[0], 16)
            end = eol + 2 + size + 2  # the chunk, then its CRLF (the last: the empty trailer)
            if len(self._buf) < end:
                return None
            if size == 0:
                return bytes(self._buf[end:])
            pos = end


@dataclass(slots=True)
class _InFlight:
    index: int
    scheduled: float
    sent: float
    answer: _Answer = field(default_factory=_Answer)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.current: _InFlight | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, index: int, scheduled: float) -> None:
        assert self.transport is not None
        self.current = _InFlight(index, scheduled, time.perf_counter())
        self.transport.write(self.gen.request_for(index))

    def data_received(self, data: bytes) -> None:
        current = self.current
        if current is None:
            return  # bytes after a timed-out request: the connection is being closed
        rest = current.answer.feed(data)
        if rest is None:
            return
        self.current = None
        self.gen.answered(self, current)
        if current.answer.close or rest:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        current, self.current = self.current, None
        if current is not None:
            self.gen.failed(current.index, "connection lost" if exc is None else repr(exc))
        self.gen.lost(self)

    def abort(self) -> None:
        """Close now (a timed-out request, or an answer that ends the connection)."""
        if self.transport is not None and not self.closed:
            self.transport.abort()


class _Generator:
    """The state of one run (see :func:`open_loop` and :func:`closed_loop`)."""

    def __init__(
        self, host: str, port: int, request_for: RequestFor, timeout: float, max_connections: int
    ) -> None:
        self.host, self.port = host, port
        self.max_connections = max_connections
        self.request_for = request_for
        self.timeout = timeout
        self.hist = Histogram()
        self.lag = Histogram()
        self.failures: Counter[str] = Counter()
        self.idle: deque[_Connection] = deque()
        self.busy: set[_Connection] = set()
        self.waiting: deque[tuple[int, float]] = deque()
        self.connecting = 0
        self.opened = 0
        self.outstanding = 0
        self.done = asyncio.Event()
        self.on_answer: Callable[[_Connection], None] | None = None

    # -- outcomes -------------------------------------------------------------------
    def answered(self, conn: _Connection, req: _InFlight) -> None:
        status = req.answer.status
        if 200 <= status < 300:
            self.hist.record(time.perf_counter() - req.scheduled)
        else:
            self.failures[f"HTTP {status}"] += 1
        self._finish()
        self.busy.discard(conn)
        if self.on_answer is not None:
            self.on_answer(conn)
        else:
            self._next_for(conn)

    def failed(self, index: int, reason: str) -> None:
        self.failures[reason[:120]] += 1
        self._finish()

    def begin(self) -> None:
        """One more request under way (:attr:`done` is set when none is)."""
        self.outstanding += 1
        self.done.clear()

    def _finish(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.done.set()

    def lost(self, conn: _Connection) -> None:
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if self.waiting:
            self._maybe_open()

    def _maybe_open(self) -> None:
        if len(self.busy) + self.connecting < self.max_connections:
            self.connecting += 1
            asyncio.get_running_loop().create_task(self._open())

    # -- dispatch ---------------------------------------------------------------------
    def _next_for(self, conn: _Connection) -> None:
        if conn.closed:
            return
        if self.waiting:
            index, scheduled = self.waiting.popleft()
            self.busy.add(conn)
            conn.send(index, scheduled)
        else:
            self.idle.append(conn)

    def submit(self, index: int, scheduled: float) -> None:
        """Send request ``index`` now on a free connection, or queue it (opening one if allowed).

        How late this call is against ``scheduled`` is the generator's own lag; the
        wait for a free connection after it is the server's (it holds them all).
        """
        self.lag.record(max(time.perf_counter() - scheduled, 0.0))
        self.begin()
        while self.idle:
            conn = self.idle.popleft()
            if not conn.closed:
                self.busy.add(conn)
                conn.send(index, scheduled)
                return
        self.waiting.append((index, scheduled))
        self._maybe_open()

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError as exc:
            self.connecting -= 1
            if self.waiting:
                index, _ = self.waiting.popleft()
                self.failed(index, f"connect: {type(exc).__name__}")
            return
        self.connecting -= 1
        self.opened += 1
        self._next_for(conn)

    def sweep(self) -> None:
        """Fail every request older than the timeout, sent (closing its connection) or not."""
        now = time.perf_counter()
        while self.waiting and now - self.waiting[0][1] > self.timeout:
            index, _ = self.waiting.popleft()
            self.failed(index, "timeout (not sent: no free connection)")
        for conn in list(self.busy):
            req = conn.current
            if req is not None and now - req.scheduled > self.timeout:
                conn.current = None
                self.busy.discard(conn)
                self.failed(req.index, "timeout")
                conn.abort()

    def close_all(self) -> None:
        for conn in [*self.idle, *self.busy]:
            conn.abort()

    def result(self, elapsed: float, requests: int) -> dict[str, Any]:
        return {
            "requests": requests,
            "ok": self.hist.total,
            "failures": self.failures.total(),
            "failure_reasons": dict(self.failures.most_common(5)),
            "seconds": round(elapsed, 2),
            "achieved_rps": round(self.hist.total / elapsed, 1) if elapsed else None,
            "latency_ms": self.hist.summary(),
            "dispatch_lag_ms": self.lag.summary(),
            "connections_opened": self.opened,
            "cdf": self.hist.cdf(),
        }


async def _sweeper(gen: _Generator, stop: asyncio.Event) -> None:
    while not stop.is_set():
        gen.sweep()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def open_loop(
    host: str,
    port: int,
    request_for: RequestFor,
    rate: float,
    seconds: float,
    *,
    max_connections: int = 256,
    answer_within: float = 5.0,
) -> dict[str, Any]:
    """Offer ``rate`` requests/s for ``seconds``; latency from each request's scheduled start.

    ``request_for(i)`` gives the bytes of request ``i``. The result counts every
    request: ``ok`` (latencies in ``latency_ms``) plus ``failures`` (by reason)
    equals ``requests``.
    """
    gen = _Generator(host, port, request_for, answer_within, max_connections)
    total = int(rate * seconds)
    stop = asyncio.Event()
    sweeper = asyncio.create_task(_sweeper(gen, stop))
    t0 = time.perf_counter() + 0.01
    try:
        i = 0
        while i < total:
            now = time.perf_counter()
            # Everything due by now goes out in this pass; then sleep to the next one.
            while i < total and t0 + i / rate <= now:
                gen.submit(i, t0 + i / rate)
                i += 1
            if i < total:
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        if gen.outstanding:
            await gen.done.wait()
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        await sweeper
        gen.close_all()
    return {"target_rps": rate, **gen.result(elapsed, total)}


async def closed_loop(
    host: str,
    port: int,
    request_for: RequestFor,
    connections: int,
    seconds: float,
    *,
    answer_within: float = 5.0,
) -> dict[str, Any]:
    """``connections`` connections each sending its next request when answered, for ``seconds``.

    The saturation measure: throughput, with latency from each request's send
    (it is scheduled when its connection is free). Failures counted as in
    :func:`open_loop`.
    """
    gen = _Generator(host, port, request_for, answer_within, connections)
    count = 0
    deadline = time.perf_counter() + seconds

    def again(conn: _Connection) -> None:
        nonlocal count
        if time.perf_counter() >= deadline or conn.closed:
            if not conn.closed:
                gen.idle.append(conn)
            return
        gen.begin()
        gen.busy.add(conn)
        conn.send(count, time.perf_counter())
        count += 1

    gen.on_answer = again
    stop = asyncio.Event()
    sweeper = asyncio.create_task(_sweeper(gen, stop))
    t0 = time.perf_counter()
    try:
        while time.perf_counter() < deadline:
            # (Re)fill to ``connections``: at the start, and after a connection was lost.
            missing = connections - len(gen.busy) - gen.connecting
            for _ in range(max(0, missing)):
                count += 1
                gen.submit(count - 1, time.perf_counter())
            await asyncio.sleep(0.05)
        if gen.outstanding:
            await asyncio.wait_for(gen.done.wait(), answer_within + 1)
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        await sweeper
        gen.close_all()
    return {"target_rps": None, "connections": connections, **gen.result(elapsed, count)}
