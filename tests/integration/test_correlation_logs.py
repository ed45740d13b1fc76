"""The X-Request-ID of a write reaches the projector's JSON log lines about its event."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from prometheus_client import generate_latest

from eventfold.appkeys import METRICS, POOL
from tests.integration.conftest import JsonLines, TenantApi
from tests.integration.test_dead_letters import install_bug

R = "/collections/orders/records"


async def test_dead_letter_log_line_carries_the_request_id(tenant: TenantApi) -> None:
    app = tenant.api.client.server.app
    await install_bug(app[POOL], tenant.id)
    handler = JsonLines()
    logger = logging.getLogger("eventfold.projector")
    logger.addHandler(handler)
    try:
        written = await tenant.write(
            "PUT",
            f"{R}/o1",
            json={"poison": True},
            headers={"X-Request-ID": f"req-{tenant.id}"},
        )

        async def parked_line() -> dict[str, Any]:
            while True:
                for line in handler.lines:
                    if line.get("event_id") == written["event_id"]:
                        return line
                handler.changed.clear()
                await handler.changed.wait()

        line = await asyncio.wait_for(parked_line(), 30)
    finally:
        logger.removeHandler(handler)
    assert line["msg"] == "event dead-lettered"
    assert line["correlation_id"] == f"req-{tenant.id}"
    assert line["tenant"] == tenant.id
    metrics = generate_latest(app[METRICS].registry).decode()
    assert 'eventfold_dlq_size{processor="projector"}' in metrics
