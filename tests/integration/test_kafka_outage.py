"""``eventfold run`` through a Kafka outage: a log an operator can read, and a clean stop.

Runs on a PRIVATE stack (its own Kafka, PostgreSQL and Redis) whose only Kafka node is
SIGKILLed under a running ``eventfold run``; the shared stack is never touched.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import aiohttp
import orjson
import pytest

from devstack import ensure_topics
from devstack.kafka import Kafka
from eventfold.clients import open_pool
from eventfold.sealing import new_key_spec
from tests.conftest import free_port, output, process, until_logged, wait_until_ready
from tests.integration.private_stack import halt, private_env, private_stack, start

pytestmark = [pytest.mark.integration, pytest.mark.recovery]

#: Seconds the process may take to stop after SIGTERM before the test calls it hung.
STOP_BOUND = 30.0


def kafka_client_lines(text: str) -> list[dict[str, object]]:
    """The JSON log lines of the Kafka client library (``aiokafka``) in ``text``."""
    lines = []
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        doc = orjson.loads(line)
        if str(doc.get("logger", "")).startswith("aiokafka"):
            lines.append(doc)
    return lines


@pytest.mark.parametrize("kafka_at_sigterm", ["down", "back"])
async def test_a_kafka_outage_is_logged_in_a_few_lines_and_sigterm_stops_cleanly(
    tmp_path: Path, kafka_at_sigterm: str
) -> None:
    async with private_stack(secret_keys=new_key_spec()) as settings:
        await ensure_topics(settings)
        await (await open_pool(settings)).close()
        port = free_port()
        env = private_env(settings, port, tmp_path / "home")
        with process("run", "--no-token", env=env) as proc:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                await wait_until_ready(http, f"http://127.0.0.1:{port}", proc)
            await halt(Kafka(settings), kill=True)
            # The group coordinator gives the session up after its timeout: by then every
            # client of the process has been retrying for seconds, hundreds of times.
            await until_logged(proc, "Heartbeat session expired")
            await asyncio.sleep(2)  # the outage goes on: retries keep failing meanwhile
            if kafka_at_sigterm == "back":
                # Clients still waiting on metadata from the outage (a processor's
                # commit) must not hold the stop up past its bound, nor fail it.
                await start(Kafka(settings))
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, STOP_BOUND)
            text = output(proc)
    assert code == 0, text[-3000:]
    # A thread that crashed on its way out prints a traceback outside the JSON log.
    assert "Traceback" not in text, text[-3000:]
    client = kafka_client_lines(text)
    # Unfiltered, the retries wrote about a hundred lines a second (1,400 by the session's
    # expiry); each message now once per window (eventfold.logs.RepeatFilter).
    assert 0 < len(client) <= 60, [d["msg"] for d in client][:80]
