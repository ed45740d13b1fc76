"""What validating tenant event types costs the gateway, against the built-in types.

The gateway's work for a published batch (``producers.routes.publish_events``):
parse each envelope, validate its ``data``, stamp it. For a built-in type the
data check is its pydantic model (``eventfold.events.validate_data``); for a
tenant type it is the compiled JSON Schema of the version
(``eventfold.eventtypes.ingest.admit``, with the registry's cache warm: one
dict lookup per type and batch). Measured on batches of 1000 events with the
same invoice-like ``data``, CPU only (no I/O), the best and the median of the
repeats:

- ``builtin``: ``record.upserted`` events;
- ``custom``: an ``invoice.paid`` type (closed object, nested array, enum, bounds);
- ``custom_projected``: the same type with a projection (the record id and
  subject are worked out per event as well);
- ``custom_named_v1``: events naming version 1 while version 2 (a rename) is the
  latest: validated against v1, lifted to v2 for the projection.

The ratio asked by issue 24 is ``custom / builtin`` (≤ 2). For reference, the
pure-Python ``jsonschema`` validator on the same data (dev dependency).

    .venv/bin/python -m benchmarks.eventtypes [--batches 20] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from benchmarks.provenance import save, stamp
from eventfold.envelope import CloudEvent, parse_event
from eventfold.envelope import stamp as stamp_event
from eventfold.events import validate_data
from eventfold.eventtypes import ingest, names
from eventfold.eventtypes.definitions import TypeHistory

TENANT = "t_bench"
BATCH = 1000
SCHEMA_V1: dict[str, Any] = {
    "type": "object",
    "properties": {
        "invoice_id": {"type": "string", "maxLength": 64},
        "amount": {"type": "number", "minimum": 0},
        "currency": {"enum": ["EUR", "USD", "GBP"]},
        "customer": {"type": "string"},
        "lines": {
            "type": "array",
            "maxItems": 100,
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                "required": ["sku", "qty"],
            },
        },
    },
    "required": ["invoice_id", "amount", "currency"],
    "additionalProperties": False,
}
SCHEMA_V2: dict[str, Any] = {
    **SCHEMA_V1,
    "properties": {
        **{k: v for k, v in SCHEMA_V1["properties"].items() if k != "amount"},
        "total": {"type": "number", "minimum": 0},
    },
    "required": ["invoice_id", "total", "currency"],
}
PROJECTION = {"collection": "invoices", "id": "/invoice_id", "op": "patch",
              "fields": {"status": {"const": "paid"}, "total": "/total"}}  # fmt: skip


def _history(*, projected: bool, two: bool) -> TypeHistory:
    at = datetime.now(UTC)
    h = TypeHistory("invoice.paid")
    v1_projection = {**PROJECTION, "fields": {"status": {"const": "paid"}, "total": "/amount"}}
    h.extend({"type": "invoice.paid", "version": 1, "schema": SCHEMA_V1,
              "compatibility": "backward", "upcast": [], "created_at": at,
              "projection": None if two or not projected else v1_projection})  # fmt: skip
    if two:
        h.extend({"type": "invoice.paid", "version": 2, "schema": SCHEMA_V2,
                  "compatibility": "backward", "created_at": at,
                  "upcast": [{"op": "rename", "from": "/amount", "path": "/total"}],
                  "projection": PROJECTION if projected else None})  # fmt: skip
    return h


def _data(i: int) -> dict[str, Any]:
    return {
        "invoice_id": f"inv-{i}",
        "amount": 10.5 + i,
        "currency": "EUR",
        "customer": "c-42",
        "lines": [{"sku": "a-1", "qty": 1}, {"sku": "b-2", "qty": 3}],
    }


def _raw(type_: str, i: int, **extra: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "bench/gateway",
            "type": type_, "data": _data(i), **extra}  # fmt: skip


def builtin_batch(raws: list[dict[str, Any]]) -> list[CloudEvent]:
    """The gateway's loop for built-in types: parse, validate the data, stamp."""
    now = datetime.now(UTC)
    out = []
    for i, raw in enumerate(raws):
        event = parse_event(raw, path=f"/{i}")
        validate_data(event, path=f"/{i}")
        out.append(stamp_event(event, tenant=TENANT, now=now))
    return out


