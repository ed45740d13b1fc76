"""Pure parts of the benchmark suite: the histogram, the workload, the target verdicts."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from benchmarks.suite.histogram import Histogram
from benchmarks.suite.peers import fold_sequence
from benchmarks.suite.report import lookup, verdicts
from benchmarks.suite.workload import Workload

from consumers.projector.fold import Record, apply


def test_histogram_quantiles_are_within_one_percent() -> None:
    rng = random.Random(1)
    values = [rng.lognormvariate(-5, 1) for _ in range(20_000)]
    hist = Histogram()
    for v in values:
        hist.record(v)
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99, 0.999):
        exact = ordered[int(q * len(ordered)) - 1] * 1000
        assert hist.quantile_ms(q) == pytest.approx(exact, rel=0.02)
    assert hist.quantile_ms(1.0) == pytest.approx(max(values) * 1000)


def test_merged_histograms_count_both() -> None:
    a, b = Histogram(), Histogram()
    a.record(0.001)
    b.record(0.002)
    a.merge(b)
    assert a.total == 2
    assert a.summary()["max"] == pytest.approx(2.0)


def test_the_workload_is_reproducible_sized_and_skewed() -> None:
    tenants = [f"t{n}" for n in range(50)]
    first = list(Workload(tenants, seed=3).events(5000))
    assert first == list(Workload(tenants, seed=3).events(5000))
    sizes = [len(str(ev.get("data", ""))) for _, ev in first if ev["type"] == "record.upserted"]
    assert 500 < sum(sizes) / len(sizes) < 900
    kinds = {ev["type"] for _, ev in first}
    assert kinds == {"record.upserted", "record.patched", "record.deleted"}
    hot = sum(1 for _, ev in first if int(ev["subject"].split("/o")[1]) < 10)
    assert hot / len(first) > 0.15


def test_every_workload_event_applies_in_generation_order() -> None:
    epoch = datetime.fromtimestamp(0, UTC)
    records: dict[tuple[str, str], Record | None] = {}
    for tenant, ev in Workload(["a", "b"]).events(3000):
        key = (tenant, ev["subject"])
        records[key], outcome = apply(records.get(key), ev["type"], ev.get("data"), at=epoch)
        assert outcome.status == "applied", (ev, outcome)
    assert len(fold_sequence(Workload(["a", "b"]), 3000)) == sum(
        1 for r in records.values() if r is not None and r.live
    )


def test_target_verdicts_read_nested_results() -> None:
    doc = {
        "ingest": {"single_saturation": {"requests_per_second": 9000.0},
                   "single_fixed_rate": [{"target_rate": 5000, "latency_ms": {"p99": 30.0}}]},
        "memory": {"api": 60.0},
        "end_to_end": {"runs": [{"load_share": 0.25, "latency_ms": {"p50": 5.0}},
                                {"load_share": 0.5, "latency_ms": {"p50": 12.0, "p99": 40.0}}]},
    }  # fmt: skip
    assert lookup(doc, "ingest.single_fixed_rate[5000].latency_ms.p99") == 30.0
    assert lookup(doc, "end_to_end.runs[0.5].latency_ms.p50") == 12.0  # a dot inside brackets
    rows = {r["target"]: r["met"] for r in verdicts(doc)}
    assert rows["ingest single-event requests/s"] is True
    assert rows["ingest p99 at 5,000 req/s"] is False
    assert rows["API process peak memory"] is True
    assert rows["write-to-visible p50 at 50 %"] is False
    assert rows["write-to-visible p99 at 50 %"] is True
    assert rows["rebuild events/s (all tenants)"] is None  # not measured in this document


def test_soak_slope_is_flat_for_steady_memory_and_positive_for_a_leak() -> None:
    from benchmarks.suite.soak import WARMUP_S, slope_per_10_min, summarise

    steady = [(t, 80.0 + (0.5 if t % 20 else -0.5)) for t in range(0, 1800, 10)]
    assert abs(slope_per_10_min(steady)) < 0.1
    leak = [(float(t), 80.0 + t / 60) for t in range(0, 1800, 10)]  # 1 MiB a minute
    assert round(slope_per_10_min(leak), 6) == 10.0
    assert slope_per_10_min([(0.0, 1.0)]) == 0.0
    summary = summarise({"api": [(0.0, 50.0), (WARMUP_S, 70.0), (WARMUP_S + 600, 71.0)]})
    assert summary["api"] == {
        "rss_after_warmup_mb": 70.0,
        "rss_end_mb": 71.0,
        "rss_peak_mb": 71.0,
        "slope_mb_per_10_min": 1.0,
    }


def test_profile_folds_stacks_per_innermost_process() -> None:
    from benchmarks.profile import fold

    lines = [
        'process 1:"bench";main (eventfold/cli.py:9);decode_event (eventfold/envelope.py:3) 5',
        'process 1:"bench";process 2:"eventfold serve ingest";publish (producers/publisher.py:7);'
        "send (aiokafka/producer/producer.py:1) 3",
        'process 1:"bench";process 2:"eventfold serve ingest";publish (producers/publisher.py:7) 2',
        "garbage",
    ]
    profiles = fold(lines)
    assert set(profiles) == {"bench", "eventfold serve ingest"}
    gateway = profiles["eventfold serve ingest"]
    assert gateway.samples == 5
    assert gateway.self_time == {
        "send (aiokafka/producer/producer.py)": 3,
        "publish (producers/publisher.py)": 2,
    }
    assert gateway.ours == {"publish (producers/publisher.py)": 5}
    bench = profiles["bench"]
    assert bench.ours == {"main (eventfold/cli.py)": 5, "decode_event (eventfold/envelope.py)": 5}


def test_batch_bodies_send_each_event_once_in_batches_of_one_tenant() -> None:
    import itertools

    import orjson
    from benchmarks.suite.phases import batch_bodies

    tenants = [f"t{n}" for n in range(5)]
    owner = {ev["id"]: t for t, ev in Workload(tenants, seed=7).events(3_000)}
    bodies = batch_bodies(Workload(tenants, seed=7), 3_000, size=200)
    sent: list[str] = []
    for tenant, body in bodies:
        ids = [ev["id"] for ev in orjson.loads(body)]
        assert 0 < len(ids) <= 200
        assert {owner[i] for i in ids} == {tenant}
        sent += ids
    assert sorted(sent) == sorted(owner)  # every event once
    # Round-robin: a tenant's next batch is not the very next request.
    assert all(a[0] != b[0] for a, b in itertools.pairwise(bodies[:5]))
