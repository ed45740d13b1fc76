"""A small fault-injecting TCP proxy for tests (toxiproxy's idea in a few lines of asyncio).

``FaultProxy(target_host, target_port)`` listens on 127.0.0.1:<free port> and
forwards every connection to the target. Faults, switched at any time:

- :meth:`latency` adds a delay to every chunk forwarded, both ways;
- :meth:`stall` keeps (and accepts) connections but forwards nothing, like a
  network partition: the peers see no error, only silence;
- :meth:`reset` aborts every open connection with a TCP RST (``SO_LINGER`` 0);
- :meth:`close` closes every open connection and refuses new ones;
- :meth:`heal` goes back to plain forwarding (held data then flows).

``kafka=True`` also rewrites the broker addresses in Kafka's Metadata and
FindCoordinator answers to the proxy's own, so a client keeps talking through
the proxy after bootstrapping (as a broker's ``advertised.listeners`` would).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

_CHUNK = 64 * 1024


class FaultProxy:
    """Forwards TCP connections to ``target``, with faults switched on demand."""

    def __init__(
        self, target_host: str, target_port: int, *, host: str = "127.0.0.1", kafka: bool = False
    ) -> None:
        self.target = (target_host, target_port)
        self.host = host
        self.port = 0
        self.kafka = kafka
        self._delay = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        #: Connections accepted so far (tests check that clients reconnected).
        self.accepted = 0

    @property
    def address(self) -> str:
        """``host:port`` to point a client at."""
        return f"{self.host}:{self.port}"

    async def start(self) -> FaultProxy:
        """Listen (on a free port the first time, the same port afterwards)."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Stop listening, drop every connection and wait for their handlers."""
        await self.close()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)

    def latency(self, seconds: float) -> None:
        """Delay every forwarded chunk by ``seconds`` (0 for none)."""
        self._delay = seconds

    def stall(self) -> None:
        """Forward nothing, on open and new connections, until :meth:`heal`."""
        self._flowing.clear()

    def reset(self) -> None:
        """Abort every open connection with an RST; new connections are accepted."""
        for link in list(self._links):
            link.abort(rst=True)

    async def close(self) -> None:
        """Close every open connection and refuse new ones until :meth:`heal`."""
        await self._stop_listening()
        for link in list(self._links):
            link.abort(rst=False)

    async def heal(self) -> None:
        """Plain forwarding again: no delay, held data flows, new connections accepted."""
        self._delay = 0.0
        self._flowing.set()
        if self._server is None:
            await self.start()

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._serve(link, reader, writer)
        finally:
            self._links.discard(link)
            link.abort(rst=False)
            if task is not None:
                self._handlers.discard(task)

    async def _serve(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, TimeoutError):
            _abort(writer, rst=True)
            return
        link.writers.append(up_writer)
        if link.aborted:  # closed or reset while connecting upstream
            return
        rewrite = _KafkaRewriter(self.host, self.port) if self.kafka else None
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, rewrite, upstream=True)),
            asyncio.create_task(self._pump(up_reader, writer, rewrite, upstream=False)),
        ]
        try:
            # Either side closing ends the connection (the protocols here never half-close).
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rewrite: _KafkaRewriter | None,
        *,
        upstream: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                if rewrite is None:
                    data = await reader.read(_CHUNK)
                else:  # whole Kafka frames: a size prefix, then the frame
                    size = await reader.readexactly(4)
                    data = size + await reader.readexactly(struct.unpack(">i", size)[0])
                if not data:
                    return
                await self._flowing.wait()
                if self._delay:
                    await asyncio.sleep(self._delay)
                if rewrite is not None:
                    data = rewrite.request(data) if upstream else rewrite.response(data)
                writer.write(data)
                await writer.drain()


class _Link:
    """Both sockets of one proxied connection."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.writers = [client]
        self.aborted = False

    def abort(self, *, rst: bool) -> None:
        self.aborted = True
        for writer in self.writers:
            _abort(writer, rst=rst)


def _abort(writer: asyncio.StreamWriter, *, rst: bool) -> None:
    sock = writer.get_extra_info("socket")
    if rst and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        if rst:
            writer.transport.abort()
        else:
            writer.close()


class _KafkaRewriter:
    """Points Metadata and FindCoordinator answers of one connection at the proxy."""

    def __init__(self, host: str, port: int) -> None:
        from aiokafka.protocol import coordination, metadata

        self.host, self.port = host, port
        self.types: dict[tuple[int, int], Any] = {
            (3, v): getattr(metadata, f"MetadataResponse_v{v}") for v in range(6)
        }
        self.types.update(
            {(10, v): getattr(coordination, f"FindCoordinatorResponse_v{v}") for v in (0, 1)}
        )
        self.pending: dict[int, Any] = {}

    def request(self, frame: bytes) -> bytes:
        api_key, version, correlation = struct.unpack(">hhi", frame[4:12])
        kind = self.types.get((api_key, version))
        if kind is not None:
            self.pending[correlation] = kind
        return frame

    def response(self, frame: bytes) -> bytes:
        (correlation,) = struct.unpack(">i", frame[4:8])
        kind = self.pending.pop(correlation, None)
        if kind is None:
            return frame
        answer = kind.decode(frame[8:])
        if kind.API_KEY == 3:
            answer.brokers = [(b[0], self.host, self.port, *b[3:]) for b in answer.brokers]
        else:
            answer.host, answer.port = self.host, self.port
        body = frame[4:8] + answer.encode()
        return struct.pack(">i", len(body)) + body
