"""The live-stream payload spliced from the stored envelope equals the long way round."""

from __future__ import annotations

import orjson
import pytest

from eventfold.livefeed import MESSAGE_EVENTS, LiveEvent, live_message, message, payloads

ENVELOPE = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "test",
    "type": "record.upserted",
    "subject": "orders/o-1",
    "tenant": "acme",
    # A "status" inside the data is the record's business, not the envelope's.
    "data": {"status": "open", "items": [{"sku": "s", "qty": 2}], "note": "a } b"},
}


def _decoded(payload: bytes) -> tuple[int, str, dict[str, object]]:
    doc = orjson.loads(payload)
    return doc["seq"], doc["type"], orjson.loads(doc["data"])


@pytest.mark.parametrize(
    "text",
    [
        orjson.dumps(ENVELOPE).decode(),
        orjson.dumps(ENVELOPE, option=orjson.OPT_INDENT_2).decode() + "\n",
    ],
    ids=["compact", "indented"],
)
def test_spliced_payload_equals_the_envelope_plus_status(text: str) -> None:
    spliced = live_message(LiveEvent("acme", 7, "record.upserted", text))
    expected = message(7, {**ENVELOPE, "status": "applied"})
    assert _decoded(spliced) == _decoded(expected)
    assert _decoded(spliced)[2]["data"] == ENVELOPE["data"]


def test_a_status_extension_is_overridden_not_duplicated() -> None:
    envelope = {**ENVELOPE, "status": "draft"}
    event = LiveEvent("acme", 3, "record.upserted", orjson.dumps(envelope).decode(), True)
    data = orjson.loads(orjson.loads(live_message(event))["data"])
    assert data == {**envelope, "status": "applied"}
    # Once at the top level and once inside the data: no duplicate member.
    assert orjson.loads(live_message(event))["data"].count('"status"') == 2


def test_payloads_one_message_per_tenant_in_order_and_bounded() -> None:
    events = [
        LiveEvent(
            tenant, seq, "record.upserted", orjson.dumps({**ENVELOPE, "id": f"e{seq}"}).decode()
        )
        for seq in range(1, MESSAGE_EVENTS + 6)
        for tenant in ("acme", "globex")
    ]
    messages = payloads(events)
    assert [t for t, _ in messages] == ["acme", "acme", "globex", "globex"]
    for tenant in ("acme", "globex"):
        items = [i for t, m in messages if t == tenant for i in orjson.loads(m)]
        assert [i["seq"] for i in items] == list(range(1, MESSAGE_EVENTS + 6))
        assert all(orjson.loads(i["data"])["status"] == "applied" for i in items)
    assert max(len(orjson.loads(m)) for _, m in messages) == MESSAGE_EVENTS
