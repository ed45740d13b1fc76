"""The fault-injecting proxy itself, against a local echo server."""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.faultproxy import FaultProxy, _KafkaRewriter


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest_asyncio.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fp = await FaultProxy("127.0.0.1", port).start()
    try:
        yield fp
    finally:
        await fp.stop()
        server.close()
        await server.wait_closed()


async def _roundtrip(fp: FaultProxy, payload: bytes = b"ping") -> bytes:
    reader, writer = await asyncio.open_connection(fp.host, fp.port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 2)
    finally:
        writer.close()


async def test_forwards_both_ways(proxy: FaultProxy) -> None:
    assert await _roundtrip(proxy, b"hello") == b"hello"
    assert proxy.accepted == 1


async def test_latency_delays_each_chunk(proxy: FaultProxy) -> None:
    proxy.latency(0.2)
    started = time.monotonic()
    assert await _roundtrip(proxy) == b"ping"
    assert time.monotonic() - started >= 0.4  # there and back
    await proxy.heal()
    started = time.monotonic()
    await _roundtrip(proxy)
    assert time.monotonic() - started < 0.4


async def test_stall_holds_data_until_heal(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    proxy.stall()
    writer.write(b"held")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(4), 0.3)
    # A new connection is accepted but silent as well.
    with pytest.raises(TimeoutError):
        await _roundtrip(proxy)
    await proxy.heal()
    assert await asyncio.wait_for(reader.readexactly(4), 2) == b"held"
    writer.close()


async def test_reset_sends_rst_to_open_connections(proxy: FaultProxy) -> None:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(b"x")
    await writer.drain()
    assert await reader.readexactly(1) == b"x"
    proxy.reset()
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await asyncio.wait_for(reader.readexactly(1), 2)
    assert await _roundtrip(proxy) == b"ping"  # new connections still work


async def test_close_refuses_new_connections_until_heal(proxy: FaultProxy) -> None:
    reader, _writer = await asyncio.open_connection(proxy.host, proxy.port)
    await proxy.close()
    assert await asyncio.wait_for(reader.read(1), 2) == b""  # closed under the client
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, proxy.port)
    await proxy.heal()
    assert await _roundtrip(proxy) == b"ping"


def test_kafka_rewriter_points_metadata_at_the_proxy() -> None:
    from aiokafka.protocol.coordination import FindCoordinatorResponse_v1
    from aiokafka.protocol.metadata import MetadataResponse_v1

    rw = _KafkaRewriter("127.0.0.1", 4242)
    request = b"\x00\x03\x00\x01" + struct.pack(">i", 7) + b"rest"
    rw.request(struct.pack(">i", len(request)) + request)
    meta = MetadataResponse_v1([(1, "broker", 9092, None)], 1, [])
    body = struct.pack(">i", 7) + meta.encode()
    out = rw.response(struct.pack(">i", len(body)) + body)
    decoded = MetadataResponse_v1.decode(out[8:])
    assert decoded.brokers == [(1, "127.0.0.1", 4242, None)]
    assert struct.unpack(">i", out[:4])[0] == len(out) - 4

    request = b"\x00\x0a\x00\x01" + struct.pack(">i", 8)
    rw.request(struct.pack(">i", len(request)) + request)
    coord = FindCoordinatorResponse_v1(0, 0, None, 1, "broker", 9092)
    body = struct.pack(">i", 8) + coord.encode()
    decoded_coord = FindCoordinatorResponse_v1.decode(
        rw.response(struct.pack(">i", len(body)) + body)[8:]
    )
    assert (decoded_coord.host, decoded_coord.port) == ("127.0.0.1", 4242)
    # Anything else passes through untouched.
    other = struct.pack(">i", 4) + struct.pack(">i", 99)
    assert rw.response(other) == other