def custom_batch(raws: list[dict[str, Any]], histories: dict[str, TypeHistory]) -> list[CloudEvent]:
    """The same loop for tenant types (``producers.custom_events``): parse, then validate per
    version (warm cache) and stamp with the fold's attributes."""
    now = datetime.now(UTC)
    out = []
    pending = []
    for i, raw in enumerate(raws):
        event = parse_event(raw, path=f"/{i}")
        if names.is_custom(event.type):
            pending.append((len(out), f"/{i}"))
            out.append(event)
            continue
        out.append(stamp_event(event, tenant=TENANT, now=now))
    found = {t: histories[t] for t in {out[i].type for i, _ in pending}}  # the registry's lookup
    for i, path in pending:
        event = out[i]
        extra = ingest.admission(event, found[event.type], TENANT, path=path)
        out[i] = stamp_event(event, tenant=TENANT, now=now, extra=extra)
    return out


def _measure(fn: Callable[[], Any], batches: int, repeats: int) -> dict[str, float]:
    fn()  # warm: validators compiled, caches filled
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(batches):
            fn()
        runs.append((time.perf_counter() - started) / batches * 1000)
    return {"best_ms": round(min(runs), 3), "median_ms": round(statistics.median(runs), 3)}


def main(args: argparse.Namespace) -> None:
    prov = stamp()
    builtin = [_raw("record.upserted", i, subject=f"invoices/inv-{i}") for i in range(BATCH)]
    custom = [_raw("invoice.paid", i) for i in range(BATCH)]
    v1 = names.schema_uri(TENANT, "invoice.paid", 1)
    named = [_raw("invoice.paid", i, dataschema=v1) for i in range(BATCH)]
    plain = {"invoice.paid": _history(projected=False, two=False)}
    projected = {"invoice.paid": _history(projected=True, two=False)}
    evolved = {"invoice.paid": _history(projected=True, two=True)}
    b, r = args.batches, args.repeats
    results = {
        "builtin": _measure(lambda: builtin_batch(builtin), b, r),
        "custom": _measure(lambda: custom_batch(custom, plain), b, r),
        "custom_projected": _measure(lambda: custom_batch(custom, projected), b, r),
        "custom_named_v1": _measure(lambda: custom_batch(named, evolved), b, r),
    }
    base = results["builtin"]["median_ms"]
    ratios = {k: round(v["median_ms"] / base, 2) for k, v in results.items() if k != "builtin"}
    reference: dict[str, Any] = {}
    try:
        import jsonschema

        validator = jsonschema.Draft202012Validator(SCHEMA_V1)
        docs = [_data(i) for i in range(BATCH)]
        reference["python_jsonschema_data_only"] = _measure(
            lambda: [validator.is_valid(d) for d in docs], max(1, b // 4), r
        )
    except ImportError:
        pass
    doc = {
        "benchmark": "eventtypes",
        "what": "gateway CPU per batch of 1000 events: parse, validate data, stamp",
        "command": f"python -m benchmarks.eventtypes --batches {b} --repeats {r}",
        "batch": BATCH,
        "batches_per_repeat": b,
        "repeats": r,
        "results": results,
        "ratio_to_builtin_median": ratios,
        "reference": reference,
        "provenance": prov,
    }
    path = save(doc, "eventtypes")
    print(f"results in {path}")
    for name, res in results.items():
        print(f"{name:18} median {res['median_ms']:8.2f} ms/batch  best {res['best_ms']:8.2f}"
              f"  ratio {ratios.get(name, 1.0)}")  # fmt: skip
    for name, res in reference.items():
        print(f"{name:18} median {res['median_ms']:8.2f} ms/batch (data only)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    main(parser.parse_args())
